"""Idempotency-Key records (IETF draft semantics): claim atomically, replay the stored answer, refuse misuse.

A record lives under (tenant, space, principal, route, key). The first request claims it atomically and
later stores its answer; a retry with the same fingerprint (method, path, canonical body) replays that
answer with ``Idempotent-Replayed: true``; a retry while the first is still running gets 409 with
``Retry-After`` (or, when the claim names the log its answer is written to, may follow that log); the same
key with another body gets 422.

Each decision is one store round trip: ``claim`` is a script that either claims the key or returns the record
already there; ``release`` deletes the claim only while it is still this request's (a claim that expired and
was taken by another request is left alone). Each also exists as a call (script, keys, args) that the
``idempotency`` policy hands to the chain, to run with the other policies' store work in one round trip.
"""

import base64
import hashlib
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from gateway.context import Reply
from gateway.errors import BadRequest, Conflict, GatewayError, Unprocessable
from gateway.store import Call, Halt, Store

MAX_KEY_LENGTH = 255
CLAIM_TTL_SECONDS = 300  # a claim whose holder died is released by expiry after this long

# claim: KEYS[1] = record key; ARGV = claim value, claim TTL in ms. The record already there, or nil (claimed).
_CLAIM_LUA = """
local current = redis.call('GET', KEYS[1])
if current then return current end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""
# complete: KEYS[1] = record key; ARGV = the finished record, its TTL in ms.
_COMPLETE_LUA = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
# release: KEYS[1] = record key; ARGV[1] = this request's claim value. Deletes only an unchanged claim.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _claim_in_memory(data: Any, keys: Sequence[str], args: Sequence[Any]) -> bytes | None:
    current: bytes | None = data.get(keys[0])
    if current is not None:
        return current
    data.put(keys[0], args[0], int(args[1]) / 1000)
    return None


def _complete_in_memory(data: Any, keys: Sequence[str], args: Sequence[Any]) -> int:
    data.put(keys[0], args[0], int(args[1]) / 1000)
    return 1


def _release_in_memory(data: Any, keys: Sequence[str], args: Sequence[Any]) -> int:
    return int(data.get(keys[0]) == args[0] and data.delete(keys[0]))


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


def _claim_value(fp: str, owner: str, log: str | None = None) -> bytes:
    claim = {"fp": fp, "state": "in_flight", "owner": owner}
    if log is not None:  # where the answer can be followed while it is written (a Responses stream's log)
        claim["log"] = log
    return orjson.dumps(claim)


def in_flight_log(raw: bytes, fp: str) -> str | None:
    """The answer log named by a record still in flight for this same body (a retry may follow it), else None."""
    record = orjson.loads(raw)
    if record["fp"] != fp or record["state"] != "in_flight":
        return None
    log = record.get("log")
    return log if isinstance(log, str) else None


def replay_of(raw: bytes, fp: str) -> Reply:
    """The stored answer of a finished record, marked ``Idempotent-Replayed: true``.

    Raises Unprocessable (422) when the record was made for another body, Conflict (409, ``Retry-After: 1``)
    while it is still in flight.
    """
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


class IdempotencyRecords:
    """Claim, complete, release and replay idempotency records in the store.

    ``ttl_seconds`` is how long a finished answer is kept for replay; ``claim_ttl_seconds`` how long a claim
    outlives a holder that died without releasing it.
    """

    def __init__(self, store: Store, ttl_seconds: int, claim_ttl_seconds: int = CLAIM_TTL_SECONDS) -> None:
        self.store = store
        self.ttl = ttl_seconds
        self.claim_ttl = claim_ttl_seconds
        # a record already there (not nil) halts a batch: the request is answered from it
        self._claim = store.script(_CLAIM_LUA, _claim_in_memory, Halt("r ~= false", lambda r: r is not None))
        self._complete = store.script(_COMPLETE_LUA, _complete_in_memory)
        self._release = store.script(_RELEASE_LUA, _release_in_memory)

    def claim_call(self, rkey: str, fp: str, owner: str, log: str | None = None) -> Call:
        """The claim as a call: its result is None when claimed, else the record already there (``replay_of``).
        ``log`` names where the answer can be followed while it is written (see ``in_flight_log``)."""
        return self._claim, [rkey], [_claim_value(fp, owner, log), self.claim_ttl * 1000]

    def complete_call(self, rkey: str, fp: str, reply: Reply) -> Call:
        """Store the finished answer for replay for the retention period, as a call."""
        record = {
            "fp": fp,
            "state": "done",
            "status": reply.status,
            "headers": [(k.decode("latin-1"), v.decode("latin-1")) for k, v in reply.headers],
            "body": base64.b64encode(reply.body).decode(),
        }
        return self._complete, [rkey], [orjson.dumps(record), self.ttl * 1000]

    def release_call(self, rkey: str, fp: str, owner: str, log: str | None = None) -> Call:
        """Give the key back if the claim made by ``claim_call(rkey, fp, owner, log)`` is still there, as a call."""
        return self._release, [rkey], [_claim_value(fp, owner, log)]

    async def claim(self, rkey: str, fp: str, owner: str) -> Reply | None:
        """None when this request now owns the key; the stored Reply when it already finished (one round trip).

        Raises Conflict (409) while another request holds it, Unprocessable (422) for another body.
        """
        script, keys, args = self.claim_call(rkey, fp, owner)
        raw = await script(keys, args)
        return None if raw is None else replay_of(raw, fp)

    async def complete(self, rkey: str, fp: str, reply: Reply) -> None:
        """Store the finished answer for replay for the retention period."""
        script, keys, args = self.complete_call(rkey, fp, reply)
        await script(keys, args)

    async def release(self, rkey: str, fp: str, owner: str) -> bool:
        """Give the key back (the request failed in a way that must not be replayed), if the claim made by
        ``claim(rkey, fp, owner)`` is still there; True when it was."""
        script, keys, args = self.release_call(rkey, fp, owner)
        return bool(await script(keys, args))

    async def run_once(
        self, rkey: str, fp: str, produce: Callable[[], Awaitable[Reply]], on_error: Callable[[GatewayError], Reply]
    ) -> Reply:
        """Replay the stored answer, or produce it once and store it. Errors the caller caused are stored
        (rendered by ``on_error``) and replayed like successes; anything else releases the key and raises."""
        owner = os.urandom(8).hex()
        replayed = await self.claim(rkey, fp, owner)
        if replayed is not None:
            return replayed
        try:
            reply = await produce()
        except GatewayError as exc:
            if exc.status_code >= 500:  # not the caller's doing: a retry must run again
                await self.release(rkey, fp, owner)
                raise
            reply = on_error(exc)
        except BaseException:
            await self.release(rkey, fp, owner)
            raise
        await self.complete(rkey, fp, reply)
        return reply
