"""rate_limit: requests and tokens per minute, per space and per API key, shared by every replica on the store.

Each limit is a GCRA cell (a "theoretical arrival time" in the store): a limit of N per minute lets N go at
once and then one every 60/N seconds. One Lua script decides a request atomically against every configured
limit (Lua on Redis, the same logic in Python on the in-memory store; a step of the chain's store round trip):
it takes one request from each request limit only when all limits allow it. Tokens are counted after the
fact, for every model call of the request (each round of the tool loop): ``after_call`` charges the call's
usage (input + output tokens) to the token limits, and a new request is refused while a token limit is used up.

Over a limit: 429 ``rate_limit_exceeded`` with ``Retry-After``; every answer carries OpenAI's
``x-ratelimit-*`` headers of the most constrained request and token limits.
"""

import logging
import math
import time
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

from gateway import (
    Halt,
    ModelCall,
    Policy,
    PolicyParams,
    RateLimited,
    RequestContext,
    StoreStep,
    StoreUnavailable,
)

log = logging.getLogger("gateway.policy.rate_limit")
WINDOW_MS = 60_000

# KEYS: the request limits' cells (ARGV[1] of them), then the token limits' cells.
# ARGV[2..]: each cell's emission interval in ms (60000 / limit). Both kinds need one unit free; only request
# cells are charged, and only when every cell allows. Returns {allowed, retry_ms, remaining_1, reset_ms_1, ...}.
CHECK_LUA = """
local t = redis.call('TIME')
local now = t[1] * 1000 + t[2] / 1000
local nreq = tonumber(ARGV[1])
local allowed, retry = 1, 0
local tats = {}
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  tats[i] = tat
  local over = tat + tonumber(ARGV[i + 1]) - now - 60000
  if over > 0 then
    allowed = 0
    if over > retry then retry = over end
  end
end
local out = {allowed, math.ceil(retry)}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[i + 1])
  local tat = tats[i]
  if allowed == 1 and i <= nreq then
    tat = tat + interval
    redis.call('SET', KEYS[i], string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1000)
  end
  local remaining = math.floor((60000 - (tat - now)) / interval)
  if remaining < 0 then remaining = 0 end
  out[#out + 1] = remaining
  out[#out + 1] = math.ceil(tat - now)
end
return out
"""

# KEYS: token cells; ARGV[1]: tokens used; ARGV[2..]: each cell's interval in ms per token.
CHARGE_LUA = """
local t = redis.call('TIME')
local now = t[1] * 1000 + t[2] / 1000
local amount = tonumber(ARGV[1])
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  tat = tat + amount * tonumber(ARGV[i + 1])
  redis.call('SET', KEYS[i], string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1000)
end
return 1
"""


def _now_ms() -> float:
    return time.time() * 1000


def _tat(data: Any, key: str, now: float) -> float:
    raw = data.get(key)
    return max(float(raw), now) if raw is not None else now


def check_fallback(data: Any, keys: Sequence[str], args: Sequence[Any]) -> list[int]:
    """CHECK_LUA for the in-memory store (``data`` is its MemoryData; this runs atomically)."""
    now, nreq = _now_ms(), int(args[0])
    tats = [_tat(data, key, now) for key in keys]
    overs = [tat + float(args[i + 1]) - now - WINDOW_MS for i, tat in enumerate(tats)]
    allowed = all(over <= 0 for over in overs)
    out = [int(allowed), math.ceil(max([0.0, *overs]))]
    for i, key in enumerate(keys):
        interval, tat = float(args[i + 1]), tats[i]
        if allowed and i < nreq:
            tat += interval
            data.put(key, tat, (tat - now) / 1000 + 1)
        out += [max(0, math.floor((WINDOW_MS - (tat - now)) / interval)), math.ceil(tat - now)]
    return out


def charge_fallback(data: Any, keys: Sequence[str], args: Sequence[Any]) -> int:
    now, amount = _now_ms(), int(args[0])
    for i, key in enumerate(keys):
        tat = _tat(data, key, now) + amount * float(args[i + 1])
        data.put(key, tat, (tat - now) / 1000 + 1)
    return 1


def duration(ms: int) -> str:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``6m0s``."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s"


class Limits(PolicyParams):
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)


class RateLimit(Policy):
    """Requests and tokens per minute for the space (all its callers together) and for each API key in it."""

    name = "rate_limit"

    class Params(PolicyParams):
        space: Limits = Field(default_factory=Limits)
        key: Limits = Field(default_factory=Limits)
        on_store_error: Literal["open", "closed"] = "open"

    def __init__(self, params: PolicyParams) -> None:
        super().__init__(params)
        assert isinstance(params, RateLimit.Params)
        self.fail_open = params.on_store_error == "open"
        # (scope, dimension, limit): request cells first, as the script expects
        cells = [
            (scope, dim, getattr(limits, f"{dim}_per_minute"))
            for dim in ("requests", "tokens")
            for scope, limits in (("space", params.space), ("key", params.key))
        ]
        self.cells = [(scope, dim, limit) for scope, dim, limit in cells if limit is not None]
        self.n_requests = sum(dim == "requests" for _, dim, _ in self.cells)
        self.intervals = [WINDOW_MS / limit for _, _, limit in self.cells]
        self.token_cells = [i for i, (_, dim, _) in enumerate(self.cells) if dim == "tokens"]
        self._scripts: dict[int, tuple[Any, Any]] = {}
        self._key_cache: dict[tuple[str, str, str], list[str]] = {}
        self._slot = f"rate_limit.{id(self)}"  # ctx.extras: this request was admitted

    def _keys(self, ctx: RequestContext) -> list[str]:
        """The cells' keys for this caller (cached: the same few strings for every request of a key)."""
        who = (ctx.tenant_id, ctx.space_id, ctx.principal.key.sha256)
        keys = self._key_cache.get(who)
        if keys is None:
            if len(self._key_cache) >= 4096:
                self._key_cache.clear()
            base = f"ratelimit:{{{ctx.tenant_id}:{ctx.space_id}}}:"
            key_id = ctx.principal.key.sha256[:16]
            keys = [base + (f"key:{key_id}:" if scope == "key" else "") + dim for scope, dim, _ in self.cells]
            self._key_cache[who] = keys
        return keys

    def _script(self, ctx: RequestContext) -> tuple[Any, Any]:
        """The two scripts, registered once per store (a policy instance serves one app, so one store)."""
        scripts = self._scripts.get(id(ctx.store))
        if scripts is None:
            # a refusal halts the chain's store round trip
            check = ctx.store.script(CHECK_LUA, check_fallback, Halt("r[1] == 0", lambda r: int(r[0]) == 0))
            scripts = (check, ctx.store.script(CHARGE_LUA, charge_fallback))
            self._scripts = {id(ctx.store): scripts}
        return scripts

    async def before(self, ctx: RequestContext) -> StoreStep | None:
        if not self.cells:
            return None
        keys = self._keys(ctx)
        step = StoreStep(self._script(ctx)[0], keys, [self.n_requests, *self.intervals], then=self.checked)
        if self.fail_open:
            step.unavailable = _skipped
        return step

    async def checked(self, ctx: RequestContext, result: Any) -> None:
        allowed, retry_ms, *cells = (int(v) for v in result)
        headers = self._headers(cells)
        if not allowed:
            retry = max(1, math.ceil(retry_ms / 1000))
            headers["retry-after"] = str(retry)
            raise RateLimited(self._message(cells, retry), code="rate_limit_exceeded", headers=headers)
        ctx.extras[self._slot] = True  # admitted: its tokens are charged in after
        ctx.response_headers.extend((k.encode(), v.encode()) for k, v in headers.items())

    def _headers(self, cells: list[int]) -> dict[str, str]:
        """Per dimension, the limit with the fewest units left: its limit, remaining and reset."""
        headers: dict[str, str] = {}
        for dim in ("requests", "tokens"):
            mine = [(cells[2 * i], cells[2 * i + 1], c[2]) for i, c in enumerate(self.cells) if c[1] == dim]
            if mine:
                remaining, reset_ms, limit = min(mine)
                headers[f"x-ratelimit-limit-{dim}"] = str(limit)
                headers[f"x-ratelimit-remaining-{dim}"] = str(remaining)
                headers[f"x-ratelimit-reset-{dim}"] = duration(reset_ms)
        return headers

    def _message(self, cells: list[int], retry: int) -> str:
        spent = [c for i, c in enumerate(self.cells) if cells[2 * i] == 0]
        what = ", ".join(f"{limit} {dim} per minute for this {scope}" for scope, dim, limit in spent) or "a limit"
        return f"Rate limit reached ({what}). Please retry after {retry} seconds."

    async def after_call(self, ctx: RequestContext, call: ModelCall) -> StoreStep | None:
        if not ctx.extras.get(self._slot) or not self.token_cells or call.usage is None:
            return None
        used = call.usage.input_tokens + call.usage.output_tokens
        if used <= 0:
            return None
        keys = self._keys(ctx)
        token_keys = [keys[i] for i in self.token_cells]
        intervals = [self.intervals[i] for i in self.token_cells]
        return StoreStep(self._script(ctx)[1], token_keys, [used, *intervals], unavailable=_not_charged)


def _skipped(ctx: RequestContext, error: StoreUnavailable) -> None:
    log.warning("rate limits skipped: the store is unreachable (on_store_error: open)")


def _not_charged(ctx: RequestContext, error: StoreUnavailable) -> None:
    log.warning("tokens of request %s not charged to the rate limits: the store is unreachable", ctx.request_id)
