"""``GET /v1/spaces/{space_id}/audit`` (also under ``/api-proxy``): a space's audit log, newest first, for admin
keys only. ``{"data": [...], "meta": {"next_cursor", "has_more"}}``; ``limit`` 1–100 (default 20)."""

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.spaces import PAGE_LIMIT, space_context, validated
from gateway.errors import PermissionDenied
from gateway.http import json_response
from gateway.runtime import Gateway


async def list_audit(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    ctx = space_context(gw, request.scope, "spaces.audit.list")
    if not ctx.principal.is_admin:
        raise PermissionDenied("Reading the audit log requires an admin key.")
    limit = validated(PAGE_LIMIT, request.query_params.get("limit", "20"), ("query", "limit"))
    entries, next_cursor = await gw.audit.page(ctx.tenant_id, ctx.space_id, limit, request.query_params.get("cursor"))
    body = {"data": entries, "meta": {"next_cursor": next_cursor, "has_more": next_cursor is not None}}
    return json_response(body)


def routes(prefix: str) -> list[Route]:
    return [Route(prefix + "/v1/spaces/{space_id}/audit", list_audit, methods=["GET"])]
