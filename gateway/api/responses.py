"""OpenAI-compatible Responses routes: create (a thin ASGI callable), retrieve (and resume with
``?stream=true&starting_after=N`` or ``Last-Event-ID: N``), delete, cancel, input_items."""

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.api.spaces import PAGE_LIMIT
from gateway.context import Surface
from gateway.errors import BadRequest, InvalidRequest, NotFound
from gateway.http import json_response, parse_json_object, read_body, request_headers
from gateway.responses.records import StoredResponse
from gateway.responses.render import openai_response
from gateway.runtime import Gateway

JSON_TYPE = "application/json"
_INT: TypeAdapter[int] = TypeAdapter(int)
_SEQUENCE: TypeAdapter[int] = TypeAdapter(Annotated[int, Field(ge=0)])  # an event's sequence number


class CreateResponse:
    """``POST /v1/responses``: the policy chain around one Responses turn. The client API's route is the same
    with its own surface, and ``shape`` reading its own fields into the body first."""

    def __init__(
        self,
        gw: Gateway,
        surface: Surface = Surface.RESPONSES,
        route: str = "responses.create",
        shape: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.gw, self.surface, self.route, self.shape = gw, surface, route, shape

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gw = self.gw
        headers = request_headers(scope)
        raw = await read_body(receive, headers, gw.settings.max_body_bytes)
        ctx = gw.context(headers, self.route, {}, self.surface)
        ctx.body = parse_json_object(raw)
        if self.shape is not None:
            self.shape(ctx.body)
        await gw.responses.admit(ctx, receive)

        async def call(out: Send) -> None:
            await gw.responses.create(ctx, out, receive, openai_response)

        await gw.run_chain(ctx, send, call)


async def _record(request: Request) -> tuple[Gateway, StoredResponse]:
    gw: Gateway = request.app.state.gateway
    ctx = gw.context(dict(request.scope["headers"]), "responses.read", {}, Surface.RESPONSES)
    response_id = request.path_params["response_id"]
    record = await gw.responses.get(ctx, response_id)
    if record is None:
        raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
    return gw, record


def _int_param(request: Request, name: str, adapter: TypeAdapter[int], default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return adapter.validate_python(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        raise InvalidRequest(f"Invalid '{name}': {err['msg']}.", param=name, loc=("query", name), input=raw) from None


def _last_event_id(request: Request, default: int) -> int:
    """The ``Last-Event-ID`` an EventSource sends when it reconnects: the last sequence number it saw."""
    raw = request.headers.get("last-event-id")
    if raw is None:
        return default
    try:
        return _SEQUENCE.validate_python(raw.strip())
    except ValidationError:
        raise InvalidRequest(
            "Invalid 'Last-Event-ID': must be a non-negative integer.", param="Last-Event-ID", loc=("header",)
        ) from None


class RetrieveResponse:
    """``GET /v1/responses/{id}``; with ``stream=true``, the events after ``starting_after`` (then live ones)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        gw, record = await _record(request)
        if request.query_params.get("stream") in ("true", "1"):
            after = _int_param(request, "starting_after", _SEQUENCE, -1)
            if "starting_after" not in request.query_params:
                after = _last_event_id(request, after)
            with gw.inflight.track():  # a shutdown ends the replay with an error event
                await gw.responses.replay(record, after, send, receive)
            return
        await json_response(openai_response(record))(scope, receive, send)


async def delete_response(request: Request) -> Response:
    gw, record = await _record(request)
    await gw.responses.records.delete(record.id)
    return json_response({"id": record.id, "object": "response", "deleted": True})


async def cancel_response(request: Request) -> Response:
    """Only background responses can be cancelled (OpenAI's rule); a finished one is returned as it is."""
    gw, record = await _record(request)
    if not record.response.get("background"):
        raise BadRequest("Only responses created with background=true can be cancelled.", code="not_cancellable")
    if not record.terminal:
        record = await gw.responses.cancel(record)
    return json_response(openai_response(record))


async def list_input_items(request: Request) -> Response:
    _, record = await _record(request)
    limit = _int_param(request, "limit", PAGE_LIMIT, 20)
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("'order' must be 'asc' or 'desc'.", param="order", loc=("query", "order"), input=order)
    items = list(record.input_items if order == "asc" else reversed(record.input_items))
    after = request.query_params.get("after")
    if after:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise InvalidRequest(f"Item '{after}' is not an input item of this response.", param="after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return json_response(
        {
            "object": "list",
            "data": page,
            "first_id": page[0].get("id") if page else None,
            "last_id": page[-1].get("id") if page else None,
            "has_more": len(items) > limit,
        }
    )
