"""A very fast loopback OpenAI-compatible upstream for the benchmarks.

Raw asyncio protocol on uvloop with the httptools parser: no framework, no per-request allocation beyond
parsing the JSON body, answers prebuilt. It must be much faster than any proxy put in front of it, so that
the proxy, not the upstream, is what a benchmark measures.

    POST /v1/chat/completions   non-streaming: a fixed small `chat.completion` with `usage`
                                `"stream": true`: N `chat.completion.chunk` SSE events, then a usage chunk
                                (`"choices": []`) if `stream_options.include_usage` is true, then `[DONE]`
    GET  /health                200 `ok`

HTTP/1.1 keep-alive; streamed answers use chunked transfer encoding, one HTTP chunk per SSE event.
Run: python benchmarks/mock_upstream.py --port 18000 [--chunks 20] [--chunk-delay-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys

import httptools

try:
    import uvloop
except ImportError:  # pragma: no cover - the harness always has it
    uvloop = None

CREATED = 1_700_000_000
MODEL = "mock-model"
USAGE = {"prompt_tokens": 9, "completion_tokens": 20, "total_tokens": 29}


def _json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def build_completion() -> bytes:
    return _json(
        {
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": CREATED,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello! This is the mock upstream."},
                    "finish_reason": "stop",
                }
            ],
            "usage": USAGE,
        }
    )


def _chunk(delta: dict, finish_reason: str | None) -> dict:
    return {
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def build_events(chunks: int, include_usage: bool) -> list[bytes]:
    """The SSE events of one streamed answer, each already framed as one HTTP/1.1 chunk."""
    events = []
    for i in range(chunks):
        last = i == chunks - 1
        delta: dict = {"role": "assistant"} if i == 0 else {}
        delta["content"] = f"tok{i}" if last else f"tok{i} "
        events.append(_json(_chunk(delta, "stop" if last else None)))
    if include_usage:
        events.append(
            _json(
                {
                    "id": "chatcmpl-mock",
                    "object": "chat.completion.chunk",
                    "created": CREATED,
                    "model": MODEL,
                    "choices": [],
                    "usage": {**USAGE, "completion_tokens": chunks, "total_tokens": 9 + chunks},
                }
            )
        )
    framed = []
    for payload in [*events, b"[DONE]"]:
        data = b"data: " + payload + b"\n\n"
        framed.append(b"%x\r\n%s\r\n" % (len(data), data))
    return framed


class Answers:
    def __init__(self, chunks: int) -> None:
        body = build_completion()
        self.completion = (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        self.completion_close = self.completion.replace(
            b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1
        )
        head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        self.stream_head = head
        self.stream_head_close = head.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1)
        self.events = {False: build_events(chunks, False), True: build_events(chunks, True)}
        self.stream_whole = {k: b"".join(v) + b"0\r\n\r\n" for k, v in self.events.items()}
        self.ok = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"
        self.not_found = b"HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: 9\r\n\r\nnot found"
        bad = b'{"error":{"message":"invalid JSON body","type":"invalid_request_error"}}'
        self.bad_request = (
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (len(bad), bad)
        )


class MockProtocol(asyncio.Protocol):
    __slots__ = ("answers", "delay", "transport", "parser", "url", "body", "busy", "queue")

    def __init__(self, answers: Answers, delay: float) -> None:
        self.answers = answers
        self.delay = delay
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.busy = False  # a delayed stream is being written: answers to pipelined requests wait
        self.queue: list[tuple[bytes, bytes, bytes, bool]] = []

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(self.answers.bad_request.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1))
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        keep_alive = self.parser.should_keep_alive()
        request = (method, self.url, b"".join(self.body), keep_alive)
        if self.busy:
            self.queue.append(request)
        else:
            self.handle(*request)

    # answers
    def handle(self, method: bytes, url: bytes, body: bytes, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None:
            return
        a = self.answers
        path = url.split(b"?", 1)[0]
        if method == b"POST" and path.endswith(b"/chat/completions"):
            try:
                req = json.loads(body)
            except ValueError:
                req = None
            if not isinstance(req, dict):
                transport.write(a.bad_request)
            elif req.get("stream") is True:
                opts = req.get("stream_options")
                usage = isinstance(opts, dict) and opts.get("include_usage") is True
                if self.delay > 0:
                    self.busy = True
                    transport.write(a.stream_head if keep_alive else a.stream_head_close)
                    asyncio.get_running_loop().create_task(self.stream_slowly(usage, keep_alive))
                    return
                transport.write((a.stream_head if keep_alive else a.stream_head_close) + a.stream_whole[usage])
            else:
                transport.write(a.completion if keep_alive else a.completion_close)
        elif method == b"GET" and path in (b"/health", b"/healthz"):
            transport.write(a.ok)
        else:
            transport.write(a.not_found)
        if not keep_alive:
            transport.close()

    async def stream_slowly(self, usage: bool, keep_alive: bool) -> None:
        for event in self.answers.events[usage]:
            await asyncio.sleep(self.delay)
            if self.transport is None:
                return
            self.transport.write(event)
        if self.transport is None:
            return
        self.transport.write(b"0\r\n\r\n")
        if not keep_alive:
            self.transport.close()
            return
        self.busy = False
        while self.queue and not self.busy:
            self.handle(*self.queue.pop(0))


async def serve(host: str, port: int, chunks: int, delay_ms: float) -> None:
    loop = asyncio.get_running_loop()
    answers = Answers(chunks)
    delay = delay_ms / 1000.0
    server = await loop.create_server(
        lambda: MockProtocol(answers, delay), host, port, reuse_address=True, backlog=4096
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"mock upstream listening on http://{host}:{port} (pid {os.getpid()})", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18000)
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per streamed answer")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="sleep before each SSE event")
    args = parser.parse_args(argv)
    factory = uvloop.new_event_loop if uvloop is not None else None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args.host, args.port, args.chunks, args.chunk_delay_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
