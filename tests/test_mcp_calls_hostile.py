"""The lean ``tools/call`` path (gateway.tools.mcp_calls) against a hostile MCP server: a raw HTTP server on
loopback that answers each call with what its path names. Every bad answer is the tool's error (``CallFailed``,
a bounded sentence for the model), never a crash; a forgotten session is ``SessionGone``; requests the server
makes during a call are answered as the SDK answers them without a handler."""

import asyncio
import ssl

import orjson
import pytest

from gateway.tools.mcp_calls import CallFailed, McpCalls, SessionGone
from gateway.tools.ssrf import AddressPolicy

LIMIT = 4096


def _http(status: str, kind: str, body: bytes) -> bytes:
    return f"HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body


def _sse(*messages: dict) -> bytes:
    return b"".join(b"event: message\r\ndata: " + orjson.dumps(m) + b"\r\n\r\n" for m in messages)


def answer(case: str, rid: str) -> bytes:
    ok = {"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": "fine"}]}}
    note = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}}
    ping = {"jsonrpc": "2.0", "id": 99, "method": "ping"}
    sampling = {"jsonrpc": "2.0", "id": 98, "method": "sampling/createMessage", "params": {}}
    return {
        "ok-json": _http("200 OK", "application/json", orjson.dumps(ok)),
        "ok-close": _http("200 OK", "application/json\r\nconnection: close", orjson.dumps(ok)),
        "ok-sse": _http("200 OK", "text/event-stream", _sse(note, ping, sampling, ok)),
        "not-json": _http("200 OK", "application/json", b"<html>not json</html>"),
        "wrong-id": _http("200 OK", "application/json", orjson.dumps({**ok, "id": "someone-else"})),
        "huge": _http("200 OK", "application/json", b'{"x": "' + b"a" * (LIMIT * 4) + b'"}'),
        "sse-no-answer": _http("200 OK", "text/event-stream", _sse(note)),
        "sse-not-rpc": _http("200 OK", "text/event-stream", b"data: [1, 2]\n\n"),
        "accepted": _http("202 Accepted", "application/json", b""),
        "rpc-error": _http(
            "500 Internal Server Error",
            "application/json",
            orjson.dumps({"jsonrpc": "2.0", "id": rid, "error": {"code": -32000, "message": "boom " + "x" * 2000}}),
        ),
        "bad-result": _http(
            "200 OK",
            "application/json",
            orjson.dumps({"jsonrpc": "2.0", "id": rid, "result": {"content": "not a list"}}),
        ),
        "not-http": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        "gone": _http("404 Not Found", "text/plain", b"no such session"),
        "html": _http("200 OK", "text/html", b"<p>hi</p>"),
    }[case]


class HostileServer:
    """Answers a tools/call by its path; records every other message POSTed (responses, notifications)."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> "HostileServer":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1].strip("/")
                length = next(int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length"))
                message = orjson.loads(await reader.readexactly(length))
                if message.get("method") == "tools/call":
                    writer.write(answer(path, message["id"]))
                else:
                    self.messages.append(message)
                    writer.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
                if path in ("ok-sse", "ok-close", "sse-no-answer", "not-http"):
                    break  # an event stream (or garbage) ends with the connection
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # (the client left, or the test ended with this connection idle)
        finally:
            writer.close()


def calls(port: int, case: str) -> McpCalls:
    return McpCalls(
        f"http://127.0.0.1:{port}/{case}",
        (("x-tenant", "t1"),),
        "session-1",
        "2025-06-18",
        AddressPolicy.from_entries(["127.0.0.1"]),
        2.0,
        LIMIT,
        ssl.create_default_context,
    )


@pytest.mark.parametrize("case", ["ok-json", "ok-sse"])
async def test_an_answer_as_json_or_as_events(case):
    async with HostileServer() as server:
        lean = calls(server.port, case)
        result = await lean.call("echo", {"text": "hi"}, timeout=10)
        await lean.aclose()
    assert result.content[0].text == "fine"
    if case == "ok-sse":  # the ping answered with an empty result, sampling refused as the SDK does
        answers = {m["id"]: m for m in server.messages}
        assert answers[99]["result"] == {}
        assert answers[98]["error"]["message"] == "Sampling not supported"


@pytest.mark.parametrize(("case", "connections"), [("ok-json", 1), ("ok-close", 4)])
async def test_a_connection_carries_the_next_call_unless_the_server_closes_it(case, connections):
    async with HostileServer() as server:
        lean = calls(server.port, case)
        for _ in range(4):
            assert (await lean.call("echo", {}, timeout=10)).content[0].text == "fine"
        await lean.aclose()
    assert server.connections == connections


@pytest.mark.parametrize(
    ("case", "said"),
    [
        ("not-json", "is not JSON"),
        ("wrong-id", "not this call's response"),
        ("huge", f"larger than {LIMIT} bytes"),
        ("sse-no-answer", "ended without an answer"),
        ("sse-not-rpc", "not a JSON-RPC message"),
        ("accepted", "202"),
        ("rpc-error", "MCP error -32000: boom"),
        ("bad-result", "not a tools/call result"),
        ("not-http", "not HTTP"),
        ("html", "content type 'text/html'"),
    ],
)
async def test_a_hostile_answer_is_the_tools_error(case, said):
    async with HostileServer() as server:
        lean = calls(server.port, case)
        with pytest.raises(CallFailed) as failed:
            await lean.call("echo", {}, timeout=10)
        await lean.aclose()
    assert said in str(failed.value)
    assert len(str(failed.value)) <= 1100  # bounded, whatever the server sent


async def test_a_forgotten_session_is_gone():
    async with HostileServer() as server:
        lean = calls(server.port, "gone")
        with pytest.raises(SessionGone):
            await lean.call("echo", {}, timeout=10)
        await lean.aclose()


async def test_a_timeout_tells_the_server():
    """A server that never answers: the call times out, and the server is sent notifications/cancelled."""
    hold = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(x.split(":")[1]) for x in head.decode().split("\r\n") if x.lower().startswith("content-length")
        )
        message = orjson.loads(await reader.readexactly(length))
        if message.get("method") == "tools/call":
            await hold.wait()
        else:
            seen.append(message)
            writer.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
        writer.close()

    seen: list[dict] = []
    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    lean = calls(server.sockets[0].getsockname()[1], "slow")
    try:
        with pytest.raises(TimeoutError):
            await lean.call("sleep", {}, timeout=0.2)
        await lean.aclose()  # waits for the cancellation notification (bounded)
        assert [m["method"] for m in seen] == ["notifications/cancelled"]
        assert seen[0]["params"]["requestId"].startswith("gw-")
    finally:
        hold.set()
        server.close()
        await server.wait_closed()
