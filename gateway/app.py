"""The composition root: ``create_app(settings)`` builds one gateway app (``uvicorn --factory`` friendly)."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from config import Settings, load_catalogue
from gateway.api import (
    agents,
    audit,
    client,
    files,
    health,
    metrics,
    openai,
    responses,
    skills,
    space_responses,
    spaces,
    usage,
)
from gateway.errors import GatewayError, NotFound, error_shape, render_error
from gateway.logs import bounded, log_refused
from gateway.metrics import count_refusal
from gateway.runtime import Gateway

log = logging.getLogger("gateway")


def _error_response(exc: GatewayError, path: str) -> Response:
    status, headers, body = render_error(exc, error_shape(path))
    return Response(
        body, status, headers={k.decode(): v.decode() for k, v in headers[1:]}, media_type="application/json"
    )


def _log_refused(request: Request, exc: GatewayError | None) -> None:
    """A request answered with an error before (or outside) a policy chain: its log line, with what is known."""
    if exc is None or not exc.logged:
        scope = request.scope
        request_id = dict(scope["headers"]).get(b"x-request-id")
        log_refused(scope["method"], scope["path"], request_id, exc)


async def _on_gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    _log_refused(request, exc)
    count_refusal(request.app.state.gateway.metrics, request.scope, exc.status_code)
    return _error_response(exc, request.url.path)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (unknown route, wrong method) in our shapes."""
    assert isinstance(exc, HTTPException)
    error: GatewayError
    if exc.status_code == 404:
        error = NotFound(f"Unknown route: {request.method} {request.url.path}", code="unknown_route")
    else:
        error = GatewayError(str(exc.detail), status_code=exc.status_code, code="method_not_allowed")
        error.error_type = "invalid_request_error"
    _log_refused(request, error)
    count_refusal(request.app.state.gateway.metrics, request.scope, error.status_code)
    return _error_response(error, request.url.path)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, bounded(request.url.path))
    _log_refused(request, None)
    error = GatewayError("The gateway hit an internal error.", code="internal_error")
    return _error_response(error, request.url.path)


def create_app(settings: Settings | None = None) -> Starlette:
    """Validate the catalogue and policies (failing here fails the start) and wire routes and lifespan."""
    settings = settings or Settings()
    gw = Gateway(settings, load_catalogue(settings.config))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()

    routes = [
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/v1/chat/completions", openai.ChatCompletions(gw), methods=["POST"]),
        Route("/v1/models", openai.list_models, methods=["GET"]),
        Route("/v1/responses", responses.CreateResponse(gw), methods=["POST"]),
        Route("/v1/responses/{response_id}", responses.RetrieveResponse(), methods=["GET"]),
        Route("/v1/responses/{response_id}", responses.delete_response, methods=["DELETE"]),
        Route("/v1/responses/{response_id}/cancel", responses.cancel_response, methods=["POST"]),
        Route("/v1/responses/{response_id}/input_items", responses.list_input_items, methods=["GET"]),
        Route("/v1/models/{model:path}", openai.retrieve_model, methods=["GET"]),
        *spaces.routes(""),
        *spaces.routes("/api-proxy"),
        *audit.routes(""),
        *audit.routes("/api-proxy"),
        *usage.routes(""),
        *usage.routes("/api-proxy"),
        *space_responses.routes(gw, ""),
        *space_responses.routes(gw, "/api-proxy"),
        *metrics.routes(gw.metrics, settings.metrics_token.get_secret_value() if settings.metrics_token else None),
        *agents.routes(""),
        *agents.routes("/api-proxy"),
        *client.routes(gw),
        *files.routes(""),
        *files.routes("/api-proxy"),
        *skills.routes(""),
        *skills.routes("/api-proxy"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            GatewayError: _on_gateway_error,
            HTTPException: _on_http_error,
            Exception: _on_unexpected,
        },
    )
    app.state.gateway = gw
    if gw.tracing is not None:  # only then: no tracing layer on the hot path otherwise
        app.add_middleware(gw.tracing.middleware)
    return app
