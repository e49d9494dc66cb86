"""MCP sessions over the official ``mcp`` SDK (streamable HTTP, and SSE for older servers), pooled per server.

A session is kept per (URL, transport, headers, the space's address policy), reused across requests, and owned
by a task of its own: the SDK's transports run in anyio task groups that must be entered and left by one task,
while calls come from many requests. A session found broken (the connection closed, the server forgot it) is
dropped and opened again, once per call. Every connection goes through ``ssrf.pinned_client``: checked at
connect time, pinned to the checked address, no redirect followed off the server's origin (the SDK follows only
same-origin ones, which reach the same pinned address). What a hostile server lists is bounded: the number of
tools, the size of names, descriptions and schemas, and non-object schemas are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypedDict

import anyio
import httpx2
import orjson

from config.tools import NAME
from gateway.tools.mcp import McpServer
from gateway.tools.mcp_calls import CallFailed, McpCalls, NotLean, SessionGone, Unreached
from gateway.tools.results import ToolResult, ToolUnavailable, bounded_output, bounded_text, describe
from gateway.tools.ssrf import pinned_client, shown, tls_context

if TYPE_CHECKING:  # the SDK itself is imported on first use: a gateway without MCP tools never loads it (~250 ms
    import mcp_types  # and several MB at start)
    from mcp.client.session import ClientSession

MAX_TOOLS = 128  # tools of one server shown to a model
MAX_PAGES = 16  # pages of a tools/list read
MAX_DESCRIPTION = 4096
MAX_SCHEMA_BYTES = 32 * 1024
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_BROKEN = (
    anyio.ClosedResourceError,
    anyio.BrokenResourceError,
    anyio.EndOfStream,
    httpx2.TransportError,
    SessionGone,
    Unreached,
)
assert NAME == r"^[A-Za-z0-9_-]{1,64}$"  # _NAME_CHARS spells the same rule without a regex per tool


class McpTool(TypedDict):
    """One tool of a server, as the loop shows it to the model (and in ``mcp_list_tools``)."""

    name: str
    description: str
    input_schema: dict[str, Any]
    annotations: dict[str, Any] | None


SessionKey = tuple[str, str, tuple[tuple[str, str], ...], Any]


class _Broken(Exception):
    """The session is unusable; the call may be tried once more on a new one."""


class _Session:
    """One open MCP session and the task that owns its transport."""

    def __init__(self, server: McpServer, dns_timeout: float, calls: Callable[..., McpCalls] | None = None) -> None:
        self.server = server
        self.dns_timeout = dns_timeout
        self.make_calls = calls  # the lean tools/call once the session is open (streamable HTTP only)
        self.calls: McpCalls | None = None
        self.session_id: str | None = None  # the mcp-session-id the server gave the SDK
        self.version: str | None = None  # the protocol version initialize negotiated
        self.initialized = False  # the server has the SDK's notifications/initialized (before any other request)
        self.session: ClientSession | None = None
        self.failure: BaseException | None = None
        self.listing: tuple[float, list[mcp_types.Tool]] | None = None  # (when, the server's tools)
        self.ready = asyncio.Event()
        self.closing = asyncio.Event()
        self.task = asyncio.ensure_future(self._own())

    @property
    def alive(self) -> bool:
        return not self.task.done() and not self.closing.is_set()

    def _client(
        self, headers: dict[str, str] | None = None, timeout: httpx2.Timeout | None = None, auth: Any = None
    ) -> httpx2.AsyncClient:
        # the server's headers only: the SDK's own (SSE) arrive here too and are ignored
        read = max(self.server.timeout, 300.0)
        return pinned_client(
            self.server.policy,
            self.dns_timeout,
            headers=dict(self.server.headers),
            timeout=timeout or httpx2.Timeout(self.server.timeout, read=read),
            max_connections=8,
        )

    @contextlib.asynccontextmanager
    async def _streams(self) -> AsyncIterator[tuple[Any, Any]]:
        if self.server.transport == "sse":
            from mcp.client.sse import sse_client

            async with sse_client(
                self.server.url, timeout=self.server.timeout, httpx_client_factory=self._client
            ) as streams:
                yield streams[0], streams[1]
            return
        from mcp.client.streamable_http import streamable_http_client

        async with self._client() as client, streamable_http_client(self.server.url, http_client=client) as streams:
            client.event_hooks = {"response": [self._seen]}
            yield streams[0], streams[1]

    async def _seen(self, response: httpx2.Response) -> None:
        # the SDK takes the session id from the initialize answer, the first one that carries it
        if self.session_id is None:
            self.session_id = response.headers.get("mcp-session-id")
        if not self.initialized and b'"notifications/initialized"' in response.request.content:
            self.initialized = True
            self._arm()

    def _arm(self) -> None:
        """The lean calls, once the session is initialized (the SDK posts that notification after initialize)."""
        if self.make_calls is None or self.version is None or not self.initialized or self.calls is not None:
            return
        with contextlib.suppress(NotLean):  # a header the lean path will not send: the SDK makes every call
            self.calls = self.make_calls(self.server, self.session_id, self.version)

    async def _own(self) -> None:
        from mcp.client.session import ClientSession

        try:
            async with self._streams() as (read, write), ClientSession(read, write) as session:
                try:
                    opened = await session.initialize()
                    if self.server.transport == "streamable_http":
                        self.version = opened.protocol_version
                        self._arm()
                    self.session = session
                    self.ready.set()
                    await self.closing.wait()
                finally:  # the lean calls' cancellation notices go before the session's end
                    if self.calls is not None:
                        await self.calls.aclose()
        except BaseException as exc:  # kept for the callers waiting on ready; the task ends here
            self.failure = exc
        finally:
            self.ready.set()

    async def close(self) -> None:
        self.closing.set()
        if self.session is None:  # still opening (a server that does not answer): nothing to end politely
            self.task.cancel()
        with contextlib.suppress(BaseException):
            async with asyncio.timeout(5):
                await asyncio.shield(self.task)
        if not self.task.done():
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task


class McpSessions:
    """The pool of one app's MCP sessions. ``aclose`` closes them all (the app's shutdown)."""

    def __init__(
        self, dns_timeout: float, max_output_bytes: int, max_sessions: int = 256, listing_ttl: float = 30.0
    ) -> None:
        self.listing_ttl = listing_ttl  # how long a session's tool listing is reused
        self.dns_timeout = dns_timeout
        self.max_output_bytes = max_output_bytes
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[SessionKey, _Session] = OrderedDict()
        self._closed = False

    def _calls(self, server: McpServer, session_id: str | None, version: str) -> McpCalls:
        # an answer may be 8 times the output kept (JSON escapes), and at least 1 MiB, as the SDK's SSE events
        limit = max(8 * self.max_output_bytes, 1024 * 1024)
        return McpCalls(
            server.url, server.headers, session_id, version, server.policy, self.dns_timeout, limit, tls_context
        )

    @staticmethod
    def key(server: McpServer) -> SessionKey:
        return (server.url, server.transport, server.headers, server.policy)

    @property
    def open_sessions(self) -> int:
        return sum(1 for s in self._sessions.values() if s.alive)

    async def _session(self, server: McpServer) -> _Session:
        if self._closed:
            raise ToolUnavailable("The gateway is shutting down.")
        key = self.key(server)
        entry = self._sessions.get(key)
        if entry is None or not entry.alive:
            entry = _Session(server, self.dns_timeout, self._calls if server.transport == "streamable_http" else None)
            self._sessions[key] = entry
            await self._evict()
        self._sessions.move_to_end(key)
        try:
            async with asyncio.timeout(server.timeout):
                await entry.ready.wait()
        except TimeoutError:
            await self._drop(key, entry)
            raise ToolUnavailable(self._unreachable(server, f"no session within {server.timeout:g} s")) from None
        if entry.session is None:
            await self._drop(key, entry)
            reason = describe(entry.failure) if entry.failure else "the session closed"
            raise ToolUnavailable(self._unreachable(server, reason))
        return entry

    async def _evict(self) -> None:
        while len(self._sessions) > self.max_sessions:
            _, oldest = self._sessions.popitem(last=False)
            await oldest.close()

    async def _drop(self, key: SessionKey, entry: _Session) -> None:
        if self._sessions.get(key) is entry:
            del self._sessions[key]
        await entry.close()

    @staticmethod
    def _unreachable(server: McpServer, reason: str) -> str:
        return f"MCP server {shown(server.label)} is not reachable: {bounded_text(reason, 300)}"

    async def _with_session(self, server: McpServer, work: Any) -> Any:
        """``work(entry)`` on the pooled session; a broken one is dropped and the work tried once on a new one."""
        import mcp_types
        from mcp.shared.exceptions import MCPError

        for attempt in (1, 2):
            session = await self._session(server)
            try:
                return await work(session)
            except _BROKEN as exc:
                failure: BaseException = exc
            except MCPError as exc:
                if exc.error.code != mcp_types.CONNECTION_CLOSED and exc.error.message != "Session terminated":
                    raise
                failure = exc
            entry = self._sessions.get(self.key(server))
            if entry is session:
                await self._drop(self.key(server), entry)
            if attempt == 2:
                raise _Broken(describe(failure))
        raise AssertionError("unreachable")

    async def list_tools(self, server: McpServer) -> list[McpTool]:
        """The server's tools the request allows (``allowed_tools``), at most ``MAX_TOOLS``, each bounded; a tool
        with a bad name or an oversized schema is left out. ``ToolUnavailable`` (424) when the server
        cannot be reached or fails the listing."""
        key = self.key(server)
        entry = self._sessions.get(key)
        cached = entry.listing if entry is not None and entry.alive else None
        if cached is not None and time.monotonic() - cached[0] < self.listing_ttl:
            listed = cached[1]
        else:
            listed = await self._list(server)
            entry = self._sessions.get(key)
            if entry is not None:  # the session's listing, kept for a while: most loops list the same server
                entry.listing = (time.monotonic(), listed)
        tools: list[McpTool] = []
        for tool in listed:
            if len(tools) == MAX_TOOLS:
                break
            if server.allows_tool(tool.name):
                kept = _bounded_tool(tool)
                if kept is not None:
                    tools.append(kept)
        return tools

    async def _list(self, server: McpServer) -> list[mcp_types.Tool]:
        try:
            async with asyncio.timeout(server.timeout):
                listed: list[mcp_types.Tool] = await self._with_session(server, self._read_listing)
                return listed
        except ToolUnavailable:
            raise
        except TimeoutError:
            raise ToolUnavailable(self._unreachable(server, f"no tool list within {server.timeout:g} s")) from None
        except Exception as exc:  # unreachable, or a listing the SDK refused (a schema that is not an object)
            raise ToolUnavailable(self._unreachable(server, describe(exc))) from None

    @staticmethod
    async def _read_listing(entry: _Session) -> list[mcp_types.Tool]:
        import mcp_types

        session = entry.session
        assert session is not None  # the pool hands out open sessions only
        listed: list[mcp_types.Tool] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
            page = await session.list_tools(params=params)
            listed.extend(page.tools[: MAX_TOOLS * 4])
            cursor = page.next_cursor
            if not cursor or len(listed) >= MAX_TOOLS * 4:
                break
        return listed

    async def call_tool(
        self, server: McpServer, name: str, arguments: dict[str, Any], timeout: float | None = None
    ) -> ToolResult:
        """Run ``name`` on the server. Never raises for the tool's own failure: an ``isError`` result, an MCP
        error, a timeout (``timeout``, else the server's), an unreachable server or an oversized answer come back
        as a ``ToolResult`` with ``error`` (or a cut ``output``), for the loop to give to the model."""
        import mcp_types
        from mcp.shared.exceptions import MCPError

        limit = timeout if timeout is not None and math.isfinite(timeout) and timeout > 0 else server.timeout
        if not server.allows_tool(name):
            return ToolResult.failed(f"tool {shown(name)} is not allowed on MCP server {shown(server.label)}")

        async def call(entry: _Session) -> mcp_types.CallToolResult:
            return await _call(entry, name, arguments, limit)

        try:
            async with asyncio.timeout(limit + 1.0):  # the SDK's own read timeout answers first
                result = await self._with_session(server, call)
        except TimeoutError:
            return ToolResult.failed(f"tool {shown(name)} timed out after {limit:g} s")
        except (ToolUnavailable, _Broken, CallFailed) as exc:
            return ToolResult.failed(str(exc.args[0]) if exc.args else type(exc).__name__)
        except MCPError as exc:
            if exc.error.code == mcp_types.REQUEST_TIMEOUT:
                return ToolResult.failed(f"tool {shown(name)} timed out after {limit:g} s")
            return ToolResult.failed(f"MCP error {exc.error.code}: {exc.error.message}")
        except Exception as exc:  # the SDK's own failures: the model is told, the request goes on
            return ToolResult.failed(describe(exc))
        text = bounded_output(_text(result), self.max_output_bytes)
        if result.is_error:
            return ToolResult.failed(text or f"tool {shown(name)} failed")
        return ToolResult(text)

    async def aclose(self) -> None:
        """Close every session (each sends the server its session's end); no session opens afterwards."""
        self._closed = True
        sessions, self._sessions = list(self._sessions.values()), OrderedDict()
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)


async def _call(entry: _Session, name: str, arguments: dict[str, Any], limit: float) -> mcp_types.CallToolResult:
    if entry.calls is not None:
        try:
            return await entry.calls.call(name, arguments, limit)
        except NotLean:  # a redirect: the SDK follows the ones it may, for this session from now on
            entry.calls = None
    assert entry.session is not None
    return await entry.session.call_tool(name, arguments, read_timeout_seconds=limit)


def _text(result: mcp_types.CallToolResult) -> str:
    import mcp_types

    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        elif isinstance(block, mcp_types.EmbeddedResource) and isinstance(
            block.resource, mcp_types.TextResourceContents
        ):
            parts.append(block.resource.text)
        else:
            parts.append(f"[{block.type} content not shown]")
    if not parts and result.structured_content is not None:
        parts.append(orjson.dumps(result.structured_content, default=str).decode())
    return "\n".join(parts)


def _bounded_tool(tool: mcp_types.Tool) -> McpTool | None:
    name = tool.name
    if not (0 < len(name) <= 64) or not set(name) <= _NAME_CHARS:
        return None
    schema = tool.input_schema
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return None
    try:
        if len(orjson.dumps(schema)) > MAX_SCHEMA_BYTES:
            return None
    except TypeError:
        return None
    annotations = tool.annotations.model_dump(exclude_none=True, by_alias=True) if tool.annotations else None
    if annotations is not None and len(orjson.dumps(annotations, default=str)) > MAX_SCHEMA_BYTES:
        annotations = None
    return McpTool(
        name=name,
        description=bounded_text(tool.description or "", MAX_DESCRIPTION),
        input_schema=schema,
        annotations=annotations,
    )
