"""Small ASGI helpers shared by every route: bounded body reading, JSON parsing with the right error, sending."""

from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.errors import BadRequest, InvalidRequest, PayloadTooLarge

Headers = list[tuple[bytes, bytes]]
SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


# Headers whose second copy would silently lose to the first in a dict: refused instead of guessed.
_SINGLE_VALUED = (b"idempotency-key",)


def request_headers(scope: Scope) -> dict[bytes, bytes]:
    """A request's headers by (lower-case) name; 400 when a single-valued header such as ``Idempotency-Key`` is
    sent twice (which of two keys the caller meant cannot be known). One length comparison when none repeats."""
    raw: list[tuple[bytes, bytes]] = scope["headers"]
    headers = dict(raw)
    if len(headers) != len(raw):
        for name in _SINGLE_VALUED:
            if sum(1 for key, _ in raw if key == name) > 1:
                raise BadRequest(f"The {name.decode().title()} header may be sent only once.")
    return headers


async def read_body(receive: Receive, headers: dict[bytes, bytes], limit: int) -> bytes:
    """The whole request body, refusing (413) anything over ``limit`` bytes before reading it when possible."""
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body of {int(declared)} bytes exceeds the limit of {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away mid-body
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or InvalidRequest (400 on OpenAI routes, 422 json_invalid on native ones)."""
    if not body:
        raise InvalidRequest("The request body is empty; a JSON object is expected.", kind="missing", input=None)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request: {exc.msg}.",
            loc=("body", exc.pos),
            kind="json_invalid",
            input={},
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", kind="model_attributes_type", input=data)
    return data


def bearer_key(headers: dict[bytes, bytes]) -> str | None:
    """The API key from ``Authorization: Bearer`` or ``X-API-Key``."""
    auth = headers.get(b"authorization")
    if auth is not None:
        scheme, _, token = auth.partition(b" ")
        if scheme.lower() == b"bearer" and token.strip():
            return token.strip().decode("latin-1")
    key = headers.get(b"x-api-key")
    return key.decode("latin-1") if key else None


async def send_bytes(send: Send, status: int, headers: Headers, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def json_bytes(data: Any) -> bytes:
    return orjson.dumps(data)


def json_copy(value: Any) -> Any:
    """A deep copy of JSON data: a dozen times faster than ``copy.deepcopy``, through orjson."""
    return value if value is None else orjson.loads(orjson.dumps(value))


def json_response(data: Any, status: int = 200) -> Response:
    """A JSON answer, serialised by orjson."""
    return Response(json_bytes(data), status, media_type="application/json")
