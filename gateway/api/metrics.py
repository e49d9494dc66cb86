"""``GET /metrics``: the Prometheus text exposition of this app's metrics (``gateway.metrics``), or of every
worker process's in multiprocess mode. With ``GATEWAY_METRICS_TOKEN`` set it asks for that bearer token
(compared in constant time; 401 otherwise). Not mounted when ``GATEWAY_METRICS_ENABLED`` is false."""

import hmac

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.errors import AuthenticationFailed
from gateway.http import bearer_key, request_headers, send_bytes
from gateway.metrics import Metrics

# the classic text format (0.0.4), which every Prometheus parses; the names need no escaping
_HEADERS = [(b"content-type", CONTENT_TYPE_PLAIN_0_0_4.encode()), (b"cache-control", b"no-store")]


class MetricsEndpoint:
    """The scrape endpoint as a plain ASGI app."""

    def __init__(self, metrics: Metrics, token: str | None) -> None:
        self.metrics = metrics
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is not None:
            given = bearer_key(request_headers(scope))
            if given is None or not hmac.compare_digest(given.encode("latin-1"), self.token):
                raise AuthenticationFailed("GET /metrics needs its bearer token.", code="invalid_metrics_token")
        await send_bytes(send, 200, _HEADERS, self.metrics.render())


def routes(metrics: Metrics | None, token: str | None) -> list[Route]:
    """``GET /metrics``, or nothing when metrics are off."""
    return [] if metrics is None else [Route("/metrics", MetricsEndpoint(metrics, token), methods=["GET"])]
