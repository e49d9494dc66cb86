"""Native routes of a space (``/v1/spaces/{space_id}/…``, also under ``/api-proxy``): ``{"data": …}``
envelopes, ISO-8601 times, FastAPI-shaped errors. Here: the space's allowed models (list, add, remove)."""

import base64
from typing import Annotated, Any
from uuid import UUID

from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Scope

from config.catalog import Space
from gateway.catalog import AllowedModel
from gateway.context import Reply, RequestContext, Surface
from gateway.errors import (
    JSON_HEADERS,
    BadRequest,
    Conflict,
    GatewayError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    render_error,
)
from gateway.http import bearer_key, json_bytes, json_response, parse_json_object, read_body, request_headers
from gateway.idempotency import fingerprint, parse_key, record_key
from gateway.logs import bounded
from gateway.runtime import Gateway

_UUID: TypeAdapter[UUID] = TypeAdapter(UUID)
PAGE_LIMIT: TypeAdapter[int] = TypeAdapter(Annotated[int, Field(ge=1, le=100)])  # every paged list


class AddAllowedModel(BaseModel):
    tenant_model_id: UUID


_ADD_ALLOWED_MODEL: TypeAdapter[AddAllowedModel] = TypeAdapter(AddAllowedModel)


def validated(adapter: TypeAdapter[Any], raw: Any, loc: tuple[str, ...]) -> Any:
    try:
        return adapter.validate_python(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        raise InvalidRequest(err["msg"], loc=loc + tuple(err["loc"]), kind=err["type"], input=raw) from None


async def validated_body(
    gw: Gateway, ctx: RequestContext, request: Request, adapter: TypeAdapter[Any], limit: int | None = None
) -> Any:
    """The JSON body (at most ``limit`` bytes, else the gateway's limit) validated; a 422 names the field and
    repeats its value bounded (never the whole body)."""
    limit = min(limit or gw.settings.max_body_bytes, gw.settings.max_body_bytes)
    raw = parse_json_object(await read_body(request.receive, ctx.headers, limit))
    try:
        return adapter.validate_python(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        value = err.get("input")
        if isinstance(value, str):
            value = bounded(value, 100)
        elif isinstance(value, dict | list):
            value = None
        raise InvalidRequest(
            bounded(err["msg"], 300), loc=("body", *err["loc"]), kind=err["type"], input=value
        ) from None


def space_context(gw: Gateway, scope: Scope, route: str, surface: Surface = Surface.NATIVE) -> RequestContext:
    """401 for a bad key, 422 for a malformed space id, 404 for another tenant's space, 403 without rights."""
    headers = request_headers(scope)
    gw.catalog.authenticate(bearer_key(headers))
    space_id = validated(_UUID, scope["path_params"]["space_id"], ("path", "space_id"))
    return gw.context(headers, route, {}, surface, space_id=str(space_id))


async def request_context(
    request: Request, route: str, admin: bool = False, what: str = "the space's allowed models"
) -> tuple[Gateway, RequestContext]:
    """The gateway and the context of a native request on a space; 403 when ``admin`` and the key is not."""
    gw: Gateway = request.app.state.gateway
    ctx = space_context(gw, request.scope, route)
    if admin and not ctx.principal.is_admin:
        raise PermissionDenied(f"This key may not change {what} (admin role required).")
    return gw, ctx


def allowed_model_data(entry: AllowedModel, space: Space) -> dict[str, Any]:
    m = entry.model
    return {
        "tenant_model_id": str(m.id),
        "alias": m.alias,
        "is_enabled": True,
        "is_default": space.default_model in (m.alias, str(m.id)),
        "context_window": m.context_window,
        "capabilities": list(m.capabilities),
        "reasoning": {"enabled": m.reasoning},
        "logo_url": m.logo_url,
        "logo_url_dark": m.logo_url_dark,
        "added_at": entry.added_at,
    }


def _cursor_of(entry: AllowedModel) -> str:
    return base64.urlsafe_b64encode(f"{entry.added_at}|{entry.model.id}".encode()).decode().rstrip("=")


def _position(cursor: str) -> tuple[str, str]:
    try:
        added_at, _, model_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition("|")
    except (ValueError, UnicodeDecodeError):
        added_at = model_id = ""
    if not model_id:
        raise InvalidRequest("Invalid cursor.", loc=("query", "cursor"), kind="value_error", input=cursor)
    return added_at, model_id


async def list_allowed(request: Request) -> Response:
    gw, ctx = await request_context(request, "spaces.models.list")
    limit = validated(PAGE_LIMIT, request.query_params.get("limit", "20"), ("query", "limit"))
    entries = await gw.catalog.allowed_models(ctx.principal.tenant, ctx.space)
    cursor = request.query_params.get("cursor")
    if cursor:
        after = _position(cursor)
        entries = [e for e in entries if (e.added_at, str(e.model.id)) > after]
    page, has_more = entries[:limit], len(entries) > limit
    body = {
        "data": [allowed_model_data(e, ctx.space) for e in page],
        "meta": {"next_cursor": _cursor_of(page[-1]) if has_more else None, "has_more": has_more},
    }
    return json_response(body)


async def _add(gw: Gateway, ctx: RequestContext, model_id: UUID) -> Reply:
    model = gw.catalog.tenant_model(ctx.principal.tenant, str(model_id))
    if model is None:
        raise NotFound(f"Tenant model '{model_id}' not found.")
    entry = await gw.catalog.allow(ctx.space, model)
    if entry is None:
        raise Conflict(f"Model '{model.alias}' is already allowed in this space.", code="already_allowed")
    await gw.audit.admin_change(ctx, "allowed_models.add", str(model.id))
    return Reply(201, json_bytes({"data": allowed_model_data(entry, ctx.space)}), list(JSON_HEADERS))


def _native_reply(exc: GatewayError) -> Reply:
    status, headers, body = render_error(exc, "native")
    return Reply(status, body, headers)


async def add_allowed(request: Request) -> Response:
    """Idempotency-Key required: a retry replays the first answer and never adds twice."""
    gw, ctx = await request_context(request, "spaces.models.create", admin=True)
    key = parse_key(request.headers.get("idempotency-key"))
    if key is None:
        raise BadRequest("The Idempotency-Key header is required for this request.")
    body = parse_json_object(await read_body(request.receive, ctx.headers, gw.settings.max_body_bytes))
    payload = validated(_ADD_ALLOWED_MODEL, body, ("body",))
    rkey = record_key((ctx.tenant_id, ctx.space_id, ctx.principal.id, ctx.route), key)
    fp = fingerprint("POST", f"/v1/spaces/{ctx.space_id}/models", body)
    reply = await gw.idempotency.run_once(rkey, fp, lambda: _add(gw, ctx, payload.tenant_model_id), _native_reply)
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in reply.headers}
    return Response(reply.body, reply.status, headers=headers)


async def remove_allowed(request: Request) -> Response:
    gw, ctx = await request_context(request, "spaces.models.delete", admin=True)
    model_id = validated(_UUID, request.path_params["tenant_model_id"], ("path", "tenant_model_id"))
    if not await gw.catalog.disallow(ctx.space, model_id):
        raise NotFound(f"Model '{model_id}' is not allowed in this space.")
    await gw.audit.admin_change(ctx, "allowed_models.remove", str(model_id))
    return Response(status_code=204)


def routes(prefix: str) -> list[Route]:
    base = prefix + "/v1/spaces/{space_id}/models"
    return [
        Route(base, list_allowed, methods=["GET"]),
        Route(base, add_allowed, methods=["POST"]),
        Route(base + "/{tenant_model_id}", remove_allowed, methods=["DELETE"]),
    ]
