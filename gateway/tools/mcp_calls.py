"""The hot ``tools/call`` of an MCP session on streamable HTTP, spoken here rather than through the SDK's transport.

Why: the tool loop's CPU per round was 3.65× a plain Responses call's (the target is 1.5×, docs/tools.md
"Speed"), and the SDK's client took about 2.2 ms of CPU per ``tools/call``: anyio task groups and memory streams
per message, httpx, pydantic validation of every JSON-RPC message. One POST written on a kept-alive connection
and parsed with httptools costs about a tenth of that.

What the SDK still does: it opens the session (``initialize``, the negotiated protocol version, the
``mcp-session-id`` it got), lists tools, holds the GET stream for server messages, ends the session (DELETE),
serves every SSE-transport server, and takes over a session whose answers this module does not handle (a
redirect: the call was not run, and the session's calls go through the SDK from then on).

What a call is here, as the spec's streamable HTTP transport has it (2025-11-25, the versions ``initialize``
negotiates): one JSON-RPC 2.0 request POSTed with ``Accept: application/json, text/event-stream``,
``Content-Type: application/json``, ``mcp-session-id``, ``mcp-protocol-version`` and the server's configured
headers (the same headers the SDK sends), its ``_meta`` carrying the current trace context as the SDK's does.
The answer is one JSON object or an SSE stream: notifications in it are skipped, a request from the server
answered as the SDK answers one it has no handler for (``ping`` with an empty result, anything else with a
JSON-RPC error), the first response is the answer. A 404 means the server forgot the session (``SessionGone``:
the pool reopens it once). On a timeout or a cancellation the server is sent ``notifications/cancelled``, as
the SDK does. Connections are opened by ``ssrf.open_pinned``: checked at connect time, pinned to the checked
address; no redirect is followed. What a hostile server answers is bounded (``max_answer`` bytes of headers and
body, the shape validated as the SDK's ``CallToolResult``); anything else is ``CallFailed``, the tool's error.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httptools
import orjson

from gateway.sse import event_data, event_name
from gateway.tools.ssrf import open_pinned
from gateway.tracing import inject_context

if TYPE_CHECKING:
    import mcp_types

    from gateway.tools.ssrf import AddressPolicy

MAX_CONNECTIONS = 8  # a session's calls in flight at once (the SDK's client had the same pool)
MAX_SERVER_REQUESTS = 16  # requests from the server answered during one call
DRAIN_SECONDS = 0.25  # how long the end of an SSE answer's stream is waited for, to keep its connection
CANCEL_SECONDS = 5.0  # bound of the cancellation notification's POST
_UNSUPPORTED = {  # what the SDK's client answers when it has no handler (its defaults)
    "sampling/createMessage": (-32600, "Sampling not supported"),
    "elicitation/create": (-32600, "Elicitation not supported"),
    "roots/list": (-32600, "List roots not supported"),
}
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Reader = Callable[..., Awaitable[Any]]  # (connection, parser, reply, *args): reads one answer


class SessionGone(Exception):
    """404: the server no longer knows the session; the pool opens a new one and the call is tried once more."""


class Unreached(Exception):
    """No connection could be made: nothing was sent."""


class NotLean(Exception):
    """An answer this module leaves to the SDK (a redirect): the call was not run."""


class CallFailed(Exception):
    """The call's failure, a sentence for the model (``MCP error …``, a malformed answer, a broken stream)."""


class _Reply:
    """httptools' callbacks for one HTTP answer, and what they gathered."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.headers: dict[bytes, bytes] = {}
        self.headed = False
        self.done = False
        self.body = bytearray()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.size += len(name) + len(value)
        if self.size > self.limit:
            raise CallFailed(f"the MCP server's answer is larger than {self.limit} bytes")
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self.headed = True

    def on_body(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise CallFailed(f"the MCP server's answer is larger than {self.limit} bytes")
        self.body += chunk

    def on_message_complete(self) -> None:
        self.done = True

    def reusable(self, parser: Any) -> bool:
        """Whether the connection may carry the next request: the answer ended and HTTP/1.1 did not say close.
        (httptools' ``should_keep_alive`` is only right inside its callbacks; once the message has been parsed
        it says False, and every call opened a new connection.)"""
        closing = b"close" in self.headers.get(b"connection", b"").lower()
        return self.done and not closing and parser.get_http_version() == "1.1"


class McpCalls:
    """The ``tools/call``s of one open streamable-HTTP session. ``call`` returns the server's result, validated as
    the SDK's ``CallToolResult``, or raises ``CallFailed``, ``SessionGone``, ``Unreached``, ``NotLean`` or
    ``TimeoutError`` (after the server was told)."""

    def __init__(  # noqa: PLR0913 - what the SDK negotiated and the space's address policy, each needed
        self,
        url: str,
        headers: tuple[tuple[str, str], ...],
        session_id: str | None,
        version: str,
        policy: AddressPolicy,
        dns_timeout: float,
        max_answer: int,
        tls: Callable[[], ssl.SSLContext],
    ) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.tls = tls if parts.scheme == "https" else None
        self.policy, self.dns_timeout, self.max_answer = policy, dns_timeout, max_answer
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"POST {target} HTTP/1.1", f"host: {parts.netloc.rpartition('@')[2]}"]
        ours = {"accept", "content-type", "content-length", "host", "mcp-session-id", "mcp-protocol-version"}
        lines += [f"{name}: {value}" for name, value in headers if name.lower() not in ours]
        lines += ["accept: application/json, text/event-stream", "content-type: application/json"]
        if session_id:
            lines.append(f"mcp-session-id: {session_id}")
        lines.append(f"mcp-protocol-version: {version}")
        if any(c in line for line in lines for c in "\r\n\0"):  # never sent: the SDK's client refuses them too
            raise NotLean("a header holds a line break")
        head = "\r\n".join(lines)
        self.head = (head + "\r\ncontent-length: ").encode("latin-1")
        self.gone = session_id is not None  # a 404 means the session, not the method
        self.idle: deque[Connection] = deque()
        self.slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self.ids = itertools.count(1)
        self.background: set[asyncio.Task[None]] = set()
        self.closed = False

    async def call(self, name: str, arguments: dict[str, Any], timeout: float) -> mcp_types.CallToolResult:
        request_id = f"gw-{next(self.ids)}"  # never one of the SDK's (integers) on the same session
        params: dict[str, Any] = {"name": name, "arguments": arguments}
        meta: dict[str, Any] = {}
        inject_context(meta)  # the current span's context, as the SDK's dispatcher sends it
        if meta:
            params["_meta"] = meta
        body = orjson.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})
        sent = False
        try:
            async with asyncio.timeout(timeout), self.slots:
                sent = True
                raw = await self._request(body, request_id)
        except TimeoutError:
            self._cancel(request_id, f"timed out after {timeout:g}s")
            raise
        except asyncio.CancelledError:
            if sent:
                self._cancel(request_id, "caller cancelled")
            raise
        return _result(raw)

    async def _request(self, body: bytes, request_id: str) -> Any:
        try:
            return await self._reusing(self._exchange, body, self._answer, request_id)
        except _Stale:
            raise CallFailed("the MCP server closed the connection before answering") from None

    async def _reusing(self, work: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """``work(connection, *args)`` on a kept-alive connection, or on a new one when none is idle or the server
        closed the idle one meanwhile (``_Stale``: nothing was answered on it, so sending again is safe)."""
        connection = self._idle()
        if connection is not None:
            with contextlib.suppress(_Stale):
                return await work(connection, *args)
        return await work(await self._open(), *args)

    def _idle(self) -> Connection | None:
        while self.idle:
            connection = self.idle.pop()
            if not connection[0].at_eof() and not connection[1].is_closing():
                return connection
            connection[1].close()
        return None

    async def _open(self) -> Connection:
        try:
            return await open_pinned(self.host, self.port, self.policy, self.dns_timeout, self.tls)
        except (OSError, ssl.SSLError) as exc:
            raise Unreached(str(exc) or type(exc).__name__) from exc

    async def _exchange(self, connection: Connection, body: bytes, read: Reader, *args: Any) -> Any:
        """POST ``body`` on ``connection``; ``read(connection, parser, reply, *args)`` reads the answer once its
        head is in. The connection is kept for the next request when the answer allows it, else closed."""
        reader, writer = connection
        reply = _Reply(self.max_answer)
        parser = httptools.HttpResponseParser(reply)
        kept = False
        try:
            writer.write(self.head + b"%d\r\n\r\n" % len(body) + body)
            while not reply.headed:
                await self._feed(reader, parser, reply)
            answer = await read(connection, parser, reply, *args)
            kept = reply.reusable(parser) and not self.closed
            return answer
        finally:
            if kept:
                self.idle.append(connection)
            else:
                writer.close()

    async def _feed(self, reader: asyncio.StreamReader, parser: Any, reply: _Reply) -> None:
        try:
            data = await reader.read(65536)
        except OSError as exc:
            if reply.size == 0 and not reply.headed:
                raise _Stale from exc
            raise CallFailed(f"the connection to the MCP server broke: {type(exc).__name__}") from None
        if not data:
            if reply.size == 0 and not reply.headed:
                raise _Stale
            raise CallFailed("the MCP server closed the connection before answering")
        try:
            parser.feed_data(data)
        except httptools.HttpParserError:
            if reply.size > reply.limit:  # (raised in a callback, it reaches here wrapped by the parser)
                raise CallFailed(f"the MCP server's answer is larger than {reply.limit} bytes") from None
            raise CallFailed("the MCP server's answer is not HTTP") from None

    async def _answer(self, connection: Connection, parser: Any, reply: _Reply, request_id: str) -> Any:
        status = parser.get_status_code()
        kind = reply.headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if 300 <= status < 400:
            raise NotLean
        if status >= 400:
            await self._to_end(connection, parser, reply)
            raise self._refusal(status, kind, bytes(reply.body))
        if status == 202:
            raise CallFailed("the MCP server answered a request with 202 Accepted")
        if kind == b"application/json":
            await self._to_end(connection, parser, reply)
            message = _json(bytes(reply.body))
            if not isinstance(message, dict) or message.get("id") != request_id:
                raise CallFailed("the MCP server answered with a message that is not this call's response")
            return _outcome(message)
        if kind == b"text/event-stream":
            return await self._events(connection, parser, reply, request_id)
        raise CallFailed(f"the MCP server answered with content type {kind[:60].decode('latin-1')!r}")

    def _refusal(self, status: int, kind: bytes, body: bytes) -> Exception:
        if kind == b"application/json":
            with contextlib.suppress(CallFailed):
                message = _json(body)
                if isinstance(message, dict) and isinstance(message.get("error"), dict):
                    return CallFailed(_rpc_error(message["error"]))
        if status == 404 and self.gone:
            return SessionGone("Session terminated")
        return CallFailed(f"the MCP server answered HTTP {status}")

    async def _events(self, connection: Connection, parser: Any, reply: _Reply, request_id: str) -> Any:
        """The first response in the SSE stream; server requests answered, notifications skipped."""
        events = _Events()
        asked = 0
        while True:
            chunk = bytes(reply.body)
            reply.body.clear()
            for data in events.take(chunk):
                message = _json(data)
                if not isinstance(message, dict):
                    raise CallFailed("the MCP server sent an event that is not a JSON-RPC message")
                if "method" not in message:
                    if message.get("id") != request_id:
                        raise CallFailed("the MCP server answered with another request's response")
                    await self._drain(connection, parser, reply)
                    return _outcome(message)
                if "id" in message:  # a request of the server's: answered as the SDK answers it without a handler
                    asked += 1
                    if asked > MAX_SERVER_REQUESTS:
                        raise CallFailed("the MCP server sent too many requests during the call")
                    await self._post(_reply_to(message))
            if reply.done:
                raise CallFailed("the MCP server's event stream ended without an answer")
            await self._feed(connection[0], parser, reply)

    async def _drain(self, connection: Connection, parser: Any, reply: _Reply) -> None:
        """Wait (briefly) for the end of the stream: the server SHOULD close it after the response, and then the
        connection can be kept."""
        with contextlib.suppress(TimeoutError, CallFailed, _Stale):
            async with asyncio.timeout(DRAIN_SECONDS):
                await self._to_end(connection, parser, reply)

    async def _post(self, message: dict[str, Any]) -> None:
        """A notification or a response to the server; its answer (202 expected) is read and dropped."""
        with contextlib.suppress(_Stale, CallFailed):
            await self._reusing(self._exchange, orjson.dumps(message), self._to_end)

    async def _to_end(self, connection: Connection, parser: Any, reply: _Reply) -> None:
        while not reply.done:
            await self._feed(connection[0], parser, reply)

    def _cancel(self, request_id: str, reason: str) -> None:
        """``notifications/cancelled`` for the call, sent in the background (the call's answer does not wait)."""
        if self.closed:
            return
        message = {"jsonrpc": "2.0", "method": "notifications/cancelled"}
        message["params"] = {"requestId": request_id, "reason": reason}  # type: ignore[assignment]

        async def send() -> None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CANCEL_SECONDS):
                    await self._post(message)

        task = asyncio.ensure_future(send())
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def aclose(self) -> None:
        """Close the idle connections; the cancellation notifications still going get their bound."""
        self.closed = True
        while self.idle:
            self.idle.pop()[1].close()
        if self.background:
            await asyncio.gather(*self.background, return_exceptions=True)


class _Stale(Exception):
    """A kept-alive connection the server had closed: nothing was read, the request may go on a new one."""


class _Events:
    """Server-sent events out of the chunks of a body: the ``data`` of each complete ``message`` event."""

    def __init__(self) -> None:
        self.buffer = b""

    def take(self, chunk: bytes) -> list[bytes]:
        buffer = self.buffer + chunk
        if b"\r" in buffer:  # CRLF or CR line ends; a last CR may be half of a CRLF: kept for the next chunk
            tail = b"\r" if buffer.endswith(b"\r") else b""
            buffer = buffer[: len(buffer) - len(tail)].replace(b"\r\n", b"\n").replace(b"\r", b"\n") + tail
        *blocks, self.buffer = buffer.split(b"\n\n")
        # an event with no data (it primes a resumable stream) and events of other names are skipped
        return [data for block in blocks if (data := event_data(block)) and event_name(block) == b"message"]


def _json(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise CallFailed("the MCP server's answer is not JSON") from None


def _outcome(message: dict[str, Any]) -> Any:
    if isinstance(message.get("error"), dict):
        raise CallFailed(_rpc_error(message["error"]))
    if "result" not in message:
        raise CallFailed("the MCP server's response has neither a result nor an error")
    return message["result"]


def _rpc_error(error: dict[str, Any]) -> str:
    return f"MCP error {error.get('code')!s:.20}: {str(error.get('message'))[:1024]}"


def _reply_to(request: dict[str, Any]) -> dict[str, Any]:
    if request.get("method") == "ping":
        return {"jsonrpc": "2.0", "id": request["id"], "result": {}}
    code, message = _UNSUPPORTED.get(str(request.get("method")), (-32601, "Method not found"))
    return {"jsonrpc": "2.0", "id": request["id"], "error": {"code": code, "message": message}}


def _result(raw: Any) -> mcp_types.CallToolResult:
    import mcp_types
    from pydantic import ValidationError

    try:
        return mcp_types.CallToolResult.model_validate(raw, by_name=False)
    except ValidationError:
        raise CallFailed("the MCP server's result is not a tools/call result") from None
