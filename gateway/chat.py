"""Chat Completions through the gateway: the provider call and the answer to the client, whole or streamed.

Non-streaming answers are read whole and sent as one body (no per-response task). Streams are relayed in
whole SSE events while a watcher notes usage; a client that disconnects cancels the upstream read at once.
"""

from collections.abc import AsyncIterator
from typing import Any

from starlette.types import Receive, Send

from gateway.context import RequestContext, Usage
from gateway.disconnect import aclose, cancel_on_disconnect
from gateway.errors import JSON_HEADERS, ShuttingDown, UpstreamError, redact_secret_bytes
from gateway.http import SSE_HEADERS, send_bytes
from gateway.inflight import InFlight
from gateway.runtime import Gateway
from gateway.sse import ChatStreamWatcher, error_event
from gateway.targets import target_model
from gateway.upstream import credential, upstream_json


def upstream_body(ctx: RequestContext) -> dict[str, Any]:
    """The caller's body; for streams, usage is always requested (the dispatcher sets each deployment's model)."""
    if not ctx.stream:
        return ctx.body
    body = dict(ctx.body)
    options = body.get("stream_options")
    body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return body


async def complete(gw: Gateway, ctx: RequestContext, send: Send, receive: Receive) -> None:
    """One non-streaming completion, answered with the upstream's bytes."""
    model = target_model(ctx)
    async with cancel_on_disconnect(receive, ctx) as finished:
        deployment, data = await gw.dispatcher.chat(model, upstream_body(ctx))
        answer = upstream_json(data)
        if "error" in answer:  # a 200 carrying an error may echo the key the upstream was sent
            data = redact_secret_bytes(data, credential(deployment))
        ctx.count(Usage.from_chat(answer.get("usage")))
        if ctx.trace is not None:
            ctx.trace.answered(answer)
        ctx.status_code = 200
        finished.set()
        await send_bytes(send, 200, ctx.answer_headers(JSON_HEADERS), data)


async def stream(gw: Gateway, ctx: RequestContext, send: Send, receive: Receive) -> None:
    """One streamed completion. Failures before the first upstream chunk (after retries and fallbacks) raise
    a normal error answer; failures after it end the stream with an error event and no ``[DONE]``."""
    model = target_model(ctx)
    wants_usage = bool((ctx.body.get("stream_options") or {}).get("include_usage"))
    if ctx.trace is not None:
        send = ctx.trace.watch_stream(send)
    async with cancel_on_disconnect(receive, ctx) as finished:
        deployment, (upstream, chunks, first) = await gw.dispatcher.stream(model, upstream_body(ctx))
        ctx.mark_first_token()
        watcher = ChatStreamWatcher(forward_usage=wants_usage, secret=credential(deployment))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": ctx.answer_headers(SSE_HEADERS)})
            ctx.status_code = 200
            await _relay(ctx, send, watcher, (first, chunks), gw.inflight)
            finished.set()
            tail = watcher.finish()
            if not watcher.done and ctx.outcome == "pending":
                ctx.outcome = "upstream_error"
                tail += error_event("The upstream stream ended before completion.", "upstream_stream_cut")
            ctx.count(watcher.usage)  # before the last message: the after phase may run as it passes
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        finally:
            if ctx.usage is not watcher.usage:  # ended early (an error, a disconnect): the partial usage
                ctx.count(watcher.usage)
            await aclose(chunks)
            await upstream.close()


async def _relay(
    ctx: RequestContext,
    send: Send,
    watcher: ChatStreamWatcher,
    upstream: tuple[bytes, AsyncIterator[bytes]],
    inflight: InFlight,
) -> None:
    """Forward whole events; an upstream failure or a shutdown mid-stream ends it with an error event."""
    first, chunks = upstream
    out = watcher.feed(first)
    try:
        with inflight.interruptible():
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
            async for chunk in chunks:
                out = watcher.feed(chunk)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
    except (UpstreamError, ShuttingDown) as exc:
        stopped = isinstance(exc, ShuttingDown)
        ctx.outcome, ctx.error = "interrupted" if stopped else "upstream_error", exc
        kind = exc.error_type if stopped else "upstream_error"
        rest = watcher.finish() + error_event(exc.message, exc.code or "upstream_error", kind)
        await send({"type": "http.response.body", "body": rest, "more_body": True})
