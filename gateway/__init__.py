"""The gateway's extension API: what policy and provider authors may import. Cheap to import."""

from gateway.context import Reply, RequestContext, Usage
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
from gateway.policy import Policy, PolicyParams
from gateway.store import Script, Store

__all__ = [
    "AuthenticationFailed",
    "BadRequest",
    "BudgetExceeded",
    "Conflict",
    "GatewayError",
    "InvalidRequest",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "Policy",
    "PolicyParams",
    "RateLimited",
    "Reply",
    "RequestContext",
    "Script",
    "Store",
    "StoreUnavailable",
    "Unprocessable",
    "Usage",
    "UpstreamError",
    "UpstreamRejected",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]
