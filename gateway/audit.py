"""The audit log: an append-only record of admin changes and policy denials, kept in the store.

Each tenant's log is partitioned by space (``audit:{tenant_id}:{space_id}``, one store list per space, so a
space's page is read by index), entries are JSON, appended with ``store.append`` and a long TTL (refreshed by
each append). Pages are read newest first; the cursor is the index of the next (older) entry.

An entry: ``id``, ``at`` (ISO-8601 UTC), ``kind`` (``admin_change`` | ``policy_denial``), ``action``, ``principal``
and ``key`` (who), ``space_id``, ``route``, ``model``, ``status``, ``error`` (``{code, message}``), ``request_id``,
``agent`` (``{key, version}``, when the request invoked an agent), and what the kind adds (``tenant_model_id``
for admin changes, ``agent_key`` for the agents API's; ``request`` when a policy asked for prompts).
Never secrets: keys appear by name only.
"""

import base64
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import orjson

from gateway.catalog import now_iso
from gateway.context import RequestContext
from gateway.errors import InvalidRequest, StoreUnavailable
from gateway.store import Script, Store

log = logging.getLogger("gateway.audit")
AUDIT_TTL_SECONDS = 400 * 24 * 3600  # a little over a year after the last entry
MAX_MESSAGE = 500

# KEYS[1]: the log; ARGV[1]: index of the newest entry wanted ("" = the newest), ARGV[2]: how many.
# Returns {first index read, entries newest-last}.
PAGE_LUA = """
local n = redis.call('LLEN', KEYS[1])
local last = n - 1
if ARGV[1] ~= '' then last = math.min(tonumber(ARGV[1]), n - 1) end
local first = math.max(0, last - tonumber(ARGV[2]) + 1)
if last < 0 then return {0, {}} end
return {first, redis.call('LRANGE', KEYS[1], first, last)}
"""


def _page_fallback(data: Any, keys: Sequence[str], args: Sequence[Any]) -> list[Any]:
    entries: list[bytes] = data.get(keys[0]) or []
    last = len(entries) - 1 if args[0] == "" else min(int(args[0]), len(entries) - 1)
    first = max(0, last - int(args[1]) + 1)
    return [0, []] if last < 0 else [first, list(entries[first : last + 1])]


def encode_cursor(index: int) -> str:
    return base64.urlsafe_b64encode(f"audit:{index}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, index = raw.partition(":")
        if prefix == "audit" and index.isdigit():
            return int(index)
    except (ValueError, UnicodeDecodeError):
        pass
    raise InvalidRequest("Invalid cursor.", loc=("query", "cursor"), kind="value_error", input=cursor)


def who(ctx: RequestContext) -> dict[str, Any]:
    """The common head of an entry: who did what, where (and through which agent version, when one ran)."""
    head: dict[str, Any] = {
        "principal": ctx.principal.id,
        "key": ctx.principal.key.name,
        "space_id": ctx.space_id,
        "route": ctx.route,
        "request_id": ctx.request_id,
    }
    if ctx.agent is not None:
        head["agent"] = ctx.agent_ref
    return head


class AuditLog:
    """Appends and pages audit entries; cheap to build (the page script is registered on first read)."""

    def __init__(self, store: Store, ttl_seconds: float = AUDIT_TTL_SECONDS) -> None:
        self.store = store
        self.ttl_seconds = ttl_seconds
        self._page: Script | None = None

    @staticmethod
    def key(tenant_id: str, space_id: str) -> str:
        return f"audit:{tenant_id}:{space_id}"

    async def record(self, tenant_id: str, space_id: str, kind: str, action: str, fields: dict[str, Any]) -> None:
        """Append one entry (stamped with an id and the time). Raises StoreUnavailable."""
        entry = {"id": str(uuid.uuid4()), "at": now_iso(), "kind": kind, "action": action, **fields}
        if isinstance((entry.get("error") or {}).get("message"), str):
            entry["error"]["message"] = entry["error"]["message"][:MAX_MESSAGE]
        await self.store.append(self.key(tenant_id, space_id), orjson.dumps(entry), self.ttl_seconds)

    async def record_request(self, ctx: RequestContext, kind: str, action: str, fields: dict[str, Any]) -> None:
        """Append one entry about a request: who made it, where, then ``fields``. Raises StoreUnavailable."""
        await self.record(ctx.tenant_id, ctx.space_id, kind, action, {**who(ctx), **fields})

    async def admin_change(self, ctx: RequestContext, action: str, tenant_model_id: str) -> None:
        """Record a change made through the admin API. The change is already made: a store failure is logged."""
        model = ctx.catalog.tenant_model(ctx.principal.tenant, tenant_model_id)
        fields = {"model": model.alias if model else None, "tenant_model_id": tenant_model_id}
        try:
            await self.record_request(ctx, "admin_change", action, fields)
        except StoreUnavailable:
            log.error("audit entry lost (store unreachable): %s by %s on %s", action, ctx.principal.id, ctx.space_id)

    async def api_change(self, ctx: RequestContext, action: str, **fields: Any) -> None:
        """Record a change made through the agents or skills API (``fields`` name what changed: ``agent_key``,
        ``version``, ``changed``, ``skill``); a store failure is logged (the change is made)."""
        try:
            await self.record_request(ctx, "admin_change", action, fields)
        except StoreUnavailable:
            log.error("audit entry lost (store unreachable): %s by %s on %s", action, ctx.principal.id, ctx.space_id)

    async def page(
        self, tenant_id: str, space_id: str, limit: int, cursor: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Up to ``limit`` entries, newest first, and the cursor of the next page (None at the end)."""
        if self._page is None:
            self._page = self.store.script(PAGE_LUA, _page_fallback)
        newest = "" if cursor is None else str(decode_cursor(cursor))
        first, raw = await self._page([self.key(tenant_id, space_id)], [newest, limit])
        entries = [orjson.loads(e) for e in reversed(raw)]
        return entries, (encode_cursor(int(first) - 1) if entries and int(first) > 0 else None)
