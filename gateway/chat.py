"""Chat Completions through the gateway: the provider call and the answer to the client, whole or streamed.

Non-streaming answers are read whole and sent as one body (no per-response task). Streams are relayed in
whole SSE events while a watcher notes usage; a client that disconnects cancels the upstream read at once.
"""

import asyncio
from typing import Any

import orjson
from starlette.types import Receive, Send

from gateway.context import RequestContext, Usage
from gateway.errors import UpstreamError
from gateway.http import Headers, send_bytes
from gateway.runtime import Gateway
from gateway.sse import ChatStreamWatcher, error_event

SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def response_headers(ctx: RequestContext, base: Headers) -> Headers:
    return [*base, (b"x-request-id", ctx.request_id.encode("latin-1"))]


def upstream_body(ctx: RequestContext) -> dict[str, Any]:
    """The caller's body with the upstream model name and, for streams, usage always requested."""
    assert ctx.model is not None
    body = dict(ctx.body)
    body["model"] = ctx.model.deployment.model
    if ctx.stream:
        options = body.get("stream_options")
        body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return body


async def complete(gw: Gateway, ctx: RequestContext, send: Send) -> None:
    """One non-streaming completion, answered with the upstream's bytes."""
    provider = gw.provider(ctx)
    data = await provider.chat(ctx.model, upstream_body(ctx))  # type: ignore[arg-type]
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamError("Upstream answered with malformed JSON.", code="upstream_malformed") from None
    ctx.usage = Usage.from_chat(parsed.get("usage")) if isinstance(parsed, dict) else None
    ctx.status_code = 200
    await send_bytes(send, 200, response_headers(ctx, [(b"content-type", b"application/json")]), data)


async def stream(gw: Gateway, ctx: RequestContext, send: Send, receive: Receive) -> None:
    """One streamed completion. Upstream refusals raise before the first byte (a normal error answer);
    failures after it end the stream with an error event and no ``[DONE]``."""
    provider = gw.provider(ctx)
    wants_usage = bool((ctx.body.get("stream_options") or {}).get("include_usage"))
    upstream = await provider.open_stream(ctx.model, upstream_body(ctx))  # type: ignore[arg-type]
    watcher = ChatStreamWatcher(forward_usage=wants_usage)
    try:
        await send({"type": "http.response.start", "status": 200, "headers": response_headers(ctx, SSE_HEADERS)})
        ctx.status_code = 200
        async with _cancel_on_disconnect(receive, ctx) as finished:
            try:
                async for chunk in upstream:
                    out = watcher.feed(chunk)
                    if out:
                        await send({"type": "http.response.body", "body": out, "more_body": True})
                tail = watcher.finish()
                if not watcher.done:
                    ctx.outcome = "upstream_error"
                    tail += error_event("The upstream stream ended before completion.", "upstream_stream_cut")
            except UpstreamError as exc:
                ctx.outcome, ctx.error = "upstream_error", exc
                tail = watcher.finish() + error_event(exc.message, exc.code or "upstream_error")
            finished.set()
            await send({"type": "http.response.body", "body": tail, "more_body": False})
    finally:
        ctx.usage = watcher.usage
        await upstream.close()


class _cancel_on_disconnect:
    """While active, a client disconnect cancels the current task (and so the upstream read); the
    cancellation is absorbed on exit and the request's outcome becomes ``disconnected``. Set the yielded
    event before the last send, so a disconnect after it changes nothing."""

    def __init__(self, receive: Receive, ctx: RequestContext) -> None:
        self.receive = receive
        self.ctx = ctx
        self.finished = asyncio.Event()
        self.disconnected = False

    async def _watch(self, task: asyncio.Task[Any]) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                if not self.finished.is_set():
                    self.disconnected = True
                    task.cancel()
                return

    async def __aenter__(self) -> asyncio.Event:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._watcher = asyncio.ensure_future(self._watch(task))
        return self.finished

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self._watcher.cancel()
        if self.disconnected and exc_type is asyncio.CancelledError:
            self._task.uncancel()
            self.ctx.outcome = "disconnected"
            return True
        return False
