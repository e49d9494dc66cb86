"""MCP servers for tests: the SDK's own server (``MCPServer``, formerly FastMCP) with tools that succeed, fail,
are slow or answer a lot, over streamable HTTP and SSE; a hostile server speaking raw JSON-RPC; and canaries
(a server answering every request with a redirect; the counting listener is ``tests.servers.Canary``)."""

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import orjson
from mcp.server.mcpserver import MCPServer
from mcp.server.sse import SseServerTransport
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route

from tests.servers import serve

BIG = 200 * 1024  # characters of the big tool's answer


def mcp_server() -> MCPServer:
    server = MCPServer("test-tools")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    @server.tool()
    def boom() -> str:
        """Always fails."""
        raise ValueError("kaput")

    @server.tool()
    async def slow(seconds: float = 30.0) -> str:
        """Sleeps, then answers."""
        await asyncio.sleep(seconds)
        return "woke up"

    @server.tool()
    def big() -> str:
        """A very large answer."""
        return "x" * BIG

    @server.tool()
    def secret() -> str:
        """Not allowed by the tests' allowed_tools."""
        return "secret"

    return server


class Recorder:
    """An ASGI app wrapped to record the MCP sessions its clients use: session ids seen, DELETEs (a client ending
    its session), and the headers of every request."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.session_ids: set[str] = set()
        self.deleted = 0
        self.headers: list[dict[str, str]] = []
        self.forgotten: set[str] = set()  # sessions answered 404: a server that restarted and lost them

    def forget_sessions(self) -> None:
        self.forgotten = set(self.session_ids)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            self.headers.append(headers)
            session = headers.get("mcp-session-id")
            if session:
                self.session_ids.add(session)
                if session in self.forgotten:
                    await Response(status_code=404)(scope, receive, send)
                    return
            if scope["method"] == "DELETE":
                self.deleted += 1
        await self.app(scope, receive, send)


def streamable_app(server: MCPServer) -> Any:
    """``server``'s streamable HTTP app answering each POST with JSON. In its SSE answer mode the SDK's server can
    end a POST's response before its body is whole under CPU load (the session's ``initialize`` then fails:
    modelcontextprotocol/python-sdk#3494), which made tests fail by timing; the gateway's client reads both."""
    return server.streamable_http_app(json_response=True)


@contextlib.contextmanager
def streamable_server() -> Iterator[tuple[str, Recorder]]:
    """The SDK's server over streamable HTTP on loopback: ``(url of /mcp, recorder)``."""
    recorder = Recorder(streamable_app(mcp_server()))
    with serve(recorder) as base:
        yield base + "/mcp", recorder


def sse_app(server: MCPServer) -> Starlette:
    """``server`` over the older SSE transport, built as the SDK's ``sse_app`` is but with the SSE endpoint a raw
    ASGI app: the SDK's wraps it as a Starlette function endpoint, which sends a second response start when the
    stream ends and can break the stream under load (modelcontextprotocol/python-sdk#883, #3381)."""
    sse = SseServerTransport("/messages/")
    lowlevel = server._lowlevel_server  # the SDK's own sse_app runs this one

    async def handle_sse(scope: Any, receive: Any, send: Any) -> None:
        async with sse.connect_sse(scope, receive, send) as (read, write):
            await lowlevel.run(read, write, lowlevel.create_initialization_options())

    return Starlette(
        routes=[
            Route("/sse", endpoint=_Raw(handle_sse), methods=["GET"]),
            Mount("/messages/", app=sse.handle_post_message),
        ]
    )


class _Raw:
    """An ASGI callable Starlette routes to as it is (an instance, not a function endpoint)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


@contextlib.contextmanager
def sse_server() -> Iterator[str]:
    """The SDK's server over the older SSE transport: the URL of its ``/sse`` endpoint."""
    with serve(sse_app(mcp_server()), lifespan=False) as base:
        yield base + "/sse"


def hostile_app(tools: list[dict[str, Any]], output: str = "") -> Starlette:
    """A raw JSON-RPC MCP server answering in JSON: it lists ``tools`` as given and answers every call with
    ``output``."""

    async def rpc(request: Request) -> Response:
        message = orjson.loads(await request.body())
        method, rid = message.get("method"), message.get("id")
        if rid is None:
            return Response(status_code=202)
        if method == "initialize":
            result: dict[str, Any] = {
                "protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "hostile", "version": "1"},
            }
            return JSONResponse({"jsonrpc": "2.0", "id": rid, "result": result}, headers={"mcp-session-id": "h1"})
        if method == "tools/list":
            result = {"tools": tools}
        elif method == "tools/call":
            result = {"content": [{"type": "text", "text": output}], "isError": False}
        else:
            result = {}
        return JSONResponse({"jsonrpc": "2.0", "id": rid, "result": result})

    async def end(request: Request) -> Response:
        return Response(status_code=200)

    return Starlette(routes=[Route("/mcp", rpc, methods=["POST"]), Route("/mcp", end, methods=["DELETE", "GET"])])


def redirect_app(target: str) -> Starlette:
    """Answers every request with a 302 to ``target``."""

    async def redirect(request: Request) -> Response:
        return RedirectResponse(target, status_code=302)

    return Starlette(routes=[Route("/{path:path}", redirect, methods=["GET", "POST", "DELETE"])])
