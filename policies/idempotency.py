"""idempotency: ``Idempotency-Key`` on the POST routes that create something (IETF draft semantics).

A request with a key claims it atomically (a script that claims the key or returns the record already there,
run as a step of the chain's store round trip). Its answer (status, headers and body, or the SSE bytes of a
stream) is captured on its way out and stored in ``after`` for ``ttl_seconds``; a retry with the same key
and body replays it with ``Idempotent-Replayed: true``, errors included. A 5xx, a stream broken by the
upstream, a client disconnect, a cancellation or an exception releases the claim instead, so a retry runs
again (a crash is covered by the claim's TTL). A retry while the first is in flight gets 409
``Retry-After: 1``; the same key with another body 422. A request without a key passes untouched, at no
store cost.

Scope: (tenant, space, principal, route). Fingerprint: method, route and the canonical body (the native body
field ``idempotency_key``, which counts as the header, left out). On a replayed Responses stream,
``Last-Event-ID: N`` keeps only the events after N.
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field
from starlette.types import Message, Send

from gateway import (
    IdempotencyRecords,
    InvalidRequest,
    Policy,
    PolicyParams,
    Reply,
    RequestContext,
    Store,
    StoreStep,
    StoreUnavailable,
    fingerprint,
    parse_key,
    record_key,
    replay_of,
)

log = logging.getLogger("policies.idempotency")

_STATE = "idempotency.capture"  # ctx.extras key of the request's claim and captured answer
_STORED_OUTCOMES = frozenset({"ok", "rejected", "upstream_error"})
_FRAMING_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection"})
_FAILED_EVENTS = (b"event: response.failed\n", b"event: error\n")


@dataclass(slots=True)
class _Capture:
    """One claimed key and the answer as it went out."""

    records: IdempotencyRecords
    rkey: str
    fp: str
    owner: str
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    event_stream: bool = False
    failed: bool = False  # an event stream that ended in response.failed or error
    complete: bool = False  # the last body message went out
    claimed: bool = False  # the claim step ran and this request holds the key
    stored: bool = False

    def start(self, message: Message) -> None:
        if self.status is not None:  # an error after the answer had started: nothing coherent to replay
            self.status = 500
            return
        self.status = int(message["status"])
        self.headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in _FRAMING_HEADERS]
        self.event_stream = any(
            k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in self.headers
        )

    def body(self, message: Message) -> None:
        chunk = message.get("body", b"")
        if chunk:
            self.chunks.append(chunk)
            if self.event_stream and any(marker in chunk for marker in _FAILED_EVENTS):
                self.failed = True
        if not message.get("more_body", False):
            self.complete = True

    def reply(self) -> Reply:
        assert self.status is not None
        return Reply(self.status, b"".join(self.chunks), self.headers)


class Idempotency(Policy):
    """Replays the first answer to a retried request with the same ``Idempotency-Key``; see the module doc."""

    name = "idempotency"

    class Params(PolicyParams):
        ttl_seconds: int = Field(24 * 3600, gt=0, description="how long a finished answer is kept for replay")
        claim_ttl_seconds: int = Field(300, gt=0, description="how long a claim outlives a crashed holder")
        on_store_error: Literal["closed", "open"] = "closed"

    def __init__(self, params: PolicyParams) -> None:
        super().__init__(params)
        assert isinstance(params, Idempotency.Params)
        self.config = params
        self._records: IdempotencyRecords | None = None

    def records(self, store: Store) -> IdempotencyRecords:
        """The records of ``store`` (its scripts registered once; a chain belongs to one app, so one store)."""
        records = self._records
        if records is None or records.store is not store:
            records = self._records = IdempotencyRecords(store, self.config.ttl_seconds, self.config.claim_ttl_seconds)
        return records

    async def before(self, ctx: RequestContext) -> Reply | StoreStep | None:
        key = request_key(ctx)
        if key is None:
            return None
        records = self.records(ctx.store)
        rkey = record_key((ctx.tenant_id, ctx.space_id, ctx.principal.id, ctx.route), key)
        fp = fingerprint("POST", ctx.route, fingerprinted_body(ctx.body))
        capture = ctx.extras[_STATE] = _Capture(records, rkey, fp, os.urandom(8).hex())
        script, keys, args = records.claim_call(rkey, fp, capture.owner)
        skip = None if self.config.on_store_error == "closed" else _skipped  # None: fail closed (503)
        return StoreStep(script, keys, args, then=self.claimed, unavailable=skip)

    async def claimed(self, ctx: RequestContext, record: Any) -> Reply | None:
        """The claim's result: None when this request now holds the key, else the record already there."""
        capture: _Capture = ctx.extras[_STATE]
        if record is None:
            capture.claimed = True
            return None
        del ctx.extras[_STATE]
        return resumed(ctx, replay_of(record, capture.fp))  # or 409 in flight, 422 another body

    def wrap_send(self, ctx: RequestContext, send: Send) -> Send:
        capture = ctx.extras.get(_STATE)
        if not isinstance(capture, _Capture) or not capture.claimed:
            return send
        # a background response answers (queued) long before the request ends: store that answer at once
        early = ctx.body.get("background") is True and not ctx.stream

        async def capturing(message: Message) -> None:
            if message["type"] == "http.response.start":
                capture.start(message)
            elif message["type"] == "http.response.body":
                capture.body(message)
            await send(message)
            if early and capture.complete and not capture.stored and _storable(ctx, capture, early=True):
                await _store(capture)

        return capturing

    async def after(self, ctx: RequestContext) -> StoreStep | None:
        capture = ctx.extras.pop(_STATE, None)
        if not isinstance(capture, _Capture) or not capture.claimed or capture.stored:
            return None
        if _storable(ctx, capture):
            script, keys, args = capture.records.complete_call(capture.rkey, capture.fp, capture.reply())
            return StoreStep(script, keys, args, unavailable=_not_stored)
        script, keys, args = capture.records.release_call(capture.rkey, capture.fp, capture.owner)
        return StoreStep(script, keys, args, unavailable=_not_released)


def _skipped(ctx: RequestContext, error: StoreUnavailable) -> None:
    log.warning("idempotency skipped for request %s: the store is unreachable", ctx.request_id)


def _not_stored(ctx: RequestContext, error: StoreUnavailable) -> None:
    log.warning("idempotency answer of request %s not stored (store unreachable): it expires", ctx.request_id)


def _not_released(ctx: RequestContext, error: StoreUnavailable) -> None:
    log.warning("idempotency claim of request %s not released (store unreachable): it expires", ctx.request_id)


def request_key(ctx: RequestContext) -> str | None:
    """The route's effective key (the native body field ``idempotency_key``), else the ``Idempotency-Key``."""
    key: Any = ctx.extras.get("idempotency_key")
    if key is None:
        return parse_key(ctx.headers.get(b"idempotency-key"))
    if not isinstance(key, str):
        raise InvalidRequest("'idempotency_key' must be a string.", param="idempotency_key", input=key)
    return parse_key(key)


def fingerprinted_body(body: dict[str, Any]) -> dict[str, Any]:
    """The body without ``idempotency_key``: a key sent in the body or in the header is the same request."""
    if "idempotency_key" not in body:
        return body
    return {k: v for k, v in body.items() if k != "idempotency_key"}


def _storable(ctx: RequestContext, capture: _Capture, early: bool = False) -> bool:
    """A complete answer that is not a server failure: a 5xx or a stream the upstream broke runs again."""
    status = capture.status
    if status is None or not capture.complete or status >= 500:
        return False
    if not early and ctx.outcome not in _STORED_OUTCOMES:
        return False
    return not (status < 300 and (ctx.outcome == "upstream_error" or capture.failed))


async def _store(capture: _Capture) -> None:
    try:
        await capture.records.complete(capture.rkey, capture.fp, capture.reply())
        capture.stored = True
    except StoreUnavailable:
        log.warning("idempotency answer for %s not stored (store unreachable): it expires on its own", capture.rkey)


def resumed(ctx: RequestContext, reply: Reply) -> Reply:
    """A replayed event stream with ``Last-Event-ID: N`` keeps only the events after N."""
    raw = ctx.header("last-event-id")
    if raw is None or not any(k == b"content-type" and v.startswith(b"text/event-stream") for k, v in reply.headers):
        return reply
    try:
        last = int(raw.strip())
    except ValueError:
        return reply  # not one of our ids: the whole stream
    return Reply(reply.status, events_after(reply.body, last), reply.headers)


def events_after(body: bytes, last: int) -> bytes:
    """The SSE frames whose ``id:`` is above ``last``, byte for byte; a stream without ids is returned whole."""
    kept: list[bytes] = []
    has_ids = False
    for frame in body.split(b"\n\n"):
        if not frame.startswith(b"id:"):
            continue
        has_ids = True
        line, _, _ = frame.partition(b"\n")
        try:
            number = int(line[3:].strip())
        except ValueError:
            continue
        if number > last:
            kept.append(frame + b"\n\n")
    return b"".join(kept) if has_ids else body
