"""The extension API policy and provider authors may import; changing it is a visible API change."""

import gateway


def test_exported_names():
    assert sorted(gateway.__all__) == sorted(
        [
            "AuditLog",
            "SSE_HEADERS",
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
    )
    for name in gateway.__all__:
        assert getattr(gateway, name) is not None
