"""MCP servers for tests: the SDK's own server (``MCPServer``, formerly FastMCP) with tools that succeed, fail,
are slow or answer a lot, over streamable HTTP and SSE; a hostile server speaking raw JSON-RPC; and canaries
(a server answering every request with a redirect; the counting listener is ``tests.servers.Canary``)."""

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import orjson
from mcp.server.mcpserver import MCPServer
from sse_starlette.sse import AppStatus
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

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
    its session), the headers of every request and the params of every ``tools/call``."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.session_ids: set[str] = set()
        self.deleted = 0
        self.headers: list[dict[str, str]] = []
        self.forgotten: set[str] = set()  # sessions answered 404: a server that restarted and lost them
        self.calls: list[dict[str, Any]] = []

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
            if scope["method"] == "POST":
                receive = self._reading(receive)
        await self.app(scope, receive, send)

    def _reading(self, receive: Any) -> Any:
        body = bytearray()

        async def read() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
                if not message.get("more_body"):
                    sent = orjson.loads(body)
                    if isinstance(sent, dict) and sent.get("method") == "tools/call":
                        self.calls.append(sent["params"])
            return message

        return read


def fresh_sse(app: Any) -> Any:
    """``app`` (an SDK server's), its SSE streams freed from an earlier test's shutdown. sse-starlette, which the
    SDK's servers answer SSE with, replaces uvicorn's ``Server.handle_exit`` with one that sets a process-wide
    "should exit" flag, and from then on ends every SSE stream of the process at once: a test that stops a server
    through ``handle_exit`` in this process (test_drain) left it set, and every MCP session after it broke (an
    ``initialize`` or a listing answered with a cut stream), depending on which tests ran first."""
    AppStatus.should_exit = False
    return app


def streamable_app(server: MCPServer) -> Any:
    """``server``'s streamable HTTP app (answering POSTs with SSE, the SDK's default)."""
    return fresh_sse(server.streamable_http_app())


@contextlib.contextmanager
def streamable_server() -> Iterator[tuple[str, Recorder]]:
    """The SDK's server over streamable HTTP on loopback: ``(url of /mcp, recorder)``."""
    recorder = Recorder(streamable_app(mcp_server()))
    with serve(recorder) as base:
        yield base + "/mcp", recorder


@contextlib.contextmanager
def sse_server() -> Iterator[str]:
    """The SDK's server over the older SSE transport: the URL of its ``/sse`` endpoint."""
    with serve(fresh_sse(mcp_server().sse_app()), lifespan=False) as base:
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
