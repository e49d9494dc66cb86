"""budget: hard spending limits per tenant, space, API key or agent, per UTC day, UTC month or in total.

Scope ``agent`` is one budget per agent key (the requests that invoke no agent share one, under ``-``).

Per model call (a plain request makes one; the tool loop one per round): ``before_call`` reserves the call's
worst-case cost against every configured budget in one atomic script, a step of the chain's store round trip
before the upstream call: all reservations are taken or none is (then 429 ``insufficient_quota`` naming the
budget, ``x-should-retry: false``; between rounds, the loop ends the response ``incomplete``). A budget admits a
reservation only while ``settled + live reservations + this one <= limit``. ``after_call`` settles it on every
exit path, in one script (a step of the round trip after the call): the reservation is dropped and the call's
real cost (``call.cost_micros``; the partial usage's cost after an error or a disconnect, 0 when no usage is
known) is added to the settled spend.

Each reservation is a member of its budget's sorted set scored by its expiry; every script first drops the
expired ones, so a reservation whose process died (or whose settle could not reach the store) frees itself
after ``reservation_ttl_seconds``.
"""

import logging
import math
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

import orjson
from pydantic import Field, model_validator

from gateway import (
    BudgetExceeded,
    Halt,
    ModelCall,
    Policy,
    PolicyParams,
    RequestContext,
    Script,
    Store,
    StoreStep,
    StoreUnavailable,
    Usage,
)
from gateway import usd as format_usd

log = logging.getLogger("policies.budget")
_KEY_CACHE_SIZE = 4096  # (caller, day) entries before the cache starts over

_PURGE = """
local function purge(h, z, now)
  local gone = redis.call('ZRANGEBYSCORE', z, '-inf', now)
  for _, m in ipairs(gone) do
    local a = redis.call('HGET', h, 'r:' .. m)
    if a then
      if a ~= '0' then redis.call('HINCRBY', h, 'held', '-' .. a) end
      redis.call('HDEL', h, 'r:' .. m)
    end
  end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', z, '-inf', now) end
end
"""

# KEYS: per budget, its hash (spent, held, r:<id> = amount) then its sorted set (reservation id -> expiry ms).
# ARGV: now ms, expiry ms, reservation id, amount, then per budget: limit, key TTL seconds (0: none).
# Returns 0 when every reservation was taken, else the 1-based index of the first budget that refused.
RESERVE_LUA = (
    _PURGE
    + """
local now, rid, amount = ARGV[1], ARGV[3], ARGV[4]
local n = #KEYS / 2
for i = 1, n do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  purge(h, z, now)
  local spent = tonumber(redis.call('HGET', h, 'spent') or '0')
  local held = tonumber(redis.call('HGET', h, 'held') or '0')
  if spent + held + tonumber(amount) > tonumber(ARGV[3 + 2 * i]) then return i end
end
for i = 1, n do
  local h, z, ttl = KEYS[2 * i - 1], KEYS[2 * i], tonumber(ARGV[4 + 2 * i])
  redis.call('HINCRBY', h, 'held', amount)
  redis.call('HSET', h, 'r:' .. rid, amount)
  redis.call('ZADD', z, ARGV[2], rid)
  if ttl > 0 then
    redis.call('EXPIRE', h, ttl)
    redis.call('EXPIRE', z, ttl)
  end
end
return 0
"""
)

# KEYS: as for RESERVE_LUA. ARGV: now ms, reservation id, cost to settle, then per budget: key TTL seconds.
SETTLE_LUA = (
    _PURGE
    + """
local now, rid, cost = ARGV[1], ARGV[2], ARGV[3]
for i = 1, #KEYS / 2 do
  local h, z, ttl = KEYS[2 * i - 1], KEYS[2 * i], tonumber(ARGV[3 + i])
  purge(h, z, now)
  local a = redis.call('HGET', h, 'r:' .. rid)
  if a then
    if a ~= '0' then redis.call('HINCRBY', h, 'held', '-' .. a) end
    redis.call('HDEL', h, 'r:' .. rid)
  end
  redis.call('ZREM', z, rid)
  if cost ~= '0' then redis.call('HINCRBY', h, 'spent', cost) end
  if ttl > 0 then
    redis.call('EXPIRE', h, ttl)
    redis.call('EXPIRE', z, ttl)
  end
end
return 1
"""
)


def _purge(h: dict[str, int], z: dict[str, float], now: float) -> None:
    for rid in [r for r, expiry in z.items() if expiry <= now]:
        del z[rid]
        amount = h.pop("r:" + rid, None)
        if amount is not None:
            h["held"] = h.get("held", 0) - amount


def _tables(data: Any, keys: Any, i: int, ttl: int) -> tuple[dict[str, int], dict[str, float]]:
    out = []
    for key in (keys[2 * i], keys[2 * i + 1]):
        table = data.get(key)
        if table is None:
            table = {}
            data.put(key, table, ttl or None)
        out.append(table)
    return out[0], out[1]


def _expire(data: Any, keys: Any, i: int, ttl: int) -> None:
    if ttl > 0:
        data.expire(keys[2 * i], ttl)
        data.expire(keys[2 * i + 1], ttl)


def reserve_fallback(data: Any, keys: Any, args: Any) -> int:
    """RESERVE_LUA on the in-memory store."""
    now, expiry, rid, amount = float(args[0]), float(args[1]), str(args[2]), int(args[3])
    n = len(keys) // 2
    for i in range(n):
        h, z = _tables(data, keys, i, int(args[5 + 2 * i]))
        _purge(h, z, now)
        if h.get("spent", 0) + h.get("held", 0) + amount > int(args[4 + 2 * i]):
            return i + 1
    for i in range(n):
        h, z = _tables(data, keys, i, int(args[5 + 2 * i]))
        h["held"] = h.get("held", 0) + amount
        h["r:" + rid] = amount
        z[rid] = expiry
        _expire(data, keys, i, int(args[5 + 2 * i]))
    return 0


def settle_fallback(data: Any, keys: Any, args: Any) -> int:
    """SETTLE_LUA on the in-memory store."""
    now, rid, cost = float(args[0]), str(args[1]), int(args[2])
    for i in range(len(keys) // 2):
        h, z = _tables(data, keys, i, int(args[3 + i]))
        _purge(h, z, now)
        amount = h.pop("r:" + rid, None)
        if amount is not None:
            h["held"] = h.get("held", 0) - amount
        z.pop(rid, None)
        if cost:
            h["spent"] = h.get("spent", 0) + cost
        _expire(data, keys, i, int(args[3 + i]))
    return 1


class Limit(PolicyParams):
    scope: Literal["tenant", "space", "key", "agent"]
    period: Literal["day", "month", "total"]
    usd: Decimal = Field(ge=0, max_digits=18, decimal_places=6, description="A decimal string, e.g. '5.00'.")

    @property
    def micros(self) -> int:
        return int(self.usd * 1_000_000)


_PERIOD_WORD = {"day": "daily", "month": "monthly", "total": "total"}
_OUTPUT_FIELDS = ("max_output_tokens", "max_completion_tokens", "max_tokens")


@dataclass(slots=True)
class _Reservation:
    keys: list[str]
    rid: str
    amount: int
    taken: bool = False  # the reserve step ran and took it


def _not_checked(ctx: RequestContext, error: StoreUnavailable) -> None:
    log.warning("budget not checked for request %s: the store is unreachable", ctx.request_id)


def _not_settled(ctx: RequestContext, error: StoreUnavailable) -> None:
    log.warning("budget reservation of request %s not settled (store unreachable): it expires", ctx.request_id)


class Budget(Policy):
    name = "budget"

    class Params(PolicyParams):
        limits: list[Limit] = Field(min_length=1)
        on_store_error: Literal["closed", "open"] = "closed"
        reservation_ttl_seconds: float = Field(900.0, gt=0, description="A dead process's reservation lives this long.")
        bytes_per_token: float = Field(4.0, gt=0, description="Prompt estimate: request body bytes per token.")
        default_output_tokens: int = Field(4096, gt=0, description="Without a max-tokens field or context window.")

        @model_validator(mode="after")
        def _one_limit_per_budget(self) -> "Budget.Params":
            seen = [(limit.scope, limit.period) for limit in self.limits]
            if len(set(seen)) != len(seen):
                raise ValueError("two limits for the same scope and period")
            return self

    params: Params

    def __init__(self, params: PolicyParams) -> None:
        super().__init__(params)
        self._slot = f"budget.{id(self)}"
        self._store: Store | None = None
        self._scripts: tuple[Script, Script] | None = None
        ttl = self.params.reservation_ttl_seconds
        key_ttl = {"day": 2 * 86400 + math.ceil(ttl), "month": 33 * 86400 + math.ceil(ttl), "total": 0}
        self._ttls = [key_ttl[limit.period] for limit in self.params.limits]
        self._limit_args = [
            v for limit, t in zip(self.params.limits, self._ttls, strict=True) for v in (limit.micros, t)
        ]
        self._hold_ms = int(ttl * 1000)
        self._key_cache: dict[tuple[str, str, str, str, int], list[str]] = {}

    def scripts(self, store: Store) -> tuple[Script, Script]:
        """(reserve, settle) registered on this store (local work: Redis sees them at the first call)."""
        if self._scripts is None or self._store is not store:
            # a refusal (the 1-based index of the budget that refused) halts the chain's store round trip
            reserve = store.script(RESERVE_LUA, reserve_fallback, Halt("r ~= 0", lambda r: int(r) != 0))
            self._scripts = (reserve, store.script(SETTLE_LUA, settle_fallback))
            self._store = store
        return self._scripts

    async def before_call(self, ctx: RequestContext, call: ModelCall) -> StoreStep | None:
        amount = self.worst_case(ctx, call)
        now_ms = int(time.time() * 1000)
        keys = self._budget_keys(ctx, now_ms // 86_400_000)
        rid = os.urandom(8).hex()
        args: list[Any] = [now_ms, now_ms + self._hold_ms, rid, amount, *self._limit_args]
        ctx.extras[self._slot] = _Reservation(keys, rid, amount)
        skip = None if self.params.on_store_error == "closed" else _not_checked  # None: fail closed (503)
        return StoreStep(self.scripts(ctx.store)[0], keys, args, then=self.reserved, unavailable=skip)

    def _budget_keys(self, ctx: RequestContext, day: int) -> list[str]:
        """Every budget's two keys for this caller on this UTC day (cached: formatting dates is slow)."""
        who = (ctx.tenant_id, ctx.space_id, ctx.principal.key.name, _agent_key(ctx), day)
        keys = self._key_cache.get(who)
        if keys is None:
            if len(self._key_cache) >= _KEY_CACHE_SIZE:
                self._key_cache.clear()
            now = datetime.fromtimestamp(day * 86_400, UTC)
            keys = self._key_cache[who] = [k for limit in self.params.limits for k in _keys(limit, ctx, now)]
        return keys

    async def reserved(self, ctx: RequestContext, refused: Any) -> None:
        reservation: _Reservation = ctx.extras[self._slot]
        if int(refused):
            del ctx.extras[self._slot]
            raise BudgetExceeded(_message(self.params.limits[int(refused) - 1], ctx, reservation.amount))
        reservation.taken = True

    async def after_call(self, ctx: RequestContext, call: ModelCall) -> StoreStep | None:
        reservation = ctx.extras.pop(self._slot, None)
        if not isinstance(reservation, _Reservation) or not reservation.taken:
            return None
        args = [int(time.time() * 1000), reservation.rid, max(call.cost_micros, 0), *self._ttls]
        return StoreStep(self.scripts(ctx.store)[1], reservation.keys, args, unavailable=_not_settled)

    def worst_case(self, ctx: RequestContext, call: ModelCall) -> int:
        """The most this call can cost: a prompt estimate plus every output token it may produce."""
        model = ctx.model  # resolved before the chain (gateway.targets)
        if model is None or ctx.prices is None:
            return 0
        body = call.body
        output = next((v for f in _OUTPUT_FIELDS if _positive(v := body.get(f))), None)
        output = output or model.context_window or self.params.default_output_tokens
        if _positive(body.get("n")):
            output *= body["n"]
        length = ctx.headers.get(b"content-length") if call.round == 1 else None
        size = int(length) if length and length.isdigit() else len(orjson.dumps(body))
        prompt = math.ceil(size / self.params.bytes_per_token)
        if (call.continues or body.get("previous_response_id")) and model.context_window:
            prompt = max(prompt, model.context_window)  # the stored conversation is not in the body
        # every output token at the dearer of the output and reasoning prices
        pricing = ctx.prices.pricing(model)
        dearer = pricing is not None and (pricing.reasoning_per_mtok or 0) > pricing.output_per_mtok
        return ctx.prices.cost(model, Usage(prompt, output, reasoning_tokens=output if dearer else 0))


def _agent_key(ctx: RequestContext) -> str:
    return ctx.agent.key if ctx.agent is not None else "-"


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def budget_key(limit: Limit, ctx: RequestContext, now: datetime) -> str:
    """``budget:{tenant}:<scope>:<id>:<period>:<stamp>`` (the hash; ``…:held`` is its reservations' sorted set)."""
    who = {"tenant": ctx.tenant_id, "space": ctx.space_id, "key": ctx.principal.key.name, "agent": _agent_key(ctx)}[
        limit.scope
    ]
    stamp = {"day": f"{now:%Y%m%d}", "month": f"{now:%Y%m}", "total": "all"}[limit.period]
    return f"budget:{{{ctx.tenant_id}}}:{limit.scope}:{who}:{limit.period}:{stamp}"


def _keys(limit: Limit, ctx: RequestContext, now: datetime) -> tuple[str, str]:
    key = budget_key(limit, ctx, now)
    return key, key + ":held"


def _message(limit: Limit, ctx: RequestContext, amount: int) -> str:
    who = {
        "tenant": f"tenant '{ctx.principal.tenant.name}'",
        "space": f"space '{ctx.space.name or ctx.space_id}'",
        "key": f"API key '{ctx.principal.key.name}'",
        "agent": f"agent '{_agent_key(ctx)}'",
    }[limit.scope]
    return (
        f"Budget exceeded: the {_PERIOD_WORD[limit.period]} budget of {who} ({format_usd(limit.micros)} USD) "
        f"cannot cover this request (up to {format_usd(amount)} USD)."
    )
