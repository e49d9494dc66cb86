"""A ``Store`` that times each operation of another and counts the ones that could not reach it (the metrics'
``gateway_store_duration_seconds`` and ``gateway_store_errors_total``, by operation name).

Used on Redis only: the in-memory store answers in microseconds and never fails. A batch (the policy chain's one
round trip) is one operation; a script called on its own runs on the inner store, untimed.
"""

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from gateway.errors import StoreUnavailable
from gateway.store.base import Call, Halt, Script, ScriptFallback, Store


class _Observer(Protocol):
    def observe(self, amount: float) -> None: ...


class _Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


Meter = Callable[[str], tuple[_Observer, _Counter]]  # operation name -> (its duration, its errors)


class TimedStore:
    """``inner`` with every operation measured through ``meter``."""

    def __init__(self, inner: Store, meter: Meter) -> None:
        self.inner = inner
        self.remote = inner.remote
        self._meters = {op: meter(op) for op in _OPS}

    async def _timed(self, op: str, call: Any, *args: Any) -> Any:
        duration, errors = self._meters[op]
        start = time.perf_counter()
        try:
            return await call(*args)
        except StoreUnavailable:
            errors.inc()
            raise
        finally:
            duration.observe(time.perf_counter() - start)

    async def ping(self) -> None:
        await self._timed("ping", self.inner.ping)

    async def close(self) -> None:
        await self.inner.close()

    async def get(self, key: str) -> bytes | None:
        result: bytes | None = await self._timed("get", self.inner.get, key)
        return result

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        result: list[bytes | None] = await self._timed("get_many", self.inner.get_many, keys)
        return result

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        await self._timed("set", self.inner.set, key, value, ttl)

    async def set_nx(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        return bool(await self._timed("set_nx", self.inner.set_nx, key, value, ttl))

    async def delete(self, *keys: str) -> int:
        return int(await self._timed("delete", self.inner.delete, *keys))

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        return int(await self._timed("incr", self.inner.incr, key, amount, ttl))

    async def hset(self, key: str, field: str, value: bytes) -> bool:
        return bool(await self._timed("hset", self.inner.hset, key, field, value))

    async def hsetnx(self, key: str, field: str, value: bytes) -> bool:
        return bool(await self._timed("hsetnx", self.inner.hsetnx, key, field, value))

    async def hget(self, key: str, field: str) -> bytes | None:
        result: bytes | None = await self._timed("hget", self.inner.hget, key, field)
        return result

    async def hgetall(self, key: str) -> dict[str, bytes]:
        result: dict[str, bytes] = await self._timed("hgetall", self.inner.hgetall, key)
        return result

    async def hdel(self, key: str, field: str) -> bool:
        return bool(await self._timed("hdel", self.inner.hdel, key, field))

    async def append(self, key: str, value: bytes, ttl: float | None = None) -> int:
        return int(await self._timed("append", self.inner.append, key, value, ttl))

    async def extend(self, key: str, values: list[bytes], ttl: float | None = None) -> int:
        return int(await self._timed("extend", self.inner.extend, key, values, ttl))

    async def read_log(self, key: str, start: int = 0, end: int = -1) -> list[bytes]:
        result: list[bytes] = await self._timed("read_log", self.inner.read_log, key, start, end)
        return result

    async def stream_add(self, key: str, fields: dict[str, bytes]) -> str:
        return str(await self._timed("stream_add", self.inner.stream_add, key, fields))

    async def stream_read(
        self, key: str, group: str, consumer: str, count: int, block_seconds: float
    ) -> list[tuple[str, dict[str, bytes]]]:
        # not timed: a blocking read waits for work, its duration says nothing of the store
        return await self.inner.stream_read(key, group, consumer, count, block_seconds)

    async def stream_ack(self, key: str, group: str, *ids: str) -> int:
        return int(await self._timed("stream_ack", self.inner.stream_ack, key, group, *ids))

    async def stream_claim(
        self, key: str, group: str, consumer: str, min_idle_seconds: float, count: int
    ) -> list[tuple[str, dict[str, bytes]]]:
        result: list[tuple[str, dict[str, bytes]]] = await self._timed(
            "stream_claim", self.inner.stream_claim, key, group, consumer, min_idle_seconds, count
        )
        return result

    def script(self, lua: str, fallback: ScriptFallback, halt: Halt | None = None) -> Script:
        return self.inner.script(lua, fallback, halt)

    async def batch(self, calls: Sequence[Call]) -> list[Any]:
        result: list[Any] = await self._timed("batch", self.inner.batch, calls)
        return result


_OPS = (
    "ping", "get", "get_many", "set", "set_nx", "delete", "incr", "hset", "hsetnx", "hget", "hgetall", "hdel",
    "append", "extend", "read_log", "batch", "stream_add", "stream_ack", "stream_claim",
)  # fmt: skip
