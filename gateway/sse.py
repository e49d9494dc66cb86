"""Watching a Chat Completions SSE stream on its way through without re-encoding it.

Bytes are forwarded in whole events; only an event that carries a non-null ``usage`` object is parsed.
The gateway always asks the upstream for usage (``stream_options.include_usage``); when the caller did not,
the usage-only chunk is dropped so the caller sees exactly the stream it asked for. Events that carry an
``"error"`` (upstreams echo the key they were sent in "invalid key" errors) have the deployment's key redacted;
other events are not looked at for it.
"""

import re
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.context import Usage
from gateway.errors import UpstreamError, redact_secret_bytes
from gateway.upstream import upstream_json

_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_DONE = b"[DONE]"
_ERROR = b'"error"'  # a JSON key or value (inside a JSON string its quotes are escaped); find() beats `in` here


def format_sse(event: dict[str, Any]) -> bytes:
    """One Responses SSE frame: ``id`` is the sequence number (so Last-Event-ID and starting_after agree)."""
    head = f"id: {event['sequence_number']}\nevent: {event['type']}\ndata: ".encode()
    return head + orjson.dumps(event) + b"\n\n"


def responses_error_event(message: str, code: str | None) -> bytes:
    """A Responses ``error`` event that is not one of the response's own events (no ``id``, no sequence number):
    it ends one client's stream, not the response, so resuming with Last-Event-ID elsewhere still works."""
    body = {"type": "error", "code": code, "message": message, "param": None}
    return b"event: error\ndata: " + orjson.dumps(body) + b"\n\n"


def error_event(message: str, code: str | None, error_type: str = "upstream_error") -> bytes:
    """The last event of a stream cut by a failure: an error object and no ``[DONE]``."""
    body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return b"data: " + orjson.dumps(body) + b"\n\n"


class ChatStreamWatcher:
    """Feed upstream bytes in, get whole events out; records usage and whether ``[DONE]`` arrived."""

    __slots__ = ("pending", "usage", "done", "forward_usage", "secret")

    def __init__(self, forward_usage: bool, secret: str | None = None) -> None:
        self.pending = b""
        self.usage: Usage | None = None
        self.done = False
        self.forward_usage = forward_usage
        self.secret = secret or None  # the deployment's key: redacted from events that carry an error

    def feed(self, chunk: bytes) -> bytes:
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
        data = self.pending + chunk if self.pending else chunk
        cut = data.rfind(b"\n\n")
        if cut < 0:
            self.pending = data
            return b""
        out, self.pending = data[: cut + 2], data[cut + 2 :]
        if _USAGE.search(out) is not None:
            out = self._take_usage(out)
        if self.secret is not None and out.find(_ERROR) >= 0:
            out = redact_secret_bytes(out, self.secret)
        if _DONE in out:
            self.done = True
        return out

    def finish(self) -> bytes:
        """Whatever is left when the upstream closes (an unterminated last event)."""
        out, self.pending = self.pending, b""
        if self.secret is not None and out.find(_ERROR) >= 0:
            out = redact_secret_bytes(out, self.secret)
        if _DONE in out:
            self.done = True
        return out

    def _take_usage(self, out: bytes) -> bytes:
        kept = []
        for event in out.split(b"\n\n"):
            if event and _USAGE.search(event) is not None:
                data = _event_json(event)
                if data is not None:
                    self.usage = Usage.from_chat(data.get("usage")) or self.usage
                    if not self.forward_usage and not data.get("choices"):
                        continue
            kept.append(event)
        return b"\n\n".join(kept)


def event_data(event: bytes) -> bytes:
    """The ``data`` of one SSE event (its ``data:`` lines joined)."""
    return b"\n".join(line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:"))


def event_name(event: bytes) -> bytes:
    """The ``event`` field of one SSE event, ``message`` when it has none."""
    for line in event.split(b"\n"):
        if line.startswith(b"event:"):
            return line[6:].strip()
    return b"message"


def _event_json(event: bytes) -> dict[str, Any] | None:
    payload = event_data(event)
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


async def iter_sse_batches(
    first: bytes, chunks: AsyncIterator[bytes], until_done: bool = False
) -> AsyncIterator[list[dict[str, Any]]]:
    """The ``data`` of the SSE events of each network read, parsed as JSON objects (for streams the gateway
    must translate); batching per read lets the caller answer with one write per read, not one per event.

    Comments and empty events are skipped; ``[DONE]`` ends the iteration; data that is not a JSON object
    raises ``UpstreamError`` (code ``upstream_malformed``). With ``until_done`` (Chat Completions streams), an
    upstream that stops before ``[DONE]`` raises ``UpstreamError`` (code ``upstream_stream_cut``)."""
    pending = b""
    chunk: bytes | None = first
    while chunk is not None:
        pending += chunk.replace(b"\r\n", b"\n") if b"\r" in chunk else chunk
        *events, pending = pending.split(b"\n\n")
        batch: list[dict[str, Any]] = []
        for event in events:
            payload = event_data(event)
            if not payload:
                continue
            if payload == _DONE:
                if batch:
                    yield batch
                return
            batch.append(upstream_json(payload, "a stream event"))
        if batch:
            yield batch
        chunk = await anext(chunks, None)
    tail = pending.strip()
    if tail.startswith(b"data:") and _DONE not in tail:
        yield [upstream_json(tail[5:].lstrip(), "a stream event")]
    elif _DONE in tail:
        return
    if until_done:
        raise UpstreamError("The upstream stream ended before completion.", code="upstream_stream_cut")
