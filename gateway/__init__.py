"""The gateway's extension API: what policy and provider authors may import. Cheap to import."""

from gateway.audit import AuditLog
from gateway.context import ModelCall, Reply, RequestContext, Surface, Usage
from gateway.errors import (
    AuthenticationFailed,
    BadRequest,
    BudgetExceeded,
    Conflict,
    GatewayError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    StoreUnavailable,
    Unprocessable,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.http import SSE_HEADERS
from gateway.idempotency import IdempotencyRecords, fingerprint, in_flight_log, parse_key, record_key, replay_of
from gateway.policy import Policy, PolicyParams, StoreStep
from gateway.pricing import PriceBook, usd
from gateway.spend import SpendCounters
from gateway.sse import error_event, event_data, format_sse
from gateway.store import Halt, Script, Store

__all__ = [
    "SSE_HEADERS",
    "AuditLog",
    "AuthenticationFailed",
    "BadRequest",
    "BudgetExceeded",
    "Conflict",
    "GatewayError",
    "Halt",
    "IdempotencyRecords",
    "InvalidRequest",
    "ModelCall",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "Policy",
    "PolicyParams",
    "PriceBook",
    "RateLimited",
    "Reply",
    "RequestContext",
    "Script",
    "SpendCounters",
    "Store",
    "StoreStep",
    "StoreUnavailable",
    "Surface",
    "Unprocessable",
    "Usage",
    "UpstreamError",
    "UpstreamRejected",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "error_event",
    "event_data",
    "fingerprint",
    "format_sse",
    "in_flight_log",
    "parse_key",
    "record_key",
    "replay_of",
    "usd",
]
