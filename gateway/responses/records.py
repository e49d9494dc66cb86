"""Stored responses: the response object, its input items, its place in a conversation, its event log.

One record per response under ``resp:<id>`` (JSON, TTL until ``expires_at``); the event log of a streamed or
background response under ``resp:<id>:events`` (one SSE frame per entry, index == sequence_number). A
record carries its ancestors' ids (``chain``), so rebuilding a conversation is two store reads however long it
is. Records are scoped to a tenant and space: another's id is answered as if it did not exist.

Nothing but records and event logs lives under ``resp:`` (a cancel request is a signal, under ``cancel:``), so
that namespace is what the in-memory store may evict past its limit (``EVICTABLE``): an evicted response reads
as an expired one.
"""

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.errors import InvalidRequest
from gateway.jobs import cancel_key
from gateway.store import Store

JSON = dict[str, Any]
EVICTABLE = ("resp:",)  # the key prefixes below that hold stored responses and event logs, and nothing else
TERMINAL = ("completed", "incomplete", "failed", "cancelled")


@dataclass
class StoredResponse:
    """A response as the gateway keeps it (the ``response`` object is in OpenAI's shape, unix times)."""

    response: JSON
    tenant_id: str
    space_id: str
    principal: str
    model_alias: str
    input_items: list[JSON] = field(default_factory=list)
    chain: list[str] = field(default_factory=list)  # ancestor ids, oldest first
    expires_at: int = 0
    aimable: JSON = field(default_factory=dict)
    idempotency_key: str | None = None
    owner: str | None = None  # the gateway instance running it (background jobs)
    finished_at: int | None = None
    cost_micros: int = 0
    agent: JSON | None = None  # {"key", "version"} of the agent version it ran (a continuation stays on it)

    @property
    def id(self) -> str:
        return str(self.response["id"])

    @property
    def status(self) -> str:
        return str(self.response.get("status"))

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def items(self) -> list[JSON]:
        """This turn's input items followed by its output items: what the next turn sees as history."""
        return [*self.input_items, *(self.response.get("output") or [])]


class ResponseRecords:
    """Load and save stored responses and their event logs."""

    def __init__(self, store: Store, ttl_seconds: int) -> None:
        self.store = store
        self.ttl = ttl_seconds

    def expires_at(self) -> int:
        return int(time.time()) + self.ttl

    async def save(self, record: StoredResponse) -> None:
        if not record.expires_at:
            record.expires_at = self.expires_at()
        ttl = max(1, record.expires_at - int(time.time()))
        await self.store.set(_key(record.id), orjson.dumps(record), ttl)  # orjson encodes dataclasses natively

    async def load(self, response_id: str, tenant_id: str, space_id: str) -> StoredResponse | None:
        """The record, or None when unknown, expired, or another tenant's or space's."""
        raw = await self.store.get(_key(response_id))
        return _visible(raw, tenant_id, space_id)

    async def delete(self, response_id: str) -> None:
        await self.store.delete(_key(response_id), _events_key(response_id), cancel_key(response_id))

    async def history(self, previous_id: str, tenant_id: str, space_id: str) -> tuple[list[JSON], list[str]]:
        """The items of every turn up to and including ``previous_id`` and the new turn's ancestor chain.

        Raises 400 ``previous_response_not_found`` when it (or an ancestor) is unknown or not visible."""
        previous = await self.load(previous_id, tenant_id, space_id)
        if previous is None:
            raise _not_found(previous_id)
        ancestors = await self.store.get_many([_key(i) for i in previous.chain])
        items: list[JSON] = []
        for ancestor_id, raw in zip(previous.chain, ancestors, strict=True):
            record = _visible(raw, tenant_id, space_id)
            if record is None:
                raise _not_found(ancestor_id)
            items.extend(record.items())
        items.extend(previous.items())
        return items, [*previous.chain, previous.id]

    async def append_events(self, response_id: str, frames: list[bytes]) -> None:
        if frames:
            await self.store.extend(_events_key(response_id), frames, self.ttl)

    async def events(self, response_id: str, after: int = -1) -> list[bytes]:
        """Stored SSE frames with sequence_number > ``after``."""
        return await self.store.read_log(_events_key(response_id), after + 1)

    async def logged(self, response_id: str) -> bool:
        """Whether the response has an event log (it was streamed, and its log kept)."""
        return bool(await self.store.read_log(_events_key(response_id), 0, 0))


def _key(response_id: str) -> str:
    return f"resp:{response_id}"


def _events_key(response_id: str) -> str:
    return f"resp:{response_id}:events"


def _visible(raw: bytes | None, tenant_id: str, space_id: str) -> StoredResponse | None:
    if raw is None:
        return None
    record = StoredResponse(**orjson.loads(raw))
    if record.tenant_id != tenant_id or record.space_id != space_id:
        return None
    return record


def _not_found(response_id: str) -> InvalidRequest:
    return InvalidRequest(
        f"Previous response with id '{response_id}' not found.",
        param="previous_response_id",
        code="previous_response_not_found",
        input=response_id,
    )
