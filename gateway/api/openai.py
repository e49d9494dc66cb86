"""OpenAI-compatible routes: ``POST /v1/chat/completions`` (a thin ASGI callable on the hot path) and
``GET /v1/models`` / ``GET /v1/models/{model}``. Errors render in OpenAI's shape (gateway.errors)."""

from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from config.agents import AGENT_KEY_RE
from gateway import chat
from gateway.agents import StoredAgent
from gateway.call_options import refuse_call_options
from gateway.catalog import AllowedModel
from gateway.context import Surface
from gateway.errors import InvalidRequest, NotFound
from gateway.http import json_response, parse_json_object, read_body, request_headers
from gateway.runtime import Gateway

JSON = "application/json"


def validate_chat_body(body: dict[str, Any]) -> None:
    """The fields the gateway itself reads (model, stream, stream_options, the messages guardrails scan, tools);
    the upstream validates the rest (its 400s pass through). Plain isinstance checks: this is the hot path."""
    refuse_call_options(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages", input=messages)
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"'messages[{i}]' must be an object.", param=f"messages[{i}]")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            where = f"messages[{i}].content"
            raise InvalidRequest(f"'{where}' must be a string or an array.", param=where)
    for key, kinds, what in _CHAT_FIELDS:
        if body.get(key) is not None and not isinstance(body[key], kinds):
            raise InvalidRequest(f"'{key}' must be {what}.", param=key)
    tools = body.get("tools")
    for i, tool in enumerate(tools if isinstance(tools, list) else ()):
        if not isinstance(tool, dict):
            raise InvalidRequest(f"'tools[{i}]' must be an object.", param=f"tools[{i}]")


# (field, type, wording) for the top-level fields the gateway reads.
_CHAT_FIELDS: tuple[tuple[str, type, str], ...] = (
    ("model", str, "a string"),
    ("stream", bool, "a boolean"),
    ("stream_options", dict, "an object"),
    ("tools", list, "an array"),
)


class ChatCompletions:
    """``POST /v1/chat/completions`` as a plain ASGI app: no Request object, no per-request middleware."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gw = self.gw
        headers = request_headers(scope)
        raw = await read_body(receive, headers, gw.settings.max_body_bytes)
        ctx = gw.context(headers, "chat.completions", {}, Surface.CHAT)
        ctx.body = parse_json_object(raw)
        validate_chat_body(ctx.body)
        ctx.stream = ctx.body.get("stream") is True

        async def call(out: Send) -> None:
            if ctx.stream:
                await chat.stream(gw, ctx, out, receive)
            else:
                await chat.complete(gw, ctx, out, receive)

        await gw.run_chain(ctx, send, call)


def _model_object(entry: AllowedModel, owner: str) -> dict[str, Any]:
    created = int(datetime.strptime(entry.added_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp())
    return {"id": entry.model.alias, "object": "model", "created": created, "owned_by": owner}


def _agent_object(stored: StoredAgent, owner: str) -> dict[str, Any] | None:
    """An agent beside the models: its key as the id, marked by an ``agent`` block; None when not invocable."""
    agent = stored.agent
    latest = agent.latest_published()
    if agent.status != "active" or latest is None:
        return None
    created = int(agent.created_at.timestamp()) if agent.created_at else 0
    marker = {"name": agent.name, "description": agent.description, "version": latest.version, "model": latest.model}
    return {"id": agent.key, "object": "model", "created": created, "owned_by": owner, "agent": marker}


async def _agents(gw: Gateway, ctx: Any) -> list[dict[str, Any]]:
    """The space's invocable agents (active, with a published version), as model objects."""
    out = []
    for stored in await gw.agents.registry.list(ctx.tenant_id):
        if ctx.space_id in stored.spaces:
            entry = _agent_object(stored, ctx.principal.tenant.name)
            if entry is not None:
                out.append(entry)
    return out


async def list_models(request: Request) -> Response:
    """Exactly the space's allowed models, then its invocable agents (marked with an ``agent`` block)."""
    gw: Gateway = request.app.state.gateway
    ctx = gw.context(dict(request.scope["headers"]), "models.list", {}, Surface.MODELS)
    entries = await gw.catalog.allowed_models(ctx.principal.tenant, ctx.space)
    data = [_model_object(e, ctx.principal.tenant.name) for e in entries] + await _agents(gw, ctx)
    return json_response({"object": "list", "data": data})


async def retrieve_model(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    ctx = gw.context(dict(request.scope["headers"]), "models.retrieve", {}, Surface.MODELS)
    name = request.path_params["model"]
    for entry in await gw.catalog.allowed_models(ctx.principal.tenant, ctx.space):
        if entry.model.alias == name:
            return json_response(_model_object(entry, ctx.principal.tenant.name))
    if AGENT_KEY_RE.match(name):
        stored = await gw.agents.registry.get(ctx.tenant_id, name)
        if stored is not None and ctx.space_id in stored.spaces:
            entry_ = _agent_object(stored, ctx.principal.tenant.name)
            if entry_ is not None:
                return json_response(entry_)
    shown = name if len(name) <= 100 else name[:100] + "…"
    raise NotFound(f"The model '{shown}' does not exist in this space.", code="model_not_found", param="model")
