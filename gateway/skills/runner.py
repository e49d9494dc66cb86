"""One execution's model turns, through the same flow as any response: the skill becomes a Responses request
(its instructions rendered with the inputs, the files it staged and the inputs as user messages, its model or
the space default, its MCP servers as ``{"type": "mcp", "server_label": …}``, its HTTP tools as
``{"type": "http_tool", "name": …}``, its skills as ``{"type": "skill", "slug": …}``, the outputs schema as
``text.format``) that runs as the principal who started the execution, in its space:
``ResponsesService.admit``, then the space's policy chain (``Gateway.run_chain``) around
``ResponsesService.create``, so allow-lists, budgets, guardrails, cost and the tool loop apply as to a caller's
request.

The answer must be a JSON document valid against the outputs schema; when it is not, one repair turn (the
previous response continued, the validation errors given) gets a second chance, then the execution fails with
the errors in ``error``.
"""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from starlette.types import Message

from config.skills import SkillManifest
from gateway.catalog import Principal
from gateway.context import RequestContext, Surface
from gateway.errors import GatewayError, StoreUnavailable
from gateway.files import Owner
from gateway.pricing import usd
from gateway.responses.records import StoredResponse
from gateway.responses.render import openai_response
from gateway.skills.artifacts import LABEL as ARTIFACTS_LABEL
from gateway.skills.artifacts import ArtifactServer
from gateway.skills.records import Execution
from gateway.skills.registry import Skills, render_instructions

if TYPE_CHECKING:
    from gateway.runtime import Gateway

JSON = dict[str, Any]
Emit = Callable[..., Awaitable[None]]
ROUTE = "skills.executions.run"
MATERIALS = "inputs/materials"  # where an execution's staged files are, in its workspace (seed 002)
REPAIR = (
    "Your answer is not a JSON document valid against the required outputs schema: {problems}. "
    "Answer again with only the corrected JSON document."
)


class Failed(Exception):
    """The execution fails: ``reason`` (``failure_reason``) and ``error`` (the record's ``error``)."""

    def __init__(self, reason: str, error: JSON) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


@dataclass
class _Turn:
    status: int
    body: JSON
    response: JSON | None = None  # the response as stored
    rounds: int = 0


@dataclass
class Totals:
    input_tokens: int = 0
    output_tokens: int = 0
    cost_micros: int = 0
    rounds: int = 0
    responses: list[str] = field(default_factory=list)
    subs: list[JSON] = field(default_factory=list)  # the sub-executions ended (their core fields)
    artifacts: list[JSON] = field(default_factory=list)  # what the model wrote (write_artifact), in order
    started: int = 0  # sub-executions started (the fan-out bound counts these)

    def absorb(self, sub: "Totals") -> None:
        """A sub-execution's usage and cost count in its parent's."""
        self.input_tokens += sub.input_tokens
        self.output_tokens += sub.output_tokens
        self.cost_micros += sub.cost_micros

    def usage(self, wallclock_ms: int | None) -> JSON:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": usd(self.cost_micros),
            "wallclock_ms": wallclock_ms,
            "iteration_count": self.rounds,
        }


PARENT = "skill_parent"  # the ``ctx.extras`` entry naming the execution a model turn belongs to


@dataclass
class Parent:
    """Who calls a skill as a tool: an execution (whose totals collect its sub-executions), or a response."""

    principal: Principal
    space_id: str
    execution: Execution | None = None
    totals: Totals = field(default_factory=Totals)
    depth: int = 0


async def _never_disconnects() -> Message:
    await asyncio.Event().wait()  # the worker is the client: it never goes away (a cancel cancels its task)
    raise AssertionError("unreachable")


class Runner:
    def __init__(self, gw: "Gateway", skills: Skills) -> None:
        self.gw = gw
        self.skills = skills

    async def run(self, execution: Execution, skill: SkillManifest, totals: Totals, emit: Emit) -> JSON:
        """The execution's outputs (valid against the schema), or ``Failed``; ``totals`` adds up what it used."""
        body = request_for(skill, execution, await self._materials(execution, emit))
        turn = await self._turn(execution, skill, body, totals, emit)
        document, problems = self._outputs(skill, turn)
        if not problems:
            return document
        limit = skill.limits.max_cost_usd
        if limit is not None and totals.cost_micros >= int(limit * 1_000_000):
            raise Failed("cost_limit", {"code": "cost_limit", "message": "The skill's max_cost_usd was reached."})
        await emit("execution.repair", problems=problems)
        shown = "; ".join(f"{'/'.join(map(str, p['loc'])) or '(document)'}: {p['msg']}" for p in problems)
        repair = {
            **body,
            "previous_response_id": totals.responses[-1],
            "input": [{"role": "user", "content": REPAIR.format(problems=shown)}],
        }
        turn = await self._turn(execution, skill, repair, totals, emit)
        document, problems = self._outputs(skill, turn)
        if problems:
            message = "The outputs do not match the skill's outputs schema after one repair round."
            raise Failed("output_invalid", {"code": "output_invalid", "message": message, "errors": problems})
        return document

    async def _materials(self, execution: Execution, emit: Emit) -> str | None:
        """The caller's files the execution names (``file_source_ids``), staged as ``inputs/materials/<name>``:
        the text the model is shown (None without any); missing ones are skipped, as the seed says."""
        names = execution.run.get("files") or []
        if not names:
            return None
        owner = Owner(execution.data["tenant_id"], execution.data["principal_id"])
        found, missing = await self.gw.files.find(owner, names)
        staged = [
            {"file_id": r["id"], "relpath": f"{MATERIALS}/{r['filename']}", "bytes": r["bytes"]} for r, _ in found
        ]
        await emit("execution.materials", staged=staged, skipped=missing)
        return materials_text(found, self.gw.settings.skills_materials_max_chars) if found else None

    async def _turn(self, execution: Execution, skill: SkillManifest, body: JSON, totals: Totals, emit: Emit) -> _Turn:
        """One Responses request through the space's chain, as the principal that started the execution."""
        gw = self.gw
        principal = gw.catalog.principal_by_ref(execution.run["key_ref"])
        space_id = execution.data["space_id"]
        # the request log's id names the execution, so its model turns can be found from it
        ctx = gw.context_for(principal, space_id, ROUTE, body, Surface.NATIVE_RESPONSES, request_id=execution.id)
        depth = int(execution.run.get("depth") or 0)
        ctx.extras[PARENT] = Parent(principal, space_id, execution, totals, depth)  # for its skill tools
        loop = ctx.space.tool_loop
        ctx.space = ctx.space.model_copy(  # the skill's limits narrow the space's
            update={"tool_loop": loop.model_copy(update={"max_rounds": min(loop.max_rounds, skill.limits.max_rounds)})}
        )
        captured = _Captured()

        def render(record: StoredResponse) -> JSON:
            captured.record = record
            return openai_response(record)

        workspace = None
        try:
            await gw.responses.admit(ctx, _never_disconnects)
            if skill.limits.max_artifacts:
                workspace = self._workspace(ctx, execution, skill, totals)
            await gw.run_chain(
                ctx, captured.send, lambda out: gw.responses.create(ctx, out, _never_disconnects, render)
            )
        finally:
            _count(ctx, captured, totals)
            if workspace is not None:
                totals.artifacts += workspace.written
        turn = captured.turn()
        await emit("execution.turn", **_summary(turn))
        return turn

    def _workspace(self, ctx: RequestContext, execution: Execution, skill: SkillManifest, totals: Totals) -> Any:
        """The ``write_artifact`` tool among the turn's tool servers, with what is left of the skill's limit."""
        if any(server.label == ARTIFACTS_LABEL for server in ctx.tools):
            message = f"The skill's MCP server label '{ARTIFACTS_LABEL}' is the artifacts tool's own."
            raise Failed("refused", {"code": "tool_label_taken", "message": message})
        room = skill.limits.max_artifacts - len(totals.artifacts)
        server = ArtifactServer(self.gw.executions, execution, room)
        ctx.tools = [*ctx.tools, server]
        return server

    def _outputs(self, skill: SkillManifest, turn: _Turn) -> tuple[JSON, list[JSON]]:
        """The turn's answer as the outputs document and how it fails the schema (empty: valid)."""
        response = _finished(turn)
        text = "".join(
            part.get("text") or ""
            for item in response.get("output") or []
            if item.get("type") == "message"
            for part in item.get("content") or []
            if part.get("type") == "output_text"
        )
        try:
            document = orjson.loads(text)
        except orjson.JSONDecodeError:
            return {}, [{"loc": [], "msg": "the answer is not JSON", "type": "json_invalid", "input": text[:200]}]
        return document, self.skills.problems(skill, "outputs", document)


class _Captured:
    """The answer of a turn as the chain sends it: status and body."""

    def __init__(self) -> None:
        self.status = 0
        self.chunks: list[bytes] = []
        self.record: StoredResponse | None = None

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self.chunks.append(message.get("body", b""))

    def turn(self) -> _Turn:
        raw = b"".join(self.chunks)
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            body = {}
        record = self.record
        if record is None:
            return _Turn(self.status, body if isinstance(body, dict) else {})
        return _Turn(self.status, body, record.response, int(record.aimable.get("iteration_count") or 0))


def _count(ctx: RequestContext, captured: _Captured, totals: Totals) -> None:
    usage = ctx.usage
    if usage is not None:
        totals.input_tokens += usage.input_tokens
        totals.output_tokens += usage.output_tokens
    totals.cost_micros += ctx.cost_micros
    record = captured.record
    if record is not None:
        totals.rounds += int(record.aimable.get("iteration_count") or 0)
        totals.responses.append(record.id)


def failure_fields(exc: BaseException, timeout: float) -> JSON | None:
    """How an execution that raised ``exc`` fails (``failure_reason``, ``error``); None when it should not end
    for it (the store unreachable, a defect): the caller decides."""
    if isinstance(exc, Failed):
        return {"failure_reason": exc.reason, "error": exc.error}
    if isinstance(exc, TimeoutError):
        message = f"The execution ran longer than its {timeout:g} s."
        return {"failure_reason": "timeout", "error": {"code": "timeout", "message": message}}
    if isinstance(exc, GatewayError) and not isinstance(exc, StoreUnavailable):
        # refused before the chain: the key is gone, the space or its tools changed
        return {"failure_reason": "refused", "error": {"code": exc.code, "message": exc.message}}
    return None


def _finished(turn: _Turn) -> JSON:
    """The turn's response when it completed; ``Failed`` saying why otherwise."""
    if turn.response is None or turn.status != 200:
        detail = turn.body.get("detail", "The model turn was refused.")
        reason = "refused" if 400 <= turn.status < 500 else "upstream_error"
        raise Failed(reason, {"code": reason, "status": turn.status, "message": str(detail)[:1000]})
    response = turn.response
    output = response.get("output") or []
    if any(item.get("type") == "mcp_approval_request" for item in output):
        message = "A tool call needs approval; a skill's MCP servers must not require it (require_approval: never)."
        raise Failed("approval_required", {"code": "approval_required", "message": message})
    status = response.get("status")
    if status == "incomplete":
        raise Failed("incomplete", {"code": "incomplete", "details": response.get("incomplete_details")})
    if status != "completed":
        error = response.get("error") or {"code": "model_failed", "message": f"The response ended {status}."}
        raise Failed("model_failed", error)
    return response


def _summary(turn: _Turn) -> JSON:
    response = turn.response or {}
    calls = [
        {"server_label": i.get("server_label"), "name": i.get("name"), "error": i.get("error")}
        for i in response.get("output") or []
        if i.get("type") == "mcp_call"
    ]
    return {
        "response_id": response.get("id"),
        "status": response.get("status") or turn.status,
        "rounds": turn.rounds,
        "tool_calls": calls,
    }


def materials_text(files: list[tuple[JSON, bytes]], budget: int) -> str:
    """The staged files as the model reads them: each under its workspace path, text in full while ``budget``
    characters last (the rest cut, saying so), other files by name, size and that they are not text."""
    parts = [f"Files staged in the workspace's {MATERIALS}/:"]
    for record, data in files:
        head = f"--- {MATERIALS}/{record['filename']} ({record['bytes']} bytes)"
        try:
            text = data.decode()
        except UnicodeDecodeError:
            parts.append(f"{head}: not text, not shown ---")
            continue
        shown = text[: max(budget, 0)]
        budget -= len(shown)
        cut = "" if len(shown) == len(text) else f" [cut: {len(text) - len(shown)} more characters not shown]"
        parts.append(f"{head} ---\n{shown}{cut}")
    return "\n\n".join(parts)


def request_for(skill: SkillManifest, execution: Execution, materials: str | None = None) -> JSON:
    """The skill as a Responses request for this execution's inputs (and the files it staged, before them)."""
    inputs = execution.data["inputs"]
    staged = [{"role": "user", "content": materials}] if materials else []
    body: JSON = {
        "instructions": render_instructions(skill.instructions, inputs),
        "input": [*staged, {"role": "user", "content": orjson.dumps(inputs).decode()}],
        "text": {"format": {"type": "json_schema", "name": "outputs", "schema": skill.outputs}},
        "metadata": {"skill": skill.slug, "skill_version": skill.version, "execution_id": execution.id},
    }
    model = execution.run.get("model") or skill.model
    if model is not None:
        body["model"] = model
    tools = [{"type": "mcp", "server_label": label} for label in skill.mcp_labels]
    tools += [{"type": "http_tool", "name": name} for name in skill.http_names]
    tools += [{"type": "skill", "slug": slug} for slug in skill.skill_slugs]
    if tools:
        body["tools"] = tools
    return body
