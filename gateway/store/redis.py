"""The shared store on Redis (redis.asyncio + hiredis). Every key is prefixed; scripts run as EVALSHA."""

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.errors import StoreUnavailable
from gateway.store.base import Call, Halt, Script, ScriptFallback

_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)


@asynccontextmanager
async def _reachable() -> AsyncIterator[None]:
    try:
        yield
    except _UNREACHABLE:
        raise StoreUnavailable("The gateway's store (Redis) is unreachable; try again shortly.") from None


def _px(ttl: float) -> int:
    return max(1, int(ttl * 1000))


def _ms(ttl: float | None) -> int | None:
    return None if ttl is None else _px(ttl)


class _RedisScript:
    def __init__(self, store: "RedisStore", lua: str, halt: Halt | None = None) -> None:
        self._store = store
        self.lua = lua
        self.halt = halt
        self._script = store.client.register_script(lua)

    async def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        async with _reachable():
            return await self._script(keys=[self._store.key(k) for k in keys], args=list(args))


class RedisStore:
    """The ``Store`` shared by every replica pointing at the same Redis and prefix."""

    def __init__(self, url: str, prefix: str = "gw:") -> None:
        self.client = aioredis.Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30, max_connections=512
        )
        self.prefix = prefix
        self._composed: dict[tuple[Script, ...], _RedisScript] = {}

    def key(self, key: str) -> str:
        return self.prefix + key

    async def ping(self) -> None:
        async with _reachable():
            await self.client.ping()

    async def close(self) -> None:
        await self.client.aclose()

    async def get(self, key: str) -> bytes | None:
        async with _reachable():
            return cast(bytes | None, await self.client.get(self.key(key)))

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []
        async with _reachable():
            return cast(list[bytes | None], await self.client.mget([self.key(k) for k in keys]))

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        async with _reachable():
            await self.client.set(self.key(key), value, px=_ms(ttl))

    async def set_nx(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        async with _reachable():
            return bool(await self.client.set(self.key(key), value, px=_ms(ttl), nx=True))

    async def delete(self, *keys: str) -> int:
        async with _reachable():
            return int(await self.client.delete(*(self.key(k) for k in keys)))

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        async with _reachable():
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.incrby(self.key(key), amount)
                if ttl is not None:
                    pipe.pexpire(self.key(key), _px(ttl), nx=True)
                result = await pipe.execute()
            return int(result[0])

    async def hset(self, key: str, field: str, value: bytes) -> bool:
        async with _reachable():
            return bool(await self.client.hset(self.key(key), field, value))

    async def hsetnx(self, key: str, field: str, value: bytes) -> bool:
        async with _reachable():
            return bool(await self.client.hsetnx(self.key(key), field, value))

    async def hget(self, key: str, field: str) -> bytes | None:
        async with _reachable():
            return cast(bytes | None, await self.client.hget(self.key(key), field))

    async def hgetall(self, key: str) -> dict[str, bytes]:
        async with _reachable():
            raw = cast(dict[bytes, bytes], await self.client.hgetall(self.key(key)))
        return {k.decode(): v for k, v in raw.items()}

    async def hdel(self, key: str, field: str) -> bool:
        async with _reachable():
            return bool(await self.client.hdel(self.key(key), field))

    async def append(self, key: str, value: bytes, ttl: float | None = None) -> int:
        return await self.extend(key, [value], ttl) - 1

    async def extend(self, key: str, values: list[bytes], ttl: float | None = None) -> int:
        async with _reachable():
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.rpush(self.key(key), *values)
                if ttl is not None:
                    pipe.pexpire(self.key(key), _px(ttl))
                result = await pipe.execute()
            return int(result[0])

    async def read_log(self, key: str, start: int = 0, end: int = -1) -> list[bytes]:
        async with _reachable():
            return cast(list[bytes], await self.client.lrange(self.key(key), start, end))

    def script(self, lua: str, fallback: ScriptFallback, halt: Halt | None = None) -> Script:
        return _RedisScript(self, lua, halt)

    async def batch(self, calls: Sequence[Call]) -> list[Any]:
        if not calls:
            return []
        scripts = tuple(script for script, _, _ in calls)
        if len(calls) == 1:  # no need for a composed script
            return [await scripts[0]([*calls[0][1]], [*calls[0][2]])]
        composed = self._composed.get(scripts)
        if composed is None:
            composed = self._composed[scripts] = _RedisScript(self, compose(scripts))  # type: ignore[arg-type]
        counts: list[Any] = []
        keys: list[str] = []
        args: list[Any] = []
        for _, call_keys, call_args in calls:
            counts += (len(call_keys), len(call_args))
            keys += call_keys
            args += call_args
        return cast(list[Any], await composed(keys, counts + args))


def compose(scripts: Sequence[_RedisScript]) -> str:
    """One Lua script that runs each script's body as a function of its own slice of KEYS and ARGV.

    ARGV starts with each call's key count and arg count; the results come back as one array, cut after
    the first call whose result meets its ``Halt`` condition (a nil result becomes false, so the array has
    no holes and Redis returns it as a nil element).
    """
    n = len(scripts)
    lines = [
        "local function slice(t, from, count)",
        "  local s = {}",
        "  for i = 1, count do s[i] = t[from + i] end",
        "  return s",
        "end",
    ]
    for i, script in enumerate(scripts, 1):
        lines += [f"local function call{i}(KEYS, ARGV)", script.lua, "end"]
    lines += ["local out = {}", f"local ko, ao = 0, {2 * n}"]
    for i, script in enumerate(scripts, 1):
        lines += [
            "do",
            f"  local nk, na = tonumber(ARGV[{2 * i - 1}]), tonumber(ARGV[{2 * i}])",
            f"  local r = call{i}(slice(KEYS, ko, nk), slice(ARGV, ao, na))",
            "  ko, ao = ko + nk, ao + na",
            "  if r == nil then r = false end",
            f"  out[{i}] = r",
        ]
        if script.halt is not None:
            lines.append(f"  if {script.halt.lua} then return out end")
        lines.append("end")
    lines.append("return out")
    return "\n".join(lines)
