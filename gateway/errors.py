"""One exception tree for everything a caller can be told, rendered in exactly one place.

    GatewayError                      status  OpenAI type
    ├── InvalidRequest                400*    invalid_request_error   (*native routes: 422 {"detail": [...]})
    ├── BadRequest                    400     invalid_request_error   (native routes: 400 {"detail": "..."})
    ├── AuthenticationFailed          401     authentication_error
    ├── PermissionDenied              403     permission_error
    ├── NotFound                      404     not_found_error
    ├── Conflict                      409     conflict_error          (idempotent request still in flight)
    ├── PayloadTooLarge               413     invalid_request_error
    ├── Unprocessable                 422     invalid_request_error   (same Idempotency-Key, another body)
    ├── RateLimited                   429     rate_limit_error
    ├── BudgetExceeded                429     insufficient_quota      (x-should-retry: false)
    ├── StoreUnavailable              503     server_error
    ├── ShuttingDown                  503     server_error            (a request cut by the gateway's shutdown)
    └── UpstreamError                 502     upstream_error
        ├── UpstreamRejected          (the upstream's own 4xx/429 status, passed through)
        ├── UpstreamUnavailable       502/503
        └── UpstreamTimeout           504

OpenAI routes render ``{"error": {"message", "type", "param", "code"}}``; native routes render FastAPI's
shapes: ``{"detail": "<message>"}``, and ``{"detail": [{"loc", "msg", "type", "input"}]}`` for validation; the
client API (``/api/client/v1``, seed 004) renders ``{"error": "<message>"}``.
"""

from typing import Any

import orjson

Headers = list[tuple[bytes, bytes]]
JSON_HEADERS: Headers = [(b"content-type", b"application/json")]
REDACTED = "***"


class GatewayError(Exception):
    """Base of every error the gateway answers with; carries status, OpenAI type/code and extra headers."""

    status_code = 500
    error_type = "server_error"
    code: str | None = None
    # a refusal that holds only for the moment (a rate limit, a budget): the same request may pass later, so an
    # idempotent answer must not be recorded from it
    momentary = False
    logged = False  # its request's log line was written (by the request's own end, gateway.logs)

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code


class InvalidRequest(GatewayError):
    """The caller sent something malformed. ``loc``/``kind``/``input`` feed the native 422 detail list."""

    status_code = 400
    error_type = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        loc: tuple[str | int, ...] | None = None,
        kind: str = "value_error",
        input: Any = None,
        code: str | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.loc = loc or (("body", param) if param else ("body",))
        self.kind = kind
        self.input = input
        self.details = details  # several failures, each {loc, msg, type, input}: the native 422 lists them all


class BadRequest(GatewayError):
    """A 400 that is not a field validation failure (e.g. a required Idempotency-Key is missing)."""

    status_code = 400
    error_type = "invalid_request_error"


class AuthenticationFailed(GatewayError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status_code = 403
    error_type = "permission_error"


class NotFound(GatewayError):
    status_code = 404
    error_type = "not_found_error"


class Conflict(GatewayError):
    status_code = 409
    error_type = "conflict_error"


class PayloadTooLarge(GatewayError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class Unprocessable(GatewayError):
    status_code = 422
    error_type = "invalid_request_error"


class RateLimited(GatewayError):
    status_code = 429
    error_type = "rate_limit_error"
    momentary = True


class BudgetExceeded(GatewayError):
    """A hard budget would be exceeded: 429 ``insufficient_quota``, and clients are told not to retry."""

    status_code = 429
    error_type = "insufficient_quota"
    code = "insufficient_quota"
    momentary = True

    def __init__(self, message: str, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.headers.setdefault("x-should-retry", "false")


class StoreUnavailable(GatewayError):
    status_code = 503
    error_type = "server_error"
    code = "store_unavailable"


class ShuttingDown(GatewayError):
    """The gateway stopped this request because it is shutting down; a retry reaches another instance."""

    status_code = 503
    error_type = "server_error"
    code = "gateway_shutting_down"

    def __init__(self, message: str = "The gateway is shutting down; retry the request.") -> None:
        # the connection closes too: a client retrying on it would reach this instance again
        super().__init__(message, headers={"Retry-After": "1", "Connection": "close"})


class UpstreamError(GatewayError):
    """The upstream failed; never the caller's fault. Upstream credentials never appear in the message."""

    status_code = 502
    error_type = "upstream_error"
    code = "upstream_error"


class UpstreamRejected(UpstreamError):
    """The upstream refused the request with a 4xx/429: its status (and Retry-After) reach the caller."""

    error_type = "invalid_request_error"


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    code = "upstream_timeout"


def redact_secret(text: str, secret: str | None) -> str:
    """``text`` with a deployment's credential replaced by ``***``: providers echo the key they were sent in
    their "invalid key" messages. The one redaction of credentials, for mapped errors and relayed error events."""
    return text.replace(secret, REDACTED) if secret else text


def redact_secret_bytes(data: bytes, secret: str | None) -> bytes:
    """``redact_secret`` over raw JSON or SSE bytes: the key as sent, and as JSON escapes it."""
    if not secret:
        return data
    raw, escaped = secret.encode(), orjson.dumps(secret)[1:-1]
    data = data.replace(raw, REDACTED.encode())
    return data.replace(escaped, REDACTED.encode()) if escaped != raw else data


def is_native(path: str) -> bool:
    """Native routes (``/v1/spaces/…``, ``/api-proxy/…``) answer in FastAPI's shapes, the rest in OpenAI's."""
    return path.startswith("/v1/spaces") or path.startswith("/api-proxy/")


def error_shape(path: str) -> str:
    """The error shape of a route by its path (for the app's exception handlers): ``client`` for the client API
    (``/api/client/…``), ``native`` for the native routes, else ``openai``."""
    if path.startswith("/api/client/"):
        return "client"
    return "native" if is_native(path) else "openai"


def render_error(exc: GatewayError, shape: bool | str) -> tuple[int, Headers, bytes]:
    """The one place an error becomes status, headers and body; ``shape`` is a surface's ``errors`` (``openai``,
    ``native``, ``client``), or a bool (native or not)."""
    status = exc.status_code
    native = shape is True or shape == "native"
    if shape == "client":  # seed 004: {"error": "<message>"}; an unknown previous_response_id is its 404
        if isinstance(exc, InvalidRequest) and exc.code == "previous_response_not_found":
            status = 404
        body: Any = {"error": exc.message}
    elif native:
        if isinstance(exc, InvalidRequest):
            status = 422
            detail: Any = exc.details or [
                {"loc": list(exc.loc), "msg": exc.message, "type": exc.kind, "input": exc.input}
            ]
        else:
            detail = exc.message
        body = {"detail": detail}
    else:
        body = {"error": {"message": exc.message, "type": exc.error_type, "param": exc.param, "code": exc.code}}
    headers = JSON_HEADERS + [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    return status, headers, orjson.dumps(body)
