"""Starting, cancelling and following executions, for the routes (``gateway.api.skills``, ``…executions``)."""

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson

from config.skills import SkillManifest
from gateway.catalog import key_ref
from gateway.context import RequestContext
from gateway.errors import InvalidRequest, PermissionDenied
from gateway.skills.records import Execution, iso_now, new_execution

if TYPE_CHECKING:
    from gateway.runtime import Gateway

CANCEL_WAIT_SECONDS = 5.0
FOLLOW_SECONDS = 3600.0  # longest an event stream stays open
_POLL_SECONDS = 0.2
TERMINAL_EVENTS = frozenset({"execution.succeeded", "execution.failed", "execution.cancelled"})


def check_inputs(gw: "Gateway", skill: SkillManifest, inputs: Any) -> None:
    """422 listing every path of ``inputs`` that fails the skill's inputs schema."""
    problems = gw.skills.problems(skill, "inputs", inputs)
    if problems:
        details = [{**p, "loc": ["body", "inputs", *p["loc"]]} for p in problems]
        first = details[0]
        raise InvalidRequest(first["msg"], loc=tuple(first["loc"]), kind=first["type"], details=details)


async def check_model(gw: "Gateway", ctx: RequestContext, alias: str) -> None:
    """403 when the space's allow-list (if its chain has one) does not allow the model, as on responses."""
    if not any(p.name == "allow_list" for p in gw.chains[ctx.space_id].policies):
        return
    model = gw.catalog.tenant_model(ctx.principal.tenant, alias)
    allowed = [a.model.alias for a in await gw.catalog.allowed_models(ctx.principal.tenant, ctx.space)]
    if model is None or model.alias not in allowed:
        shown = alias if len(alias) <= 100 else alias[:100] + "…"
        raise PermissionDenied(
            f"Model '{shown}' is not allowed in space '{ctx.space.name or ctx.space.id}'. "
            f"Allowed models: {', '.join(allowed) or '(none)'}.",
            code="model_not_allowed",
            param="model",
        )


async def start(
    gw: "Gateway", ctx: RequestContext, skill: SkillManifest, payload: Any, idempotency_key: str | None
) -> Execution:
    """Record and queue a standalone execution of ``skill`` (inputs and model already checked)."""
    execution = Execution(
        new_execution(
            tenant_id=ctx.tenant_id,
            space_id=ctx.space_id,
            principal_id=ctx.principal.id,
            skill_slug=skill.slug,
            skill_version=skill.version,
            inputs=payload.inputs,
            idempotency_key=idempotency_key,
        ),
        {"key_ref": key_ref(ctx.principal.key), "model": payload.model, "files": payload.file_source_ids or []},
    )
    await gw.executions.create(execution)
    return execution


async def cancel(gw: "Gateway", execution: Execution) -> Execution:
    """Cancel an execution not ended yet: a queued one at once, a running one through its worker (here, or
    on another replica); returns it once it ended, or as it stands after ``CANCEL_WAIT_SECONDS``."""
    records = gw.executions
    if await records.lease(execution.id) == "queued":
        execution.data.update(state="cancelled", failure_reason="cancelled", finished_at=iso_now())
        if await records.transition(execution, "queued", "cancelled"):
            await records.append_event(execution.id, "execution.cancelled", execution=execution.data)
            return execution
    if not gw.jobs.cancel_here(execution.id):
        await gw.jobs.request_cancel(execution.id)
    deadline = time.monotonic() + CANCEL_WAIT_SECONDS
    while time.monotonic() < deadline:
        fresh = await records.load(execution.id)
        if fresh is None or fresh.terminal:
            return fresh or execution
        await asyncio.sleep(0.05)
    return await records.load(execution.id) or execution


async def follow(gw: "Gateway", execution_id: str, after: int) -> AsyncIterator[bytes]:
    """The execution's events after ``after`` as SSE frames (``id`` the event's index), live until it ends."""
    deadline = time.monotonic() + FOLLOW_SECONDS
    quiet = 0  # polls without an event since the record says it ended (its last event should follow at once)
    while time.monotonic() < deadline and quiet < 5:
        for raw in await gw.executions.events(execution_id, after):
            after += 1
            kind = orjson.loads(raw).get("event", "message")
            yield b"id: %d\nevent: %s\ndata: %s\n\n" % (after, kind.encode(), raw)
            if kind in TERMINAL_EVENTS:
                return
        execution = await gw.executions.load(execution_id)
        if execution is None:
            return
        quiet += execution.terminal
        await asyncio.sleep(_POLL_SECONDS)
