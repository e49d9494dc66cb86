"""The client API of seed 004 (``/api/client/v1``): list and read the space's agents, invoke one through the
Responses format. Errors are ``{"error": "<message>"}`` (``Surface.CLIENT``); the space is the key's default,
or the one named with ``X-Space-Id`` / ``OpenAI-Project``, as on the OpenAI routes.

``POST …/responses`` (and ``…/agents/responses``, the same) takes ``{model, input, previous_response_id,
version}``: ``model`` an agent key, ``version`` a published version to pin (else the latest published, or, in a
continued conversation, the version it started on). Every other Responses field is accepted as on
``/v1/responses``; the answer is a Response object (``model`` the agent key, ``usage.total_tokens``,
``created_at`` in seconds).
"""

from datetime import UTC
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Scope

from config.agents import AGENT_KEY_RE, MAX_VERSION, Agent
from gateway.agents import StoredAgent
from gateway.agents.invoke import shown
from gateway.api.responses import CreateResponse
from gateway.context import RequestContext, Surface
from gateway.errors import BadRequest, NotFound
from gateway.http import json_response, request_headers
from gateway.runtime import Gateway

BASE = "/api/client/v1"
STATUSES = ("active", "inactive", "draft")


def agent_data(agent: Agent) -> dict[str, Any]:
    """An agent in the seed's shape: its config is the version that runs (the latest published; else the latest)."""
    version = agent.latest_published() or (agent.versions[-1] if agent.versions else None)
    at = agent.created_at
    created = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z" if at else None
    return {
        "key": agent.key,
        "name": agent.name,
        "description": agent.description,
        "config": {
            "modelKey": version.model if version else None,
            "temperature": version.temperature if version else None,
            "topP": version.top_p if version else None,
            "maxTokens": version.max_output_tokens if version else None,
        },
        "version": version.version if version else None,
        "status": agent.status,
        "createdAt": created,
    }


def _context(gw: Gateway, scope: Scope, route: str) -> RequestContext:
    return gw.context(request_headers(scope), route, {}, Surface.CLIENT)


async def list_agents(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    ctx = _context(gw, request.scope, "client.agents.list")
    status = request.query_params.get("status")
    if status is not None and status not in STATUSES:
        raise BadRequest(f"'status' must be one of {', '.join(STATUSES)}.")
    agents = [
        agent_data(a.agent)
        for a in await gw.agents.registry.list(ctx.tenant_id)
        if ctx.space_id in a.spaces and (status is None or a.agent.status == status)
    ]
    return json_response({"agents": agents})


async def visible_agent(gw: Gateway, ctx: RequestContext, key: str) -> StoredAgent:
    """The agent of that key listed in the request's space; 404 otherwise (a malformed key included)."""
    stored = await gw.agents.registry.get(ctx.tenant_id, key) if AGENT_KEY_RE.match(key) else None
    if stored is None or ctx.space_id not in stored.spaces:
        raise NotFound(f"Agent '{shown(key)}' not found.", code="agent_not_found")
    return stored


async def get_agent(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    ctx = _context(gw, request.scope, "client.agents.read")
    stored = await visible_agent(gw, ctx, request.path_params["agent_key"])
    return json_response({"agent": agent_data(stored.agent)})


def agent_target(body: dict[str, Any]) -> None:
    """The body's agent (``model``, pinned by ``version``) as the resolver reads it: ``key`` or ``key@version``."""
    model = body.get("model")
    if model is None or model == "":
        raise BadRequest("'model' is required: the key of the agent to invoke.")
    if not isinstance(model, str):
        raise BadRequest("'model' must be a string: the key of the agent to invoke.")
    version = body.pop("version", None)
    if version is None:
        return
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= MAX_VERSION:
        raise BadRequest("'version' must be a positive integer: a published version of the agent.")
    if "@" in model:
        raise BadRequest("Give the version either in 'model' ('key@3') or in 'version', not both.")
    body["model"] = f"{model}@{version}"


def routes(gw: Gateway) -> list[Route]:
    invoke = CreateResponse(gw, Surface.CLIENT, "client.responses.create", agent_target)
    return [
        Route(BASE + "/agents", list_agents, methods=["GET"]),
        Route(BASE + "/agents/responses", invoke, methods=["POST"]),
        Route(BASE + "/agents/{agent_key}", get_agent, methods=["GET"]),
        Route(BASE + "/responses", invoke, methods=["POST"]),
    ]
