"""The embedded store: dicts with lazy TTL expiry. One process only; every operation is atomic.

Given a byte limit and the key prefixes it may evict (``gateway/store/eviction.py``), it holds at most about
that much of them: past it, the oldest go first.
"""

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

from gateway.store.base import Call, Halt, Script, ScriptFallback
from gateway.store.eviction import EvictionLedger, log_growth, size_of
from gateway.store.streams import MemoryStream

_SWEEP_EVERY = 1024


class MemoryData:
    """Synchronous operations on the data; scripts' Python fallbacks receive this object."""

    def __init__(self, limit_bytes: int = 0, evictable: tuple[str, ...] = ()) -> None:
        self.values: dict[str, Any] = {}
        self.expiry: dict[str, float] = {}
        self._writes = 0
        self.ledger = EvictionLedger(limit_bytes, evictable, self._remove) if limit_bytes and evictable else None

    def alive(self, key: str) -> bool:
        deadline = self.expiry.get(key)
        if deadline is not None and deadline <= time.monotonic():
            self.delete(key)
        return key in self.values

    def get(self, key: str) -> Any:
        return self.values.get(key) if self.alive(key) else None

    def put(self, key: str, value: Any, ttl: float | None = None) -> None:
        if type(value) is bytes:
            # A copy of its exact size: orjson's output keeps its whole working buffer (16 KiB for a 1.5 KB
            # record), which a value kept for days would hold on to.
            value = bytes(memoryview(value))
        self.values[key] = value
        if ttl is None:
            self.expiry.pop(key, None)
        else:
            self.expiry[key] = time.monotonic() + ttl
        ledger = self.ledger
        if ledger is not None and key.startswith(ledger.prefixes):
            ledger.record(key, size_of(value))
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            self.sweep()

    def stream(self, key: str) -> MemoryStream:
        """The stream under ``key``, created if absent (scripts' fallbacks append to it too)."""
        stream = self.get(key)
        if not isinstance(stream, MemoryStream):
            stream = MemoryStream()
            self.put(key, stream)
        return stream

    def grew(self, key: str, entries: list[bytes]) -> None:
        """``entries`` were appended to the log under ``key`` in place."""
        ledger = self.ledger
        if ledger is not None and key.startswith(ledger.prefixes):
            ledger.grow(key, log_growth(entries))

    def expire(self, key: str, ttl: float | None) -> None:
        if ttl is not None and key in self.values:
            self.expiry[key] = time.monotonic() + ttl

    def delete(self, key: str) -> bool:
        if self.ledger is not None:
            self.ledger.forget(key)
        return self._remove(key)

    def _remove(self, key: str) -> bool:
        self.expiry.pop(key, None)
        return self.values.pop(key, None) is not None

    def sweep(self) -> None:
        now = time.monotonic()
        for key in [k for k, d in self.expiry.items() if d <= now]:
            self.delete(key)


class _MemoryScript:
    def __init__(self, data: MemoryData, fallback: ScriptFallback, halt: Halt | None) -> None:
        self._data = data
        self.fallback = fallback
        self.halt = halt

    async def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return self.fallback(self._data, keys, args)


class MemoryStore:
    """The ``Store`` for a single process: nothing to install, nothing survives a restart.

    With ``limit_bytes`` (0: none), the keys under the ``evictable`` prefixes are held to about that many bytes,
    the oldest written evicted first; keys under other prefixes are never evicted."""

    remote = False

    def __init__(self, limit_bytes: int = 0, evictable: tuple[str, ...] = ()) -> None:
        self.data = MemoryData(limit_bytes, evictable)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def get(self, key: str) -> bytes | None:
        value = self.data.get(key)
        return value if isinstance(value, bytes) else None

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        return [await self.get(k) for k in keys]

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self.data.put(key, value, ttl)

    async def set_nx(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        if self.data.alive(key):
            return False
        self.data.put(key, value, ttl)
        return True

    async def delete(self, *keys: str) -> int:
        return sum(self.data.delete(k) for k in keys if self.data.alive(k))

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        current = self.data.get(key)
        if current is None:
            self.data.put(key, amount, ttl)
            return amount
        self.data.values[key] = current + amount
        return int(current + amount)

    def _hash(self, key: str, create: bool = False) -> dict[str, bytes]:
        h = self.data.get(key)
        if h is None:
            h = {}
            if create:
                self.data.put(key, h)
        return h  # type: ignore[no-any-return]

    async def hset(self, key: str, field: str, value: bytes) -> bool:
        h = self._hash(key, create=True)
        new = field not in h
        h[field] = value
        return new

    async def hsetnx(self, key: str, field: str, value: bytes) -> bool:
        h = self._hash(key, create=True)
        if field in h:
            return False
        h[field] = value
        return True

    async def hget(self, key: str, field: str) -> bytes | None:
        return self._hash(key).get(field)

    async def hgetall(self, key: str) -> dict[str, bytes]:
        return dict(self._hash(key))

    async def hdel(self, key: str, field: str) -> bool:
        h = self._hash(key)
        existed = h.pop(field, None) is not None
        if existed and not h:
            self.data.delete(key)
        return existed

    async def append(self, key: str, value: bytes, ttl: float | None = None) -> int:
        return await self.extend(key, [value], ttl) - 1

    async def extend(self, key: str, values: list[bytes], ttl: float | None = None) -> int:
        log = self.data.get(key)
        if log is None:
            self.data.put(key, list(values), ttl)
            return len(values)
        self.data.expire(key, ttl)
        log.extend(values)
        self.data.grew(key, values)
        return len(log)

    async def read_log(self, key: str, start: int = 0, end: int = -1) -> list[bytes]:
        log = self.data.get(key) or []
        stop = len(log) if end == -1 else (end + 1 if end >= 0 else len(log) + end + 1)
        return list(log[start:stop])

    async def stream_add(self, key: str, fields: dict[str, bytes]) -> str:
        return self.data.stream(key).add(fields)

    async def stream_read(
        self, key: str, group: str, consumer: str, count: int, block_seconds: float
    ) -> list[tuple[str, dict[str, bytes]]]:
        deadline = time.monotonic() + block_seconds
        while True:
            stream = self.data.stream(key)
            entries = stream.read(group, consumer, count)
            left = deadline - time.monotonic()
            if entries or left <= 0:
                return entries
            stream.added.clear()  # (no await since the read: nothing was added in between)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stream.added.wait(), left)

    async def stream_ack(self, key: str, group: str, *ids: str) -> int:
        return self.data.stream(key).ack(group, ids)

    async def stream_claim(
        self, key: str, group: str, consumer: str, min_idle_seconds: float, count: int
    ) -> list[tuple[str, dict[str, bytes]]]:
        return self.data.stream(key).claim(group, consumer, min_idle_seconds, count)

    def script(self, lua: str, fallback: ScriptFallback, halt: Halt | None = None) -> Script:
        return _MemoryScript(self.data, fallback, halt)

    async def batch(self, calls: Sequence[Call]) -> list[Any]:
        results = []
        for script, keys, args in calls:  # no await in between: atomic
            assert isinstance(script, _MemoryScript), "a script of another store"
            result = script.fallback(self.data, keys, args)
            results.append(result)
            if script.halt is not None and script.halt.test(result):
                break
        return results
