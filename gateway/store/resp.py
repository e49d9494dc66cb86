"""A lean asyncio Redis client: RESP2 over ``asyncio.Protocol``, replies parsed by ``hiredis.Reader``.

Why it exists: redis-py's asyncio client spends 36–64 µs of CPU per EVALSHA; this client spends 3–8 µs
under concurrency, when pipelining batches many callers' commands per write and read, and 34 µs for a lone
caller, where the syscalls dominate (docs/benchmarks.md, "Redis client"). The store issues a script or two per
request, so that difference is a sizeable part of the gateway's own overhead.

Design:

* Each connection is a protocol with a FIFO of pending replies. Redis answers in order, so the n-th reply
  belongs to the n-th entry; no request ids, no locks.
* Auto-pipelining: commands are appended to a buffer and written once per event-loop iteration
  (``loop.call_soon``), so concurrent callers share one ``write`` syscall and one TCP segment.
* Commands are spread round robin over a few connections, opened lazily on first use. A failed connection
  is dropped and the next call opens a new one; there is no background reconnect loop.
* ``AUTH`` and ``SELECT`` are queued ahead of everything else on a new connection. Their replies are checked,
  not delivered: if either is refused the connection fails, so a wrong password surfaces as
  ``StoreUnavailable`` (with the server's ``RespError`` as ``__cause__``).
* Reply timeout without a timer per command: while replies are owed, one periodic check per connection
  fails it when nothing has arrived for ``reply_timeout`` seconds.
* A cancelled caller leaves its entry in the FIFO: its reply is read and dropped, so later replies stay
  matched to their callers.
* Any connection failure (refused, reset, closed, connect or reply timeout) raises ``StoreUnavailable`` in
  every caller waiting on that connection. Error replies (``-ERR``, ``-NOSCRIPT``) are ``RespError``, except
  those that say the server cannot serve now (``store_error``): they are ``StoreUnavailable`` too.
* ``close()`` drops the connections (waiting callers get ``StoreUnavailable``); like redis-py's ``aclose``,
  a later call simply opens new ones. A connection belongs to the event loop that opened it.
"""

import asyncio
import hashlib
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

from gateway.errors import StoreUnavailable

UNREACHABLE = "The gateway's store (Redis) is unreachable; try again shortly."
UNAVAILABLE = "The gateway's store (Redis) cannot serve requests right now; try again shortly."

# Error codes that say the server cannot serve now, not that the command is wrong: loading its data after a
# restart, a read-only replica (a failover not finished), out of memory under noeviction, busy with a script,
# no primary or too few replicas reachable.
_UNAVAILABLE_CODES = frozenset({"LOADING", "READONLY", "MASTERDOWN", "OOM", "BUSY", "NOREPLICAS", "TRYAGAIN"})


class RespError(Exception):
    """An error reply from Redis, e.g. ``ERR ...`` or ``NOSCRIPT ...``; the connection stays usable."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def store_error(reply: RespError) -> Exception:
    """What a caller gets for an error reply: ``StoreUnavailable`` (the reply as its cause) when the server
    cannot serve now, so outage handling (503, ``on_store_error``) applies; else the ``RespError`` itself."""
    if reply.message.split(" ", 1)[0] in _UNAVAILABLE_CODES:
        error = StoreUnavailable(UNAVAILABLE)
        error.__cause__ = reply
        return error
    return reply


def script_sha(lua: str) -> str:
    """The SHA1 Redis files a script under (what EVALSHA takes)."""
    return hashlib.sha1(lua.encode()).hexdigest()


def _pack(command: Sequence[Any]) -> bytes:
    # hiredis packs in C and already encodes as we want: bytes as is, str as UTF-8, int in decimal, float as
    # repr; anything else (bool included) is a TypeError before anything is queued.
    if not command:
        raise ValueError("an empty Redis command")  # Redis would send no reply, desynchronising the FIFO
    return cast(bytes, hiredis.pack_command(tuple(command)))


@dataclass(frozen=True)
class _Target:
    host: str
    port: int
    socket_path: str | None
    tls: bool
    handshake: tuple[bytes, ...]  # AUTH / SELECT, packed, sent first on every new connection


def _parse(url: str) -> _Target:
    """``redis://[[user]:password@]host[:port][/db]``, ``rediss://…`` (TLS), ``unix:///path.sock[?db=N]``."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r}")
    unix = parts.scheme == "unix"
    db_text = parse_qs(parts.query).get("db", [""])[0] if unix else parts.path.strip("/")
    db = int(db_text or 0)
    handshake: list[bytes] = []
    if parts.password is not None:  # a user name alone carries no credentials
        password = unquote(parts.password)
        user = unquote(parts.username or "")
        handshake.append(_pack(("AUTH", user, password) if user else ("AUTH", password)))
    if db:
        handshake.append(_pack(("SELECT", db)))
    return _Target(
        host=parts.hostname or "localhost",
        port=parts.port or 6379,
        socket_path=unquote(parts.path) if unix else None,
        tls=parts.scheme == "rediss",
        handshake=tuple(handshake),
    )


class _Batch:
    """Consecutive replies collected for one ``execute_many`` caller."""

    __slots__ = ("future", "size", "replies")

    def __init__(self, future: "asyncio.Future[list[Any]]", size: int) -> None:
        self.future = future
        self.size = size
        self.replies: list[Any] = []


# What waits for a reply: a caller's future, a batch, or None for a handshake reply (checked, not delivered).
_Entry = asyncio.Future[Any] | _Batch | None


class _Connection(asyncio.Protocol):
    def __init__(self, target: _Target, tls: ssl.SSLContext | None, connect_timeout: float, reply_timeout: float):
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader(replyError=RespError)
        self._reply_timeout = reply_timeout
        self._transport: asyncio.Transport | None = None
        self._buffer: list[bytes] = list(target.handshake)
        self._pending: deque[_Entry] = deque(None for _ in target.handshake)
        self._timer: asyncio.TimerHandle | None = None
        self._progress = 0.0  # loop time of the last sign of life while replies are owed
        self.failed = False
        self._opening = self._loop.create_task(self._open(target, tls, connect_timeout))

    async def _open(self, target: _Target, tls: ssl.SSLContext | None, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                if target.socket_path is not None:
                    await self._loop.create_unix_connection(lambda: self, target.socket_path)
                else:
                    await self._loop.create_connection(lambda: self, target.host, target.port, ssl=tls)
        except Exception as exc:  # refused, unresolvable, TLS, timeout: all mean the store is unreachable
            self._fail(exc)

    def send(self, payload: bytes) -> "asyncio.Future[Any]":
        future = self._loop.create_future()
        self._queue(payload, future)
        return future

    def send_batch(self, payload: bytes, size: int) -> "asyncio.Future[list[Any]]":
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        self._queue(payload, _Batch(future, size))
        return future

    def _queue(self, payload: bytes, entry: _Entry) -> None:
        if not self._pending:
            self._progress = self._loop.time()  # the reply clock starts when something is first owed
            if self._timer is None and self._transport is not None:
                self._timer = self._loop.call_later(self._reply_timeout / 2, self._check)
        self._pending.append(entry)
        # While connecting the buffer just grows; connection_made writes it behind the handshake.
        if not self._buffer and self._transport is not None:
            self._loop.call_soon(self._flush)
        self._buffer.append(payload)

    def _flush(self) -> None:
        buffer, self._buffer = self._buffer, []
        if self._transport is not None and not self.failed:
            self._transport.write(b"".join(buffer))

    def _check(self) -> None:
        self._timer = None
        if not self._pending or self.failed:
            return  # re-armed by the next command
        if self._loop.time() - self._progress >= self._reply_timeout:
            self._fail(TimeoutError(f"no reply from Redis within {self._reply_timeout}s"))
            return
        self._timer = self._loop.call_later(self._reply_timeout / 2, self._check)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        if self.failed:  # closed while connecting
            self._transport.abort()
            return
        self._progress = self._loop.time()
        self._timer = self._loop.call_later(self._reply_timeout / 2, self._check)
        self._flush()

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        self._progress = self._loop.time()  # part of a long reply counts as progress too
        pending = self._pending
        try:
            reply = self._reader.gets()
            while reply is not False:
                entry = pending[0]
                if isinstance(entry, _Batch):
                    entry.replies.append(reply)
                    if len(entry.replies) == entry.size:
                        pending.popleft()
                        if not entry.future.done():
                            entry.future.set_result(entry.replies)
                else:
                    pending.popleft()
                    if entry is None:
                        if isinstance(reply, RespError):  # AUTH or SELECT refused: the connection is useless
                            self._fail(reply)
                            return
                    elif entry.done():
                        pass  # its caller was cancelled; the reply is dropped
                    elif isinstance(reply, RespError):
                        entry.set_exception(store_error(reply))
                    else:
                        entry.set_result(reply)
                reply = self._reader.gets()
        except (hiredis.ProtocolError, IndexError) as exc:  # garbage, or a reply nobody asked for
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError("Redis closed the connection"))

    def close(self) -> None:
        self._opening.cancel()
        self._fail(ConnectionAbortedError("the client was closed"))

    def _fail(self, cause: BaseException) -> None:
        """Drop the connection and tell every waiting caller the store is unavailable."""
        if self.failed:
            return
        self.failed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.abort()
        self._buffer.clear()
        pending, self._pending = self._pending, deque()
        for entry in pending:
            future = entry.future if isinstance(entry, _Batch) else entry
            if future is not None and not future.done():
                error = StoreUnavailable(UNREACHABLE)
                error.__cause__ = cause
                future.set_exception(error)


class RespClient:
    """Redis over a few auto-pipelined connections; see the module docstring."""

    def __init__(
        self, url: str, *, connections: int = 2, connect_timeout: float = 2.0, reply_timeout: float = 5.0
    ) -> None:
        if connections < 1:
            raise ValueError("connections must be at least 1")
        self._target = _parse(url)
        self._connect_timeout = connect_timeout
        self._reply_timeout = reply_timeout
        self._tls: ssl.SSLContext | None = None
        self._slots: list[_Connection | None] = [None] * connections
        self._next = 0

    def _connection(self) -> _Connection:
        index = self._next
        self._next = (index + 1) % len(self._slots)
        connection = self._slots[index]
        if connection is None or connection.failed:
            if self._target.tls and self._tls is None:
                self._tls = ssl.create_default_context()  # loading CA certificates is slow: do it once
            connection = _Connection(self._target, self._tls, self._connect_timeout, self._reply_timeout)
            self._slots[index] = connection
        return connection

    async def execute(self, *args: Any) -> Any:
        """One command; an error reply raises ``RespError``, a connection failure ``StoreUnavailable``."""
        payload = _pack(args)
        return await self._connection().send(payload)

    async def execute_many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Several commands, consecutive on one connection (so MULTI…EXEC works); replies in order.

        Error replies come back as ``RespError`` items in the list; only a connection failure raises."""
        if not commands:
            return []
        payload = b"".join(_pack(command) for command in commands)
        return await self._connection().send_batch(payload, len(commands))

    async def evalsha(self, sha: str, lua: str, keys: Sequence[str | bytes], args: Sequence[Any]) -> Any:
        """Run a script by SHA; when Redis does not have it, EVAL the source (which also caches it)."""
        try:
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args)
        except RespError as exc:
            if not exc.message.startswith("NOSCRIPT"):
                raise
        return await self.execute("EVAL", lua, len(keys), *keys, *args)

    async def close(self) -> None:
        """Drop every connection; waiting callers get ``StoreUnavailable``. A later call reconnects."""
        slots, self._slots = self._slots, [None] * len(self._slots)
        for connection in slots:
            if connection is not None:
                connection.close()
