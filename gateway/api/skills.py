"""Native skill routes of a space (``/v1/spaces/{space_id}/skills…``, also under ``/api-proxy``): the skills a
space may run and their versions, publishing a version (admin keys), starting an execution (seed 002), and
following executions: get, list (state and slug filters, cursor pages as on models), cancel, events (SSE,
resumable with ``Last-Event-ID``), and the lookup by chat tool call. Objects of another space or tenant answer
404, as everywhere."""

import base64
from typing import Annotated, Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from config.skills import MAX_MANIFEST_BYTES, SLUG, SkillManifest, missing_in_space, undeclared_tools
from gateway.api.spaces import PAGE_LIMIT, _native_reply, request_context, space_context, validated, validated_body
from gateway.context import Reply, RequestContext
from gateway.disconnect import until_disconnect
from gateway.errors import JSON_HEADERS, Conflict, InvalidRequest, NotFound, ShuttingDown
from gateway.http import SSE_HEADERS, json_bytes, json_response, parse_json_object, read_body
from gateway.idempotency import fingerprint, parse_key, record_key
from gateway.runtime import Gateway
from gateway.skills import service
from gateway.skills.published import CHANGED, FULL, IN_SPACE, MAX_PER_SPACE, PUBLISHED
from gateway.skills.records import Execution
from gateway.skills.registry import skill_data

_SLUG: TypeAdapter[str] = TypeAdapter(Annotated[str, StringConstraints(pattern=SLUG)])
_UUID: TypeAdapter[UUID] = TypeAdapter(UUID)
_TOOL_CALL: TypeAdapter[str] = TypeAdapter(Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")])
_STATE: TypeAdapter[str] = TypeAdapter(
    Annotated[str, StringConstraints(pattern="^(queued|running|succeeded|failed|cancelled)$")]
)
_EVENT_ID: TypeAdapter[int] = TypeAdapter(Annotated[int, Field(ge=0)])
_SCAN_PER_PAGE = 1000  # records a filtered page looks at, at most (the rest on the next page)


class CreateExecution(BaseModel):
    model_config = ConfigDict(extra="ignore")

    inputs: dict[str, Any]
    file_source_ids: (
        Annotated[list[Annotated[str, Field(min_length=1, max_length=512)]], Field(max_length=64)] | None
    ) = None
    model: Annotated[str, Field(min_length=1, max_length=256)] | None = None


_CREATE: TypeAdapter[CreateExecution] = TypeAdapter(CreateExecution)
_MANIFEST: TypeAdapter[SkillManifest] = TypeAdapter(SkillManifest)


async def _skill(gw: Gateway, ctx: RequestContext, request: Request) -> SkillManifest:
    slug = validated(_SLUG, request.path_params["slug"], ("path", "slug"))
    skill = await gw.skills.find(ctx.space_id, slug)
    if skill is None:
        raise NotFound(f"Skill '{slug}' not found in this space.")
    return skill


def _context(request: Request, route: str) -> tuple[Gateway, RequestContext]:
    gw: Gateway = request.app.state.gateway
    return gw, space_context(gw, request.scope, route)


async def list_skills(request: Request) -> Response:
    gw, ctx = _context(request, "skills.list")
    limit = validated(PAGE_LIMIT, request.query_params.get("limit", "20"), ("query", "limit"))
    skills = await gw.skills.in_space(ctx.space_id)
    slugs = sorted(skills)
    cursor = request.query_params.get("cursor")
    if cursor:
        after = _decode(cursor)
        slugs = [s for s in slugs if s > after]
    page, has_more = slugs[:limit], len(slugs) > limit
    data = [skill_data(skills[slug][0]) for slug in page]
    return json_response(
        {"data": data, "meta": {"next_cursor": _encode(page[-1]) if has_more else None, "has_more": has_more}}
    )


async def get_skill(request: Request) -> Response:
    gw, ctx = _context(request, "skills.read")
    skill = await _skill(gw, ctx, request)
    versions = [s.version for s in await gw.skills.versions(ctx.space_id, skill.slug)]
    return json_response({"data": {**skill_data(skill), "versions": versions}})


async def list_versions(request: Request) -> Response:
    gw, ctx = _context(request, "skills.versions")
    skill = await _skill(gw, ctx, request)
    data = [skill_data(s) for s in await gw.skills.versions(ctx.space_id, skill.slug)]
    return json_response({"data": data, "meta": {"next_cursor": None, "has_more": False}})


async def publish_skill(request: Request) -> Response:
    """201 with the version published into the space (admin keys only); 422 naming the field of a bad manifest
    (or a tool the tenant or the space lacks); 409 for a version the space has, or the tenant has otherwise."""
    gw, ctx = await request_context(request, "skills.publish", admin=True, what="the space's skills")
    skill: SkillManifest = await validated_body(gw, ctx, request, _MANIFEST, MAX_MANIFEST_BYTES)
    skill = skill.model_copy(update={"source": "published"})
    tenant = ctx.principal.tenant
    problems = undeclared_tools(skill, tenant)
    problems += [
        f"{name!r} is not among the space's tools or skills"
        for name in missing_in_space(skill, ctx.space.tools, await gw.skills.in_space(ctx.space_id))
    ]
    if problems:
        raise InvalidRequest(problems[0], loc=("body", "tools"), input=None)
    if skill.model is not None and gw.catalog.tenant_model(tenant, skill.model) is None:
        raise InvalidRequest(f"'{skill.model}' is not a model of this tenant.", loc=("body", "model"), input=None)
    outcome = await gw.skills.publish(ctx.tenant_id, ctx.space_id, skill)
    if outcome != PUBLISHED:
        what = f"Skill '{skill.slug}' version {skill.version}"
        raise Conflict(
            {
                IN_SPACE: f"{what} is already published in this space; a version is immutable: publish a new one.",
                CHANGED: f"{what} exists in this tenant with another manifest; a version is immutable: "
                "publish a new one.",
                FULL: f"This space holds its limit of {MAX_PER_SPACE} published skill versions.",
            }[outcome],
            code="skill_version_exists" if outcome != FULL else "skill_limit",
        )
    await gw.audit.api_change(ctx, "skills.publish", skill=skill.slug, version=skill.version)
    return json_response({"data": skill_data(skill)}, 201)


async def create_execution(request: Request) -> Response:
    """201 with the queued execution; ``Idempotency-Key`` replays the first answer and never starts another."""
    gw, ctx = _context(request, "skills.executions.create")
    skill = await _skill(gw, ctx, request)
    key = parse_key(request.headers.get("idempotency-key"))
    body = parse_json_object(await read_body(request.receive, ctx.headers, gw.settings.max_body_bytes))
    payload = validated(_CREATE, body, ("body",))
    service.check_inputs(gw, skill, payload.inputs)
    if payload.model is not None:
        await service.check_model(gw, ctx, payload.model)

    async def produce() -> Reply:
        execution = await service.start(gw, ctx, skill, payload, key)
        return Reply(201, json_bytes({"data": execution.data}), list(JSON_HEADERS))

    if key is None:
        reply = await produce()
    else:
        rkey = record_key((ctx.tenant_id, ctx.space_id, ctx.principal.id, ctx.route), key)
        fp = fingerprint("POST", f"/v1/spaces/{ctx.space_id}/skills/{skill.slug}/executions", body)
        reply = await gw.idempotency.run_once(rkey, fp, produce, _native_reply)
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in reply.headers}
    return Response(reply.body, reply.status, headers=headers)


async def _execution(request: Request, gw: Gateway, ctx: RequestContext) -> Execution:
    execution_id = str(validated(_UUID, request.path_params["execution_id"], ("path", "execution_id")))
    execution = await gw.executions.load(execution_id, ctx.tenant_id, ctx.space_id)
    if execution is None:
        raise NotFound(f"Execution '{execution_id}' not found in this space.")
    return execution


async def get_execution(request: Request) -> Response:
    gw, ctx = _context(request, "skills.executions.read")
    return json_response({"data": (await _execution(request, gw, ctx)).data})


async def cancel_execution(request: Request) -> Response:
    """202 when it had not ended (cancelled, cooperatively, within 5 s); 200 when it had already ended."""
    gw, ctx = _context(request, "skills.executions.cancel")
    execution = await _execution(request, gw, ctx)
    if execution.terminal:
        return json_response({"data": execution.data})
    return json_response({"data": (await service.cancel(gw, execution)).data}, 202)


async def list_executions(request: Request) -> Response:
    gw, ctx = _context(request, "skills.executions.list")
    query = request.query_params
    limit = validated(PAGE_LIMIT, query.get("limit", "20"), ("query", "limit"))
    state = validated(_STATE, query["state"], ("query", "state")) if "state" in query else None
    slug = request.path_params.get("slug") or query.get("slug")
    if slug is not None:
        slug = validated(_SLUG, slug, ("query", "slug"))
    position = _position(query["cursor"]) if "cursor" in query else 0
    matches: list[tuple[int, Execution]] = []
    ended, scanned = False, 0
    while len(matches) <= limit and not ended and scanned < _SCAN_PER_PAGE:
        found, ended = await gw.executions.scan(ctx.space_id, position + scanned, 100)
        scanned += 100
        matches += [(p, e) for p, e in found if _matches(e, state, slug)]
    if len(matches) > limit:
        page, next_position = matches[:limit], matches[limit - 1][0] + 1
    else:
        page, next_position = matches, None if ended else position + scanned
    meta = {
        "next_cursor": None if next_position is None else _encode(str(next_position)),
        "has_more": next_position is not None,
    }
    return json_response({"data": [e.data for _, e in page], "meta": meta})


def _matches(execution: Execution, state: str | None, slug: str | None) -> bool:
    data = execution.data
    return (state is None or data["state"] == state) and (slug is None or data["skill_slug"] == slug)


async def download_artifact(request: Request) -> Response:
    """An artifact of an execution of the space (any key with rights on the space; else 403, or 404 for
    another tenant's space)."""
    gw, ctx = _context(request, "skills.executions.artifact")
    execution = await _execution(request, gw, ctx)
    artifact_id = str(validated(_UUID, request.path_params["artifact_id"], ("path", "artifact_id")))
    found = await gw.executions.artifact(execution, artifact_id)
    if found is None:
        raise NotFound(f"Artifact '{artifact_id}' not found for this execution.")
    document_type, body = found
    name = artifact_id + (".json" if document_type == "application/json" else "")
    headers = {"content-disposition": f'attachment; filename="{name}"', "x-content-type-options": "nosniff"}
    return Response(body, media_type=document_type, headers=headers)


async def by_chat_tool_call(request: Request) -> Response:
    """The execution a chat tool call started; 404 until it has one (the caller polls briefly)."""
    gw, ctx = _context(request, "skills.executions.by_tool_call")
    tool_call_id = validated(_TOOL_CALL, request.path_params["tool_call_id"], ("path", "tool_call_id"))
    execution = await gw.executions.by_tool_call(ctx.tenant_id, ctx.space_id, tool_call_id)
    if execution is None:
        raise NotFound(f"No execution for tool call '{tool_call_id}' in this space (yet).")
    return json_response({"data": execution.data})


class ExecutionEvents:
    """``GET …/executions/{id}/events``: its events as SSE (``id:`` the event's index), from after
    ``Last-Event-ID`` (or ``?after=``) on, live until it ends."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        gw, ctx = _context(request, "skills.executions.events")
        execution = await _execution(request, gw, ctx)
        raw = request.headers.get("last-event-id", request.query_params.get("after"))
        after = -1 if raw is None else validated(_EVENT_ID, raw.strip(), ("header", "Last-Event-ID"))
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        with gw.inflight.track():
            try:
                with gw.inflight.interruptible():  # a shutdown ends the stream (a client resumes elsewhere)
                    async for frame in until_disconnect(service.follow(gw, execution.id, after), receive):
                        await send({"type": "http.response.body", "body": frame, "more_body": True})
            except ShuttingDown:
                pass
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _encode(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def _decode(cursor: str) -> str:
    try:
        value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        value = ""
    if not value or len(value) > 128:
        raise InvalidRequest("Invalid cursor.", loc=("query", "cursor"), kind="value_error", input=cursor[:100])
    return value


def _position(cursor: str) -> int:
    value = _decode(cursor)
    if not value.isdigit():
        raise InvalidRequest("Invalid cursor.", loc=("query", "cursor"), kind="value_error", input=cursor[:100])
    return int(value)


def routes(prefix: str) -> list[Route]:
    base = prefix + "/v1/spaces/{space_id}/skills"
    executions = base + "/executions"
    return [
        Route(base, list_skills, methods=["GET"]),
        Route(base, publish_skill, methods=["POST"]),
        Route(executions, list_executions, methods=["GET"]),
        Route(executions + "/by-chat-tool-call/{tool_call_id}", by_chat_tool_call, methods=["GET"]),
        Route(executions + "/{execution_id}", get_execution, methods=["GET"]),
        Route(executions + "/{execution_id}/cancel", cancel_execution, methods=["POST"]),
        Route(executions + "/{execution_id}/events", ExecutionEvents(), methods=["GET"]),
        Route(executions + "/{execution_id}/artifacts/{artifact_id}", download_artifact, methods=["GET"]),
        Route(base + "/{slug}", get_skill, methods=["GET"]),
        Route(base + "/{slug}/versions", list_versions, methods=["GET"]),
        Route(base + "/{slug}/executions", create_execution, methods=["POST"]),
        Route(base + "/{slug}/executions", list_executions, methods=["GET"]),
    ]
