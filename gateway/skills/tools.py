"""Skills as tools: a request's ``{"type": "skill", "slug": …}`` tools (a response's, or a skill's own from its
manifest) become one tool server of the tool loop, labelled ``skill``: the model sees each skill as the function
``skill__<slug>`` (its inputs schema as parameters), and a call runs the skill as a sub-execution, in the loop's
task: recorded with ``parent_execution_id`` (when a skill called it), ``chat_tool_call_id`` (the call's item
id, which ``…/by-chat-tool-call/{id}`` finds) and ``source`` (``response`` or ``skill``), run by the same runner
as any execution, its outputs given back to the model as the call's output. A skill's sub-executions are listed
in its ``sub_executions`` and their usage and cost added to its ``resource_usage``. Depth (``MAX_DEPTH``) and
fan-out (``MAX_FAN_OUT`` calls per parent) are bounded: a call beyond them fails with an error the model reads.
"""

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from config.skills import SkillManifest
from gateway.catalog import key_ref
from gateway.context import RequestContext
from gateway.errors import InvalidRequest
from gateway.skills.records import Execution, iso_now, new_execution
from gateway.skills.runner import PARENT, Parent, Totals, failure_fields
from gateway.tools.results import ToolResult

if TYPE_CHECKING:
    from gateway.runtime import Gateway

LABEL = "skill"
MAX_DEPTH = 3  # a skill called by a skill called by … at most this deep
MAX_FAN_OUT = 8  # sub-executions one parent (an execution, or one response) may start
CORE = (  # the fields of a sub-execution its parent lists (the seed's sub_executions entries)
    *("id", "tenant_id", "space_id", "principal_id", "skill_slug", "skill_version", "source", "state"),
    *("parent_execution_id", "created_at", "started_at", "finished_at", "failure_reason", "resource_usage"),
)


@dataclass(frozen=True, eq=False)
class SkillServer:
    """The request's skills as one tool server of the loop (a ``gateway.tools.ToolServer``)."""

    gw: "Gateway"
    skills: tuple[SkillManifest, ...]
    parent: Parent
    label: str = LABEL
    declared: bool = True
    listed: bool = True

    def allows_tool(self, name: str) -> bool:
        return any(s.slug == name for s in self.skills)

    def needs_approval(self, tool_name: str) -> bool:
        return False

    async def list_tools(self) -> list[dict[str, Any]]:
        return [
            {
                "name": s.slug,
                "description": (s.description or s.title)[:1024],
                "input_schema": s.inputs,
                "annotations": None,
            }
            for s in self.skills
        ]

    async def call(
        self, name: str, arguments: dict[str, Any], timeout: float | None, call_id: str | None
    ) -> ToolResult:
        """Run the skill ``name`` as a sub-execution; its outputs (JSON) are the result, a failure its error."""
        skill = next((s for s in self.skills if s.slug == name), None)
        parent = self.parent
        if skill is None:
            return ToolResult.failed(f"No skill {name[:100]!r} here.")
        if parent.depth + 1 > MAX_DEPTH:
            return ToolResult.failed(f"Skills may call skills at most {MAX_DEPTH} deep.")
        problems = self.gw.skills.problems(skill, "inputs", arguments)
        if problems:
            shown = "; ".join(f"{'/'.join(map(str, p['loc'])) or '(inputs)'}: {p['msg']}" for p in problems)
            return ToolResult.failed(f"The inputs do not match the skill's inputs schema: {shown}")
        # counted as it starts, not as it ends: the calls of one round run at once
        if parent.totals.started >= MAX_FAN_OUT:
            return ToolResult.failed(f"At most {MAX_FAN_OUT} skill calls per execution or response.")
        parent.totals.started += 1
        execution = await self._start(skill, arguments, call_id)
        budget = skill.limits.timeout_seconds if timeout is None else min(timeout, skill.limits.timeout_seconds)
        # a task of its own: its model turns are requests of their own (tracked for the drain apart from the
        # caller's); cancelling the caller cancels it
        state, fields = await asyncio.ensure_future(self._run(execution, skill, budget))
        await self._end(execution, state, fields)
        if state == "succeeded":
            return ToolResult(output=orjson.dumps(execution.data["outputs"]).decode())
        error = execution.data.get("error") or {}
        return ToolResult.failed(
            f"The skill failed ({fields.get('failure_reason')}): {error.get('message', '')}"[:1000]
        )

    async def _start(self, skill: SkillManifest, inputs: dict[str, Any], call_id: str | None) -> Execution:
        parent = self.parent
        principal = parent.principal
        data = new_execution(
            tenant_id=principal.tenant_id,
            space_id=parent.space_id,
            principal_id=principal.id,
            skill_slug=skill.slug,
            skill_version=skill.version,
            source="skill" if parent.execution is not None else "response",
            state="running",
            started_at=iso_now(),
            parent_execution_id=parent.execution.id if parent.execution is not None else None,
            chat_tool_call_id=call_id,
            inputs=inputs,
        )
        trace = self.gw.tracing.current() if self.gw.tracing is not None else None
        data["langfuse_trace_id"] = trace.trace_id if trace is not None else None  # its caller's trace
        run = {"key_ref": key_ref(principal.key), "model": None, "depth": parent.depth + 1, "attempt": 1}
        execution = Execution(data, run)
        await self.gw.executions.create(execution, lease=self._lease, tool_call_id=call_id)
        return execution

    @property
    def _lease(self) -> str:
        return f"running|{self.gw.jobs.instance}|1"

    async def _run(self, execution: Execution, skill: SkillManifest, budget: float) -> tuple[str, dict[str, Any]]:
        totals, started = Totals(), time.monotonic()

        async def emit(kind: str, **event: Any) -> None:
            await self.gw.executions.append_event(execution.id, kind, **event)

        fields: dict[str, Any]
        try:
            async with asyncio.timeout(budget):
                outputs = await self.gw.runner.run(execution, skill, totals, emit)
            state, fields = "succeeded", {"outputs": outputs}
        except Exception as exc:
            failed = failure_fields(exc, budget)
            if failed is None:
                raise
            state, fields = "failed", failed
        fields["resource_usage"] = totals.usage(int((time.monotonic() - started) * 1000))
        fields["sub_executions"] = totals.subs
        fields["artifacts"] = [*execution.data["artifacts"], *totals.artifacts]
        self.parent.totals.absorb(totals)
        return state, fields

    async def _end(self, execution: Execution, state: str, fields: dict[str, Any]) -> None:
        execution.data.update(state=state, finished_at=iso_now(), **fields)
        if await self.gw.executions.transition(execution, self._lease, state):
            await self.gw.executions.append_event(execution.id, f"execution.{state}", execution=execution.data)
        self.parent.totals.subs.append({k: execution.data[k] for k in CORE})


async def skill_servers(gw: "Gateway", ctx: RequestContext, tools: list[dict[str, Any]]) -> list[SkillServer]:
    """The request's skill tools as the loop's server (none when it names no skill); 400 for a skill the space
    may not run. A worker's model turn names its execution (``ctx.extras[PARENT]``); else the response is the
    parent."""
    slugs: list[str] = []
    space = await gw.skills.in_space(ctx.space_id)
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "skill":
            continue
        slug = tool.get("slug")
        if not isinstance(slug, str) or not space.get(slug):
            shown = repr(slug[:100]) if isinstance(slug, str) else "(none)"
            raise InvalidRequest(f"tools[{i}].slug: {shown} is not a skill of this space", param=f"tools[{i}].slug")
        if slug not in slugs:
            slugs.append(slug)
    if not slugs:
        return []
    parent = ctx.extras.get(PARENT) or Parent(ctx.principal, ctx.space_id)
    found = tuple(space[slug][0] for slug in slugs)
    return [SkillServer(gw, found, parent)]
