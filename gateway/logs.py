"""The gateway's logs: one JSON line per request (``gateway.requests``), and every line of the ``gateway``
loggers as JSON on stderr when the server runs (``configure``).

A request's line holds what an operator needs to find it and account for it: its id, who called (tenant, space,
the key's *name*), the model alias, the route, status, outcome, duration, tokens, cost and the policies that
ran. Never a key, a header's value but the request id, or a prompt or an answer: the line is built from the
request's context field by field, never from the body. Strings the caller controls (the request id, the model
name, an unknown path) are cut to a bounded length first.
"""

import logging
import sys
import time
from typing import TYPE_CHECKING, Any

import orjson

from gateway.errors import GatewayError
from gateway.pricing import usd

if TYPE_CHECKING:
    from config import Settings
    from gateway.context import RequestContext

REQUESTS = "gateway.requests"
MAX_FIELD = 200  # characters kept of a caller's string (a model name, a path)
MAX_MESSAGE = 4000  # characters kept of a log message or a traceback
LEVELS = {"trace": logging.DEBUG}  # uvicorn's level names that logging does not know


def bounded(value: str, limit: int = MAX_FIELD) -> str:
    return value if len(value) <= limit else value[:limit] + "…"


def request_fields(ctx: "RequestContext", started: float, error: BaseException | None) -> dict[str, Any]:
    """The line of a request that had a context (it authenticated), at its end."""
    usage = ctx.usage
    status = ctx.status_code
    if status is None and isinstance(error, GatewayError):
        status = error.status_code
    failure = ctx.error or error
    return {
        "request_id": ctx.request_id,  # cut to 128 characters when it was read
        "tenant": ctx.tenant_id,
        "space": ctx.space_id,
        "key": ctx.principal.key.name,
        "model": bounded(ctx.alias),
        "route": ctx.route,
        "stream": ctx.stream,
        "status": status,
        "outcome": "error" if ctx.outcome == "pending" else ctx.outcome,
        "error": failure.code if isinstance(failure, GatewayError) else None,
        "duration_ms": round((time.perf_counter() - started) * 1000, 1),
        "tokens_in": usage.input_tokens if usage else 0,
        "tokens_out": usage.output_tokens if usage else 0,
        "cost_usd": usd(ctx.cost_micros),
        "policies": ctx.governance_applied,
    }


def refused_fields(method: str, path: str, request_id: bytes | None, exc: GatewayError | None) -> dict[str, Any]:
    """The line of a request answered with an error before it had a context (no key, a bad body, no route)."""
    return {
        "request_id": bounded((request_id or b"").decode("latin-1"), 128) or None,
        "method": bounded(method, 16),
        "path": bounded(path),
        "status": exc.status_code if exc is not None else 500,
        "outcome": "rejected" if exc is not None and exc.status_code < 500 else "error",
        "error": exc.code if exc is not None else "internal_error",
    }


_requests = logging.getLogger(REQUESTS)


def log_request(ctx: "RequestContext", started: float, error: BaseException | None) -> None:
    """The request's line (``request_fields``), when request lines are on: nothing is built otherwise."""
    if _requests.isEnabledFor(logging.INFO):
        _requests.info("request", extra={"fields": request_fields(ctx, started, error)})


def log_refused(method: str, path: str, request_id: bytes | None, exc: GatewayError | None) -> None:
    """A refusal's line (``refused_fields``), when request lines are on."""
    if _requests.isEnabledFor(logging.INFO):
        _requests.info("request", extra={"fields": refused_fields(method, path, request_id, exc)})


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC), level, logger, message, and a request line's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": bounded(record.getMessage(), MAX_MESSAGE),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exc"] = bounded(self.formatException(record.exc_info), MAX_MESSAGE)
        return orjson.dumps(line, default=str).decode()


def configure(settings: "Settings") -> None:
    """The server's logging: the ``gateway`` loggers at the configured level, as JSON lines on stderr (and not
    again through the root logger); the request lines only when ``request_log`` is on."""
    name = settings.log_level.lower()
    level = LEVELS.get(name) or logging.getLevelName(name.upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("gateway")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    logging.getLogger(REQUESTS).disabled = not settings.request_log
    # the MCP SDK's client and its HTTP client log every request they make with its URL (a caller's server_url)
    # at info; below warning they would repeat a caller's text in the log and cost a line per tool call
    for chatty in ("httpx2", "httpcore2", "mcp"):
        logging.getLogger(chatty).setLevel(max(level, logging.WARNING) if isinstance(level, int) else logging.WARNING)
