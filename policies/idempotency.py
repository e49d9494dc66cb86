"""idempotency: ``Idempotency-Key`` on the POST routes that create something (IETF draft semantics).

A request with a key claims it atomically (a script that claims the key or returns the record already there,
run as a step of the chain's store round trip). Its answer (status, headers and body, or the SSE bytes of a
stream) is captured on its way out and stored in ``after`` for ``ttl_seconds``, which the chain runs as the
answer's last message passes, just before it goes out (``ctx.settle_before_end``): a retry sent the moment
the answer ended finds it recorded. A retry with the same key and body replays it with
``Idempotent-Replayed: true``, errors included. A 5xx, a rate-limit or budget refusal (it may pass later), a
stream that ended in an upstream failure, a client disconnect, a cancellation or an exception releases the
claim instead, so a retry runs again (a crash is covered by the claim's TTL). A streaming retry of a Responses
stream still in flight follows its event log (the claim names it), from the event after ``Last-Event-ID``; any
other retry in flight gets 409 ``Retry-After: 1``; the same key with another body 422. A request without a
key passes untouched, at no store cost.

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
    SSE_HEADERS,
    GatewayError,
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
    in_flight_log,
    parse_key,
    record_key,
    replay_of,
)

log = logging.getLogger("policies.idempotency")

_STATE = "idempotency.capture"  # ctx.extras key of the request's claim and captured answer
_STORED_OUTCOMES = frozenset({"ok", "rejected", "upstream_error"})
_FRAMING_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection"})
_FOLLOWED_HEADERS = [*SSE_HEADERS, (b"idempotent-replayed", b"true")]


@dataclass(slots=True)
class _Capture:
    """One claimed key and the answer as it went out."""

    records: IdempotencyRecords
    rkey: str
    fp: str
    owner: str
    log: str | None  # the event log a streaming retry may follow while this request runs
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    complete: bool = False  # the last body message went out
    claimed: bool = False  # the claim step ran and this request holds the key
    stored: bool = False

    def start(self, message: Message) -> None:
        if self.status is not None:  # an error after the answer had started: nothing coherent to replay
            self.status = 500
            return
        self.status = int(message["status"])
        self.headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in _FRAMING_HEADERS]

    def body(self, message: Message) -> None:
        chunk = message.get("body", b"")
        if chunk:
            self.chunks.append(chunk)
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
        received = ctx.body if ctx.received is None else ctx.received
        fp = fingerprint("POST", ctx.route, fingerprinted_body(received))
        log = ctx.answer_log.id if ctx.stream and ctx.answer_log is not None else None
        capture = ctx.extras[_STATE] = _Capture(records, rkey, fp, os.urandom(8).hex(), log)
        script, keys, args = records.claim_call(rkey, fp, capture.owner, log)
        skip = None if self.config.on_store_error == "closed" else _skipped  # None: fail closed (503)
        return StoreStep(script, keys, args, then=self.claimed, unavailable=skip)

    async def claimed(self, ctx: RequestContext, record: Any) -> Reply | None:
        """The claim's result: None when this request now holds the key, else the record already there."""
        capture: _Capture = ctx.extras[_STATE]
        if record is None:
            capture.claimed = True
            # recorded before the client sees the end; a background answer (queued), from the send path at once
            ctx.settle_before_end = not _answers_early(ctx)
            return None
        del ctx.extras[_STATE]
        followed = await attached(ctx, record, capture.fp)
        if followed is not None:
            return followed
        return resumed(ctx, replay_of(record, capture.fp))  # or 409 in flight, 422 another body

    def wrap_send(self, ctx: RequestContext, send: Send) -> Send:
        capture = ctx.extras.get(_STATE)
        if not isinstance(capture, _Capture) or not capture.claimed:
            return send
        early = _answers_early(ctx)

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
        script, keys, args = capture.records.release_call(capture.rkey, capture.fp, capture.owner, capture.log)
        return StoreStep(script, keys, args, unavailable=_not_released)


def _answers_early(ctx: RequestContext) -> bool:
    """A background response answers (queued) long before the request ends: that answer is stored at once."""
    return ctx.body.get("background") is True and not ctx.stream


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
    """A complete answer that is neither a server failure nor a momentary refusal: a 5xx, a stream the upstream
    broke (its outcome is ``upstream_error``) and a rate-limit or budget refusal run again."""
    status = capture.status
    if status is None or not capture.complete or status >= 500:
        return False
    if early:
        return True
    if ctx.outcome not in _STORED_OUTCOMES or isinstance(ctx.error, GatewayError) and ctx.error.momentary:
        return False
    return not (status < 300 and ctx.outcome == "upstream_error")


async def _store(capture: _Capture) -> None:
    try:
        await capture.records.complete(capture.rkey, capture.fp, capture.reply())
        capture.stored = True
    except StoreUnavailable:
        log.warning("idempotency answer for %s not stored (store unreachable): it expires on its own", capture.rkey)


async def attached(ctx: RequestContext, record: bytes, fp: str) -> Reply | None:
    """A streaming retry of a stream still in flight follows its event log, from the event after
    ``Last-Event-ID`` (or the first) to the end; None when there is nothing to follow (409 then)."""
    if not ctx.stream or ctx.answer_log is None:
        return None
    log = in_flight_log(record, fp)
    if log is None:
        return None
    frames = await ctx.answer_log.follow(log, last_event_id(ctx))
    return None if frames is None else Reply(200, b"", list(_FOLLOWED_HEADERS), stream=frames)


def last_event_id(ctx: RequestContext) -> int:
    """The ``Last-Event-ID`` sent (the last sequence number the client saw); -1 without one, or for a value
    that is not one of our ids (then the whole stream is sent)."""
    raw = ctx.header("last-event-id")
    try:
        return max(-1, int(raw.strip())) if raw is not None else -1
    except ValueError:
        return -1


def resumed(ctx: RequestContext, reply: Reply) -> Reply:
    """A replayed event stream with ``Last-Event-ID: N`` keeps only the events after N."""
    if ctx.header("last-event-id") is None or not any(
        k == b"content-type" and v.startswith(b"text/event-stream") for k, v in reply.headers
    ):
        return reply
    return Reply(reply.status, events_after(reply.body, last_event_id(ctx)), reply.headers)


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
