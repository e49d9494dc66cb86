"""The one pooled upstream HTTP client per process, and the one place upstream failures become our errors.

aiohttp, not httpx: httpx's connection pool degrades under concurrency (throughput falls and p99 explodes at
32-64 concurrent requests); see docs/benchmarks.md. No cookie jar: one tenant's cookies must never ride on
another's requests.
"""

import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from config.deployments import Deployment
from gateway.errors import (
    GatewayError,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    redact_secret_bytes,
)

_KEPT_STATUSES = {400, 404, 409, 413, 422, 429}


def make_session(*, max_connections: int, connect_timeout: float, read_timeout: float) -> aiohttp.ClientSession:
    """The shared client: large pool, long keep-alive, no total timeout (streams are long), no cookies."""
    connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=0, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=read_timeout)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=True,
        skip_auto_headers=("User-Agent",),
    )


def credential(dep: Deployment) -> str | None:
    """The deployment's own upstream key (from its ``api_key_env``), sent upstream and redacted from what
    comes back."""
    env = getattr(dep, "api_key_env", None)
    return os.environ.get(env) if env else None


_TOKEN = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def _token(value: Any) -> str | None:
    """An upstream's error ``type`` or ``code`` when it is a short identifier; anything else is dropped."""
    return value if isinstance(value, str) and _TOKEN.fullmatch(value) else None


def _upstream_error(body: bytes) -> tuple[str | None, str | None, str | None]:
    """The (message, type, code) of an upstream's error body, each None where it sent none we can trust."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return text[:300] or None, None, None
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            message = err.get("message")
            return message[:300] if isinstance(message, str) else None, _token(err.get("type")), _token(err.get("code"))
        if isinstance(err, str):
            return err[:300], None, None
        if isinstance(data.get("detail"), str):
            return str(data["detail"])[:300], None, None
    return None, None, None


def error_from_status(
    status: int, body: bytes, retry_after: str | None = None, secret: str | None = None
) -> UpstreamError:
    """An upstream's non-2xx answer as our error: its 4xx/429 keep their status, 5xx become 502/503/504. The
    upstream's own OpenAI error ``type`` and ``code`` are kept (clients branch on ``rate_limit_exceeded``,
    ``insufficient_quota``, ``context_length_exceeded``); without them a 429 is ``rate_limit_exceeded`` and a 5xx
    a ``server_error``."""
    message, kind, code = _upstream_error(redact_secret_bytes(body, secret))  # before cutting: no key prefix left
    message = message or f"status {status}"
    headers = {"Retry-After": retry_after} if retry_after else None
    err: UpstreamError
    if status in _KEPT_STATUSES:
        default = ("rate_limit_error", "rate_limit_exceeded") if status == 429 else (None, "upstream_" + str(status))
        err = UpstreamRejected(
            f"Upstream rejected the request: {message}",
            status_code=status,
            code=code or default[1],
            headers=headers,
        )
        err.error_type = kind or default[0] or err.error_type
        return err
    if status in (401, 403):
        return UpstreamError(f"Upstream refused the gateway's credentials ({status}): {message}")
    if status == 503:
        err = UpstreamUnavailable(f"Upstream unavailable: {message}", status_code=503, headers=headers)
    elif status == 504:
        err = UpstreamTimeout(f"Upstream timed out: {message}")
    else:
        err = UpstreamError(f"Upstream failed with status {status}: {message}")
    err.error_type = "server_error"
    if code:
        err.code = code
    return err


@asynccontextmanager
async def map_upstream_errors() -> AsyncIterator[None]:
    """Turn client-library exceptions into our UpstreamError tree (messages never carry credentials)."""
    try:
        yield
    except GatewayError:
        raise
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise UpstreamTimeout("Upstream did not answer in time.") from None
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamUnavailable(f"Cannot connect to upstream {exc.host}:{exc.port}.", status_code=503) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamError(f"Upstream connection failed: {type(exc).__name__}.") from None


def json_body(data: Any) -> bytes:
    return orjson.dumps(data)


def upstream_json(data: bytes, what: str = "an answer") -> dict[str, Any]:
    """An upstream's JSON object, or UpstreamError (``upstream_malformed``): never a 500 for its garbage."""
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise UpstreamError(f"Upstream sent {what} that is not a JSON object.", code="upstream_malformed")
    return parsed
