"""The extension API policy and provider authors may import; changing it is a visible API change."""

import gateway


def test_exported_names():
    assert sorted(gateway.__all__) == sorted(
        [
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
    )
    for name in gateway.__all__:
        assert getattr(gateway, name) is not None
