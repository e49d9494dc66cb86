"""Spend counters: what each tenant, space, API key and model spent per UTC day, in micro-dollars and tokens.

One hash per (tenant, UTC day) and one per (tenant, space, UTC day). Each holds the totals (``cost``,
``input``, ``output``, ``requests``) and the same four counters per tenant model (``m:<model id>:<name>``),
per API key (``k:<key name>:<name>``) and per agent and agent version (``a:<agent key>:<name>``,
``av:<agent key>@<version>:<name>``). The tenant id is a hash tag (``{…}``), so a tenant's keys share a
Redis Cluster slot and one script may touch them all.

Written by the ``cost`` policy with one script (every increment and TTL, a step of the chain's round trip);
read by the native usage route in one round trip (one script, every day of the range).
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from gateway.store import Call, Script, Store

SPEND_TTL_SECONDS = 40 * 86400
MAX_RANGE_DAYS = 366
_NAMES = ("cost", "input", "output", "requests")

_INCR_LUA = """
local ttl = tonumber(ARGV[1])
local names = {'cost', 'input', 'output', 'requests'}
local values = {tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), 1}
for _, key in ipairs(KEYS) do
  for p = 5, #ARGV do
    for i = 1, 4 do
      if values[i] ~= 0 then redis.call('HINCRBY', key, ARGV[p] .. names[i], values[i]) end
    end
  end
  redis.call('EXPIRE', key, ttl)
end
return 1
"""

_READ_LUA = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HGETALL', key) end
return out
"""


def utc_today() -> date:
    return datetime.now(UTC).date()


def tenant_spend_key(tenant_id: str, day: date) -> str:
    return f"spend:{{{tenant_id}}}:{day:%Y%m%d}"


def space_spend_key(tenant_id: str, space_id: str, day: date) -> str:
    return f"spend:{{{tenant_id}}}:{space_id}:{day:%Y%m%d}"


def _incr_fallback(data: Any, keys: Sequence[str], args: Sequence[Any]) -> int:
    ttl = float(args[0])
    values = [
        (name, value)
        for name, value in zip(_NAMES, (int(args[1]), int(args[2]), int(args[3]), 1), strict=True)
        if value
    ]
    for key in keys:
        counters = data.get(key)
        if counters is None:
            counters = {}
            data.put(key, counters, ttl)
        else:
            data.expire(key, ttl)
        for prefix in args[4:]:
            for name, value in values:
                field = prefix + name
                counters[field] = counters.get(field, 0) + value
    return 1


def _read_fallback(data: Any, keys: Sequence[str], args: Sequence[Any]) -> list[list[Any]]:
    out: list[list[Any]] = []
    for key in keys:
        counters = data.get(key) or {}
        out.append([item for pair in counters.items() for item in pair])
    return out


@dataclass(slots=True)
class Totals:
    cost_micros: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    requests: int = 0

    def add(self, name: str, value: int) -> None:
        if name == "cost":
            self.cost_micros += value
        elif name == "input":
            self.input_tokens += value
        elif name == "output":
            self.output_tokens += value
        elif name == "requests":
            self.requests += value


@dataclass(slots=True)
class SpaceUsage:
    """A space's counters over a range of UTC days: totals, every day (zeros included), per model and key."""

    total: Totals = field(default_factory=Totals)
    by_day: list[tuple[date, Totals]] = field(default_factory=list)
    by_model: dict[str, Totals] = field(default_factory=dict)  # tenant model id -> totals
    by_key: dict[str, Totals] = field(default_factory=dict)  # API key name -> totals
    by_agent: dict[str, Totals] = field(default_factory=dict)  # agent key -> totals
    by_agent_version: dict[str, Totals] = field(default_factory=dict)  # "<agent key>@<version>" -> totals


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fold(usage: SpaceUsage, day: date, flat: Sequence[Any]) -> None:
    totals = Totals()
    for i in range(0, len(flat) - 1, 2):
        name, value = _text(flat[i]), int(flat[i + 1])
        kind, _, rest = name.partition(":")
        group = {"m": usage.by_model, "k": usage.by_key, "a": usage.by_agent, "av": usage.by_agent_version}.get(kind)
        if group is not None and rest:
            who, _, counter = rest.rpartition(":")
            group.setdefault(who, Totals()).add(counter, value)
        else:
            totals.add(name, value)
            usage.total.add(name, value)
    usage.by_day.append((day, totals))


class SpendCounters:
    """The increment script and the reader, registered on a store at first use (registration is local)."""

    def __init__(self, ttl_seconds: float = SPEND_TTL_SECONDS) -> None:
        self.ttl_seconds = ttl_seconds
        self._store: Store | None = None
        self._incr: Script | None = None
        self._read: Script | None = None
        self._keys: dict[tuple[str, str, int], list[str]] = {}

    def _scripts(self, store: Store) -> tuple[Script, Script]:
        if self._store is not store or self._incr is None or self._read is None:
            self._incr = store.script(_INCR_LUA, _incr_fallback)
            self._read = store.script(_READ_LUA, _read_fallback)
            self._store = store
        return self._incr, self._read

    def record_call(
        self,
        store: Store,
        *,
        tenant_id: str,
        space_id: str,
        model_id: str | None,
        key_name: str,
        cost_micros: int,
        input_tokens: int,
        output_tokens: int,
        agent: dict[str, Any] | None = None,
    ) -> Call:
        """The call that adds one request to the tenant's and the space's counters of the UTC day."""
        keys = self._day_keys(tenant_id, space_id, int(time.time() // 86400))
        prefixes = ["", f"k:{key_name}:"] + ([f"m:{model_id}:"] if model_id else [])
        if agent is not None:
            prefixes += [f"a:{agent['key']}:", f"av:{agent['key']}@{agent['version']}:"]
        args = [int(self.ttl_seconds), cost_micros, input_tokens, output_tokens, *prefixes]
        return self._scripts(store)[0], keys, args

    def _day_keys(self, tenant_id: str, space_id: str, day: int) -> list[str]:
        """The tenant's and the space's hashes of ``day`` (a day number since the epoch), cached."""
        keys = self._keys.get((tenant_id, space_id, day))
        if keys is None:
            if len(self._keys) >= 4096:
                self._keys.clear()
            when = date(1970, 1, 1) + timedelta(days=day)
            keys = [tenant_spend_key(tenant_id, when), space_spend_key(tenant_id, space_id, when)]
            self._keys[(tenant_id, space_id, day)] = keys
        return keys

    async def read_space(self, store: Store, tenant_id: str, space_id: str, first: date, last: date) -> SpaceUsage:
        """The space's counters from ``first`` to ``last`` inclusive (at most ``MAX_RANGE_DAYS``): one round trip."""
        days = [first + timedelta(days=i) for i in range((last - first).days + 1)][:MAX_RANGE_DAYS]
        raw = await self._scripts(store)[1]([space_spend_key(tenant_id, space_id, d) for d in days], [])
        usage = SpaceUsage()
        for day, flat in zip(days, raw, strict=True):
            _fold(usage, day, flat or [])
        return usage
