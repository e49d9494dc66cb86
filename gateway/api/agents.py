"""The native agents API of a space (``/v1/spaces/{space_id}/agents``, also under ``/api-proxy``): list and read
the agents the space lists; with an admin key, create one (listed in this space), change its name, description
or status, add a version (a draft), change a draft, publish it. Published versions never change. Everything is
kept in the store (visible on every replica at once) and audited. ``{"data": …}`` envelopes, FastAPI-shaped
errors (422 for a malformed body or path, 409 for a key taken or a version already published)."""

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from config.agents import AGENT_KEY_RE, MAX_VERSION, Agent, AgentHead, AgentSettings, AgentVersion, Status
from gateway.agents import StoredAgent, builtin_policies, load_agent_policies
from gateway.agents.invoke import shown
from gateway.api.spaces import request_context, validated, validated_body
from gateway.context import RequestContext
from gateway.errors import Conflict, InvalidRequest, NotFound
from gateway.http import json_response
from gateway.policy import PolicyConfigError
from gateway.runtime import Gateway

_VERSION: TypeAdapter[int] = TypeAdapter(Annotated[int, Field(ge=1, le=MAX_VERSION)])


class AgentUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=256)
    description: str | None = Field(None, max_length=2000)
    status: Status | None = None


_HEAD: TypeAdapter[AgentHead] = TypeAdapter(AgentHead)
_SETTINGS: TypeAdapter[AgentSettings] = TypeAdapter(AgentSettings)
_UPDATE: TypeAdapter[AgentUpdate] = TypeAdapter(AgentUpdate)


def version_data(v: AgentVersion) -> dict[str, Any]:
    return v.model_dump(mode="json")


def agent_data(agent: Agent) -> dict[str, Any]:
    return {
        "key": agent.key,
        "name": agent.name,
        "description": agent.description,
        "status": agent.status,
        "created_at": agent.created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if agent.created_at else None,
        "versions": [version_data(v) for v in agent.versions],
    }


async def _context(request: Request, route: str, admin: bool = False) -> tuple[Gateway, RequestContext]:
    return await request_context(request, route, admin, "agents")


async def _tenant_agent(gw: Gateway, ctx: RequestContext, key: str) -> StoredAgent | None:
    """The tenant's agent of the path's key, listed in this space or not (a malformed key is none)."""
    return await gw.agents.registry.get(ctx.tenant_id, key) if AGENT_KEY_RE.match(key) else None


async def _agent(gw: Gateway, ctx: RequestContext, request: Request) -> StoredAgent:
    key = request.path_params["agent_key"]
    stored = await _tenant_agent(gw, ctx, key)
    if stored is None or ctx.space_id not in stored.spaces:
        raise NotFound(f"Agent '{shown(key)}' not found in this space.")
    return stored


async def list_agents(request: Request) -> Response:
    gw, ctx = await _context(request, "spaces.agents.list")
    agents = [agent_data(a.agent) for a in await gw.agents.registry.list(ctx.tenant_id) if ctx.space_id in a.spaces]
    return json_response({"data": agents})


async def get_agent(request: Request) -> Response:
    gw, ctx = await _context(request, "spaces.agents.read")
    return json_response({"data": agent_data((await _agent(gw, ctx, request)).agent)})


async def create_agent(request: Request) -> Response:
    gw, ctx = await _context(request, "spaces.agents.create", admin=True)
    head: AgentHead = await validated_body(gw, ctx, request, _HEAD)
    if ctx.catalog.tenant_model(ctx.principal.tenant, head.key) is not None:
        raise Conflict(f"'{head.key}' is the alias of a model of this tenant; an agent needs another key.")
    stored = await gw.agents.registry.create(ctx.tenant_id, head, ctx.space_id)
    if stored is None:
        raise Conflict(f"An agent with key '{head.key}' exists already.", code="agent_exists")
    await gw.audit.api_change(ctx, "agents.create", agent_key=head.key)
    return json_response({"data": agent_data(stored.agent)}, 201)


async def update_agent(request: Request) -> Response:
    gw, ctx = await _context(request, "spaces.agents.update", admin=True)
    stored = await _agent(gw, ctx, request)
    update: AgentUpdate = await validated_body(gw, ctx, request, _UPDATE)
    fields = {k: v for k, v in update.model_dump().items() if v is not None}
    if not fields:
        raise InvalidRequest("Nothing to change: give name, description or status.", loc=("body",), input={})
    if not await gw.agents.registry.update(ctx.tenant_id, stored.agent.key, fields):
        raise NotFound(f"Agent '{stored.agent.key}' not found in this space.")
    await gw.audit.api_change(ctx, "agents.update", agent_key=stored.agent.key, changed=sorted(fields))
    return json_response({"data": agent_data(await _reread(gw, ctx, stored))})


async def list_agent_here(request: Request) -> Response:
    """``PUT …/agents/{key}/listing``: list one of the tenant's agents (made in another space) in this space too."""
    gw, ctx = await _context(request, "spaces.agents.listing", admin=True)
    key = request.path_params["agent_key"]
    stored = await _tenant_agent(gw, ctx, key)
    if stored is None or not await gw.agents.registry.list_in(ctx.tenant_id, key, ctx.space_id):
        raise NotFound(f"Agent '{shown(key)}' not found in this tenant.")
    if ctx.space_id not in stored.spaces:
        await gw.audit.api_change(ctx, "agents.list", agent_key=key)
    return json_response({"data": agent_data(await _reread(gw, ctx, stored))})


async def unlist_agent_here(request: Request) -> Response:
    """``DELETE …/agents/{key}/listing``: this space no longer lists the agent (its requests to it answer 403, as
    for any agent the space does not list); the agent itself, its versions and other spaces' lists stay."""
    gw, ctx = await _context(request, "spaces.agents.listing", admin=True)
    stored = await _agent(gw, ctx, request)
    if not await gw.agents.registry.unlist(ctx.tenant_id, stored.agent.key, ctx.space_id):
        raise NotFound(f"Agent '{stored.agent.key}' not found in this space.")
    await gw.audit.api_change(ctx, "agents.unlist", agent_key=stored.agent.key)
    return Response(status_code=204)


async def _reread(gw: Gateway, ctx: RequestContext, stored: StoredAgent) -> Agent:
    fresh = await gw.agents.registry.get(ctx.tenant_id, stored.agent.key)
    return fresh.agent if fresh is not None else stored.agent


def _check_settings(ctx: RequestContext, settings: AgentSettings) -> None:
    """What the catalogue checks at start, for a version sent to the API: its model, tools and policies."""
    tenant = ctx.principal.tenant
    if ctx.catalog.tenant_model(tenant, settings.model) is None:
        raise InvalidRequest(f"'{shown(settings.model)}' is not a model of this tenant.", loc=("body", "model"))
    tools = {s.label for s in tenant.mcp_servers} | {t.name for t in tenant.http_tools}
    for i, tool in enumerate(settings.tools):
        if tool not in tools:
            message = f"'{tool}' is not an MCP server or HTTP tool of this tenant."
            raise InvalidRequest(message, loc=("body", "tools", i))
    allowed = builtin_policies()
    for i, policy in enumerate(settings.policies):
        if policy.use not in allowed:
            message = f"Policy '{shown(policy.use)}' is not a built-in one ({', '.join(sorted(allowed))})."
            raise InvalidRequest(message, loc=("body", "policies", i, "use"))
    try:
        load_agent_policies(settings.policies)
    except PolicyConfigError as exc:
        raise InvalidRequest(str(exc)[:500], loc=("body", "policies")) from None


async def add_version(request: Request) -> Response:
    gw, ctx = await _context(request, "spaces.agents.versions.create", admin=True)
    stored = await _agent(gw, ctx, request)
    settings: AgentSettings = await validated_body(gw, ctx, request, _SETTINGS)
    _check_settings(ctx, settings)
    number = await gw.agents.registry.add_version(ctx.tenant_id, stored.agent.key, settings)
    if number == -1:
        raise Conflict(f"Agent '{stored.agent.key}' has the most versions an agent may have.", code="too_many")
    if number == 0:
        raise NotFound(f"Agent '{stored.agent.key}' not found in this space.")
    await gw.audit.api_change(ctx, "agents.versions.create", agent_key=stored.agent.key, version=number)
    version = AgentVersion(version=number, published=False, **settings.model_dump())
    return json_response({"data": version_data(version)}, 201)


async def edit_version(request: Request) -> Response:
    """A draft may change; a published version is immutable (409)."""
    gw, ctx = await _context(request, "spaces.agents.versions.update", admin=True)
    stored = await _agent(gw, ctx, request)
    number = validated(_VERSION, request.path_params["version"], ("path", "version"))
    settings: AgentSettings = await validated_body(gw, ctx, request, _SETTINGS)
    _check_settings(ctx, settings)
    outcome = await gw.agents.registry.edit_draft(ctx.tenant_id, stored.agent.key, number, settings)
    _version_outcome(outcome, stored.agent.key, number, "is published: published versions never change")
    await gw.audit.api_change(ctx, "agents.versions.update", agent_key=stored.agent.key, version=number)
    return json_response({"data": version_data(AgentVersion(version=number, published=False, **settings.model_dump()))})


async def publish_version(request: Request) -> Response:
    gw, ctx = await _context(request, "spaces.agents.versions.publish", admin=True)
    stored = await _agent(gw, ctx, request)
    number = validated(_VERSION, request.path_params["version"], ("path", "version"))
    outcome = await gw.agents.registry.publish(ctx.tenant_id, stored.agent.key, number)
    _version_outcome(outcome, stored.agent.key, number, "is published already")
    await gw.audit.api_change(ctx, "agents.versions.publish", agent_key=stored.agent.key, version=number)
    version = (await _reread(gw, ctx, stored)).version(number)
    return json_response({"data": version_data(version) if version else None})


def _version_outcome(outcome: int, key: str, number: int, published: str) -> None:
    if outcome == 0:
        raise NotFound(f"Agent '{key}' has no version {number}.")
    if outcome == -1:
        raise Conflict(f"Version {number} of agent '{key}' {published}.", code="version_immutable")


def routes(prefix: str) -> list[Route]:
    base = prefix + "/v1/spaces/{space_id}/agents"
    one = base + "/{agent_key}"
    return [
        Route(base, list_agents, methods=["GET"]),
        Route(base, create_agent, methods=["POST"]),
        Route(one, get_agent, methods=["GET"]),
        Route(one, update_agent, methods=["PATCH"]),
        Route(one + "/listing", list_agent_here, methods=["PUT"]),
        Route(one + "/listing", unlist_agent_here, methods=["DELETE"]),
        Route(one + "/versions", add_version, methods=["POST"]),
        Route(one + "/versions/{version}", edit_version, methods=["PATCH"]),
        Route(one + "/versions/{version}/publish", publish_version, methods=["POST"]),
    ]
