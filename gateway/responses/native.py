"""Deployments that speak ``/v1/responses`` themselves (``api: responses``): the request goes out with the
conversation inlined and ``store: false`` (the gateway keeps the state), and the answer is re-homed under the
gateway's response id, model alias and sequence numbers."""

from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

import orjson

from config.deployments import Deployment
from gateway.disconnect import aclose
from gateway.errors import ShuttingDown, UpstreamError, redact_secret_bytes
from gateway.inflight import InFlight
from gateway.responses.events import TERMINAL_EVENTS
from gateway.responses.mcp_items import plain_items
from gateway.sse import iter_sse_batches

if TYPE_CHECKING:
    from gateway.dispatch import Opened
    from gateway.responses.engine import Turn

JSON = dict[str, Any]

_GATEWAY_ONLY = (
    "previous_response_id",
    "conversation",
    "background",
    "x_context",
    "context",
    "tool_mode",
    "idempotency_key",
    "aimable",
    "store",
    "metadata",
)
_ERROR_EVENTS = frozenset({"error", "response.failed"})
_UPSTREAM_FIELDS = ("output", "usage", "status", "incomplete_details", "error", "completed_at")


def upstream_body(turn: "Turn", dep: Deployment, stream: bool) -> JSON:
    body = {k: v for k, v in turn.request.items() if k not in _GATEWAY_ONLY}
    history = [
        {k: v for k, v in item.items() if k not in ("id", "metadata")} if item.get("type") != "reasoning" else item
        for item in plain_items(turn.history)
    ]
    upstream_input = plain_items(turn.upstream_input)
    body.update(model=dep.model, input=[*history, *upstream_input], store=False, stream=stream)
    return body


def merge_response(shell: JSON, upstream: JSON) -> JSON:
    """The upstream's answer under the gateway's shell (id, model alias, echoed request)."""
    merged = {**shell, **{k: upstream[k] for k in _UPSTREAM_FIELDS if k in upstream}}
    usage = merged.get("usage")
    if isinstance(usage, dict):  # every detail key present, as OpenAI's schema requires
        merged["usage"] = {
            "input_tokens": 0,
            "output_tokens": 0,
            "total_tokens": 0,
            **usage,
            "input_tokens_details": {
                "cached_tokens": 0,
                "cache_write_tokens": 0,
                **(usage.get("input_tokens_details") or {}),
            },
            "output_tokens_details": {"reasoning_tokens": 0, **(usage.get("output_tokens_details") or {})},
        }
    return merged


async def relay_events(
    shell: JSON, opened: "Opened", secret: str | None, inflight: InFlight
) -> AsyncGenerator[list[JSON], None]:
    """The upstream's events in batches, renumbered from 0, lifecycle events carrying the gateway's response;
    error events (``error``, ``response.failed``) without the deployment's key."""
    stream, chunks, first = opened
    sequence = 0
    latest = dict(shell)
    terminal = False
    try:
        try:
            with inflight.interruptible():
                async for batch in iter_sse_batches(first, chunks):
                    out = []
                    for event in batch:
                        if secret and event.get("type") in _ERROR_EVENTS:
                            event = orjson.loads(redact_secret_bytes(orjson.dumps(event), secret))
                        if isinstance(event.get("response"), dict):
                            latest = merge_response(shell, event["response"])
                            event = {**event, "response": latest}
                        terminal = event.get("type") in TERMINAL_EVENTS
                        out.append({**event, "sequence_number": sequence})
                        sequence += 1
                    yield out
        except (UpstreamError, ShuttingDown) as exc:
            message = exc.message
        else:
            message = "The upstream stream ended before completion."
        if not terminal:
            failed = {**latest, "status": "failed", "error": {"code": "server_error", "message": message}}
            yield [{"type": "response.failed", "sequence_number": sequence, "response": failed}]
    finally:
        await aclose(chunks)
        await stream.close()
