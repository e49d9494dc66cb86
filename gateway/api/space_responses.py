"""Native Responses routes of a space (seed 000): ``POST /v1/spaces/{space_id}/responses``, ``GET`` and
``POST …/cancel`` of one response, also under ``/api-proxy``. ``{"data": …}`` envelopes, ISO-8601 times,
FastAPI-shaped errors; streams carry the same events as the OpenAI route."""

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.api.spaces import space_context
from gateway.context import Surface
from gateway.errors import NotFound, Unprocessable
from gateway.http import json_response, parse_json_object, read_body
from gateway.idempotency import parse_key
from gateway.responses.records import StoredResponse
from gateway.responses.render import native_response
from gateway.runtime import Gateway


def _data(record: StoredResponse) -> dict[str, Any]:
    return {"data": native_response(record)}


class CreateSpaceResponse:
    """``POST …/responses``: the body's ``idempotency_key`` counts as the ``Idempotency-Key`` header (both
    present and different: 422); ``tool_mode`` is accepted (``auto_resolve`` default, or ``manual``)."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gw = self.gw
        ctx = space_context(gw, scope, "spaces.responses.create", Surface.NATIVE_RESPONSES)
        ctx.body = parse_json_object(await read_body(receive, ctx.headers, gw.settings.max_body_bytes))
        await gw.responses.admit(ctx, receive)
        header_key = parse_key(ctx.headers.get(b"idempotency-key"))
        body_key = ctx.body.get("idempotency_key")
        if header_key and body_key and header_key != body_key:
            raise Unprocessable("The Idempotency-Key header and the body's idempotency_key differ.")
        ctx.extras["idempotency_key"] = header_key or body_key

        async def call(out: Send) -> None:
            await gw.responses.create(ctx, out, receive, _data)

        await gw.run_chain(ctx, send, call)


async def _record(request: Request, route: str) -> tuple[Gateway, StoredResponse]:
    gw: Gateway = request.app.state.gateway
    ctx = space_context(gw, request.scope, route, Surface.NATIVE_RESPONSES)
    response_id = request.path_params["response_id"]
    record = await gw.responses.get(ctx, response_id)
    if record is None:
        raise NotFound(f"Response '{response_id}' not found in this space.")
    return gw, record


async def get_space_response(request: Request) -> Response:
    _, record = await _record(request, "spaces.responses.read")
    return json_response(_data(record))


async def cancel_space_response(request: Request) -> Response:
    """202 when it was in flight (it is cancelled, cooperatively, within 5 s); 200 when already finished."""
    gw, record = await _record(request, "spaces.responses.cancel")
    if record.terminal:
        return json_response(_data(record))
    return json_response(_data(await gw.responses.cancel(record)), 202)


def routes(gw: Gateway, prefix: str) -> list[Route]:
    base = prefix + "/v1/spaces/{space_id}/responses"
    return [
        Route(base, CreateSpaceResponse(gw), methods=["POST"]),
        Route(base + "/{response_id}", get_space_response, methods=["GET"]),
        Route(base + "/{response_id}/cancel", cancel_space_response, methods=["POST"]),
    ]
