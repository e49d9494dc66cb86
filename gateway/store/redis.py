"""The shared store on Redis, through the lean RESP client (``gateway.store.resp``). Every key is prefixed;
scripts run as EVALSHA (loaded on first use); a batch of scripts is composed into one script, one round trip."""

from collections.abc import Sequence
from typing import Any

from gateway.store.base import Call, Halt, Script, ScriptFallback
from gateway.store.resp import RespClient, RespError, script_sha, store_error

_MAX_BLOCK = 2.0  # seconds a stream read may wait on the server


def _px(ttl: float) -> int:
    return max(1, int(ttl * 1000))


def _entries(raw: list[Any]) -> list[tuple[str, dict[str, bytes]]]:
    """A stream reply's entries, ``[[id, [field, value, …]], …]``; an entry trimmed away (nil fields) is left out."""
    out = []
    for entry_id, flat in raw:
        if flat is not None:
            out.append((entry_id.decode(), {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}))
    return out


def _checked(replies: list[Any]) -> list[Any]:
    """The replies of a pipeline; an error reply in it is raised: StoreUnavailable when the server cannot serve
    now (out of memory, read-only), else a bug in the command, as such."""
    for reply in replies:
        if isinstance(reply, RespError):
            raise store_error(reply)
    return replies


class _RedisScript:
    def __init__(self, store: "RedisStore", lua: str, halt: Halt | None = None) -> None:
        self._store = store
        self.lua = lua
        self.halt = halt
        self.sha = script_sha(lua)

    async def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        key = self._store.key
        return await self._store.client.evalsha(self.sha, self.lua, [key(k) for k in keys], args)


class RedisStore:
    """The ``Store`` shared by every replica pointing at the same Redis and prefix."""

    remote = True

    def __init__(self, url: str, prefix: str = "gw:") -> None:
        self.client = RespClient(url, connect_timeout=2.0, reply_timeout=5.0)
        # blocking stream reads hold their connection: on a connection of their own, never the shared ones
        self.blocking = RespClient(url, connections=1, connect_timeout=2.0, reply_timeout=5.0 + _MAX_BLOCK)
        self.prefix = prefix
        self._groups: set[tuple[str, str]] = set()
        self._composed: dict[tuple[Script, ...], _RedisScript] = {}

    def key(self, key: str) -> str:
        return self.prefix + key

    async def ping(self) -> None:
        await self.client.execute("PING")

    async def close(self) -> None:
        await self.client.close()
        await self.blocking.close()

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self.client.execute("GET", self.key(key))
        return value

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []
        values: list[bytes | None] = await self.client.execute("MGET", *(self.key(k) for k in keys))
        return values

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        if ttl is None:
            await self.client.execute("SET", self.key(key), value)
        else:
            await self.client.execute("SET", self.key(key), value, "PX", _px(ttl))

    async def set_nx(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        expiry = () if ttl is None else ("PX", _px(ttl))
        return await self.client.execute("SET", self.key(key), value, "NX", *expiry) is not None

    async def delete(self, *keys: str) -> int:
        return int(await self.client.execute("DEL", *(self.key(k) for k in keys))) if keys else 0

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        name = self.key(key)
        commands: list[tuple[Any, ...]] = [("MULTI",), ("INCRBY", name, amount)]
        if ttl is not None:
            commands.append(("PEXPIRE", name, _px(ttl), "NX"))
        replies = _checked(await self.client.execute_many([*commands, ("EXEC",)]))
        return int(_checked(replies[-1])[0])

    async def hset(self, key: str, field: str, value: bytes) -> bool:
        return bool(await self.client.execute("HSET", self.key(key), field, value))

    async def hsetnx(self, key: str, field: str, value: bytes) -> bool:
        return bool(await self.client.execute("HSETNX", self.key(key), field, value))

    async def hget(self, key: str, field: str) -> bytes | None:
        value: bytes | None = await self.client.execute("HGET", self.key(key), field)
        return value

    async def hgetall(self, key: str) -> dict[str, bytes]:
        flat = await self.client.execute("HGETALL", self.key(key))
        return {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}

    async def hdel(self, key: str, field: str) -> bool:
        return bool(await self.client.execute("HDEL", self.key(key), field))

    async def append(self, key: str, value: bytes, ttl: float | None = None) -> int:
        return await self.extend(key, [value], ttl) - 1

    async def extend(self, key: str, values: list[bytes], ttl: float | None = None) -> int:
        name = self.key(key)
        commands: list[tuple[Any, ...]] = [("MULTI",), ("RPUSH", name, *values)]
        if ttl is not None:
            commands.append(("PEXPIRE", name, _px(ttl)))
        replies = _checked(await self.client.execute_many([*commands, ("EXEC",)]))
        return int(_checked(replies[-1])[0])

    async def read_log(self, key: str, start: int = 0, end: int = -1) -> list[bytes]:
        entries: list[bytes] = await self.client.execute("LRANGE", self.key(key), start, end)
        return entries

    async def stream_add(self, key: str, fields: dict[str, bytes]) -> str:
        flat = [part for pair in fields.items() for part in pair]
        return (await self.client.execute("XADD", self.key(key), "*", *flat)).decode()  # type: ignore[no-any-return]

    async def _group(self, key: str, group: str) -> None:
        if (key, group) in self._groups:
            return
        try:
            await self.client.execute("XGROUP", "CREATE", self.key(key), group, "0", "MKSTREAM")
        except RespError as exc:
            if not exc.message.startswith("BUSYGROUP"):
                raise
        self._groups.add((key, group))

    async def stream_read(
        self, key: str, group: str, consumer: str, count: int, block_seconds: float
    ) -> list[tuple[str, dict[str, bytes]]]:
        await self._group(key, group)
        block = int(min(block_seconds, _MAX_BLOCK) * 1000)
        command = ("XREADGROUP", "GROUP", group, consumer, "COUNT", count)
        client, wait = (self.blocking, ("BLOCK", block)) if block else (self.client, ())  # (BLOCK 0: for ever)
        try:
            reply = await client.execute(*command, *wait, "STREAMS", self.key(key), ">")
        except RespError as exc:
            if not exc.message.startswith("NOGROUP"):  # the stream was deleted (a flush): create it again
                raise
            self._groups.discard((key, group))
            return []
        return [] if not reply else _entries(reply[0][1])

    async def stream_ack(self, key: str, group: str, *ids: str) -> int:
        return int(await self.client.execute("XACK", self.key(key), group, *ids)) if ids else 0

    async def stream_claim(
        self, key: str, group: str, consumer: str, min_idle_seconds: float, count: int
    ) -> list[tuple[str, dict[str, bytes]]]:
        await self._group(key, group)
        idle = max(0, int(min_idle_seconds * 1000))
        reply = await self.client.execute("XAUTOCLAIM", self.key(key), group, consumer, idle, "0-0", "COUNT", count)
        return _entries(reply[1])

    def script(self, lua: str, fallback: ScriptFallback, halt: Halt | None = None) -> Script:
        return _RedisScript(self, lua, halt)

    async def batch(self, calls: Sequence[Call]) -> list[Any]:
        if not calls:
            return []
        scripts = tuple(script for script, _, _ in calls)
        if len(calls) == 1:  # no need for a composed script
            return [await scripts[0](calls[0][1], calls[0][2])]
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
        results: list[Any] = await composed(keys, counts + args)
        return results


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
