"""A minimal MCP server for the tool-loop benchmark: the streamable HTTP transport, just enough of it for the
gateway's client (the ``mcp`` SDK opens the session and lists the tools; the gateway's lean path makes the calls).

Why not the SDK's server: it costs about 1.1 ms of CPU per ``tools/call``, more than the gateway's whole round.
On two cores, with the load and the upstream beside it, it starves the gateway (measured: the gateway 60% busy
during the loop phase against 98% during the plain phase), and a half-idle event loop spends more CPU per
request (fewer events per wake-up), so the ratio measured the tool server, not the gateway. This one answers a
call in a few tens of microseconds, like the scripted upstream answers a model call.

One tool, ``add(a, b)``. ``initialize`` gives a session id; notifications are accepted (202); ``tools/list`` and
``tools/call`` are answered as one SSE event (``answers="sse"``, what the SDK's server sends by default) or as
JSON; GET (the server's own stream) is 405, which the SDK's client takes as "no stream"; DELETE ends the session.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

TOOL = {
    "name": "add",
    "description": "Add two numbers.",
    "inputSchema": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
}


class LightMcp:
    def __init__(self, answers: str = "sse") -> None:
        self.sse = answers == "sse"
        self.sessions: set[str] = set()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        method = scope["method"]
        if method == "GET":
            await _answer(send, 405, b"text/plain", b"no server stream")
        elif method == "DELETE":
            self.sessions.discard(_header(scope, b"mcp-session-id"))
            await _answer(send, 200, b"text/plain", b"")
        else:
            body = b""
            more = True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
            await self._post(scope, send, orjson.loads(body))

    async def _post(self, scope: dict, send: Any, message: dict) -> None:
        if "id" not in message:  # a notification (initialized, cancelled)
            await _answer(send, 202, b"text/plain", b"")
            return
        extra: list[tuple[bytes, bytes]] = []
        kind = message.get("method")
        if kind == "initialize":
            session = uuid.uuid4().hex
            self.sessions.add(session)
            extra.append((b"mcp-session-id", session.encode()))
            result: dict = {
                "protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {"listChanged": False}},
                "serverInfo": {"name": "bench", "version": "1"},
            }
        elif _header(scope, b"mcp-session-id") not in self.sessions:
            await _answer(send, 404, b"text/plain", b"no such session")
            return
        elif kind == "tools/list":
            result = {"tools": [TOOL]}
        elif kind == "tools/call":
            arguments = message["params"].get("arguments") or {}
            total = int(arguments.get("a", 0)) + int(arguments.get("b", 0))
            result = {"content": [{"type": "text", "text": str(total)}], "structuredContent": {"result": total}}
        else:
            result = {}
        reply = orjson.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result})
        if self.sse:
            await _answer(send, 200, b"text/event-stream", b"event: message\r\ndata: " + reply + b"\r\n\r\n", extra)
        else:
            await _answer(send, 200, b"application/json", reply, extra)


def _header(scope: dict, name: bytes) -> str:
    return next((v.decode("latin-1") for k, v in scope["headers"] if k == name), "")


async def _answer(send: Any, status: int, kind: bytes, body: bytes, extra: list | None = None) -> None:
    headers = [(b"content-type", kind), (b"content-length", b"%d" % len(body)), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
