"""Idempotency-Key records (IETF draft semantics): claim atomically, replay the stored answer, refuse misuse.

A record lives under (tenant, space, principal, route, key). The first request claims it (``set_nx``) and
later stores its answer; a retry with the same fingerprint (method, path, canonical body) replays that
answer with ``Idempotent-Replayed: true``; a retry while the first is still running gets 409 with
``Retry-After``; the same key with another body gets 422.
"""

import base64
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from gateway.context import Reply
from gateway.errors import BadRequest, Conflict, GatewayError, Unprocessable
from gateway.store import Store

MAX_KEY_LENGTH = 255
CLAIM_TTL_SECONDS = 300  # a claim whose holder died is released by expiry after this long


def parse_key(raw: bytes | str | None) -> str | None:
    """The key from an ``Idempotency-Key`` header: a Structured-Field string ``"abc"`` and ``abc`` are equal."""
    if raw is None:
        return None
    key = (raw.decode("latin-1") if isinstance(raw, bytes) else raw).strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not key:
        raise BadRequest("The Idempotency-Key header is empty.")
    if len(key) > MAX_KEY_LENGTH:
        raise BadRequest(f"The Idempotency-Key is longer than {MAX_KEY_LENGTH} characters.")
    return key


def fingerprint(method: str, path: str, body: Any) -> str:
    """Method, path and the body in canonical form (sorted keys), hashed."""
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + canonical).hexdigest()


def record_key(scope: tuple[str, ...], key: str) -> str:
    return "idem:" + ":".join(scope) + ":" + hashlib.sha256(key.encode()).hexdigest()


class IdempotencyRecords:
    """Claim, complete, release and replay idempotency records in the store."""

    def __init__(self, store: Store, ttl_seconds: int) -> None:
        self.store = store
        self.ttl = ttl_seconds

    async def claim(self, rkey: str, fp: str) -> Reply | None:
        """None when this request now owns the key; the stored Reply when it already finished.

        Raises Conflict (409) while another request holds it, Unprocessable (422) for another body.
        """
        claim = orjson.dumps({"fp": fp, "state": "in_flight"})
        if await self.store.set_nx(rkey, claim, CLAIM_TTL_SECONDS):
            return None
        raw = await self.store.get(rkey)
        if raw is None:  # expired between the two calls: try once more
            return None if await self.store.set_nx(rkey, claim, CLAIM_TTL_SECONDS) else await self.claim(rkey, fp)
        record = orjson.loads(raw)
        if record["fp"] != fp:
            raise Unprocessable(
                "This Idempotency-Key was already used with a different request body.",
                code="idempotency_key_reused",
            )
        if record["state"] != "done":
            raise Conflict(
                "A request with this Idempotency-Key is still being processed.",
                code="idempotency_in_progress",
                headers={"Retry-After": "1"},
            )
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in record["headers"]]
        headers.append((b"idempotent-replayed", b"true"))
        return Reply(record["status"], base64.b64decode(record["body"]), headers)

    async def complete(self, rkey: str, fp: str, reply: Reply) -> None:
        """Store the finished answer for replay for the retention period."""
        record = {
            "fp": fp,
            "state": "done",
            "status": reply.status,
            "headers": [(k.decode("latin-1"), v.decode("latin-1")) for k, v in reply.headers],
            "body": base64.b64encode(reply.body).decode(),
        }
        await self.store.set(rkey, orjson.dumps(record), self.ttl)

    async def run_once(
        self, rkey: str, fp: str, produce: Callable[[], Awaitable[Reply]], on_error: Callable[[GatewayError], Reply]
    ) -> Reply:
        """Replay the stored answer, or produce it once and store it. Errors the caller caused are stored
        (rendered by ``on_error``) and replayed like successes; anything else releases the key and raises."""
        replayed = await self.claim(rkey, fp)
        if replayed is not None:
            return replayed
        try:
            reply = await produce()
        except GatewayError as exc:
            if exc.status_code >= 500:  # not the caller's doing: a retry must run again
                await self.release(rkey)
                raise
            reply = on_error(exc)
        except BaseException:
            await self.release(rkey)
            raise
        await self.complete(rkey, fp, reply)
        return reply

    async def release(self, rkey: str) -> None:
        """Give the key back (the request failed in a way that must not be replayed)."""
        await self.store.delete(rkey)
