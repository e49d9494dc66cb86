"""The cost policy: the x-gateway-cost-usd header, spend counters in the store, and the native usage route."""

import uuid
from datetime import UTC, datetime, timedelta

import httpx2
import pytest
import redis

from config.catalog import PolicySpec
from gateway.policy import PolicyConfigError, load_policy
from tests.conftest import (
    ADMIN_KEY,
    MEMBER_KEY,
    MODEL_IDS,
    OTHER_KEY,
    RESTRICTED,
    SPACE,
    TENANT,
    catalogue,
)
from tests.servers import wait_for

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
# 5 input tokens at 2.5 USD/Mtok + 3 output tokens at 10 USD/Mtok = 42.5 micro-dollars, rounded half-up: 43
PRICING = {"input_per_mtok": "2.5", "cached_input_per_mtok": "1.25", "output_per_mtok": "10"}
COST = 43


def priced(upstream_url: str, upstream_model: str = "ok") -> dict:
    cat = catalogue(upstream_url, upstream_model)
    cat["tenants"][0]["models"][0]["pricing"] = PRICING
    cat["tenants"][0]["policies"] = [{"use": "allow_list"}, {"use": "cost"}]
    return cat


def chat(base: str, stream: bool = False, model: str = "up", key: str = ADMIN_KEY) -> httpx2.Response:
    return httpx2.post(
        base + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream},
    )


def usage(base: str, space: str = SPACE, key: str = ADMIN_KEY, prefix: str = "", **query: str) -> httpx2.Response:
    return httpx2.get(
        f"{base}{prefix}/v1/spaces/{space}/usage", headers={"Authorization": f"Bearer {key}"}, params=query
    )


def counted(base: str, requests: int, **query: str) -> dict:
    """The usage once ``requests`` are counted (the counters are written just after each answer)."""
    return wait_for(lambda: usage(base, **query).json()["data"], lambda data: data["requests"] >= requests)


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def test_header_on_whole_answers_and_counters_for_every_kind(start_gateway, upstream):
    base = start_gateway(priced(upstream[1]))
    whole = chat(base)
    assert whole.status_code == 200 and whole.headers["x-gateway-cost-usd"] == "0.000043"
    streamed = chat(base, stream=True)
    assert streamed.status_code == 200 and "x-gateway-cost-usd" not in streamed.headers
    resp = httpx2.post(base + "/v1/responses", headers=AUTH, json={"model": "up", "input": "hi"})
    assert resp.status_code == 200 and resp.headers["x-gateway-cost-usd"] == "0.000043"
    native = httpx2.post(f"{base}/v1/spaces/{SPACE}/responses", headers=AUTH, json={"model": "up", "input": "hi"})
    assert native.status_code == 200 and "x-gateway-cost-usd" not in native.headers
    assert native.json()["data"]["usage"]["cost_usd"] == "0.000043"

    data = counted(base, 4, **{"from": today(), "to": today()})
    totals = {"cost_usd": "0.000172", "input_tokens": 20, "output_tokens": 12, "requests": 4}
    assert data == {
        "space_id": SPACE,
        "from": today(),
        "to": today(),
        **totals,
        "by_day": [{"date": today(), **totals}],
        "by_model": [{"tenant_model_id": MODEL_IDS["up"], "alias": "up", **totals}],
        "by_key": [{"key_name": "admin", **totals}],
        "by_agent": [],
    }


def test_rejected_requests_are_not_counted_and_upstream_errors_count_at_zero(start_gateway, upstream):
    base = start_gateway(priced(upstream[1], "status-400"))
    assert chat(base, model="extra").status_code == 403  # not allowed in the space: rejected
    assert chat(base).status_code == 400  # the upstream refused it
    data = counted(base, 1)
    assert (data["cost_usd"], data["requests"], data["input_tokens"]) == ("0.000000", 1, 0)


def test_counters_in_redis_are_exact_and_expire(start_gateway, upstream, redis_url, redis_prefix):
    prefix = redis_prefix + uuid.uuid4().hex + ":"
    base = start_gateway(priced(upstream[1]), redis_url=redis_url, redis_prefix=prefix)
    assert chat(base).headers["x-gateway-cost-usd"] == "0.000043"
    assert chat(base, stream=True).status_code == 200
    assert counted(base, 2)["cost_usd"] == "0.000086"
    day = datetime.now(UTC).strftime("%Y%m%d")
    client = redis.Redis.from_url(redis_url)
    for key in (f"spend:{{{TENANT}}}:{day}", f"spend:{{{TENANT}}}:{SPACE}:{day}"):
        fields = {k.decode(): int(v) for k, v in client.hgetall(prefix + key).items()}
        expected = {"cost": 2 * COST, "input": 10, "output": 6, "requests": 2}
        model, who = f"m:{MODEL_IDS['up']}:", "k:admin:"
        assert fields == {
            **expected,
            **{model + k: v for k, v in expected.items()},
            **{who + k: v for k, v in expected.items()},
        }
        assert 39 * 86400 < client.ttl(prefix + key) <= 40 * 86400
    client.close()


def test_usage_route_auth_validation_and_ranges(start_gateway, upstream):
    base = start_gateway(priced(upstream[1]))
    assert httpx2.get(f"{base}/v1/spaces/{SPACE}/usage").status_code == 401
    assert usage(base, key=MEMBER_KEY).status_code == 403  # a member of another space
    assert usage(base, key=OTHER_KEY).status_code == 404  # another tenant's space
    bad = httpx2.get(f"{base}/v1/spaces/nope/usage", headers=AUTH)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["path", "space_id"]
    bad = usage(base, **{"from": "yesterday"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "from"]
    assert usage(base, **{"from": "2025-02-02", "to": "2025-02-01"}).status_code == 422
    assert usage(base, **{"from": "2024-01-01", "to": "2025-12-31"}).status_code == 422

    member = usage(base, space=RESTRICTED, key=MEMBER_KEY, prefix="/api-proxy")
    assert member.status_code == 200
    data = member.json()["data"]
    assert (data["cost_usd"], data["requests"], data["by_model"], data["by_key"]) == ("0.000000", 0, [], [])
    assert len(data["by_day"]) == 30 and data["to"] == today()
    week = usage(base, **{"from": "2025-03-01", "to": "2025-03-07"}).json()["data"]
    assert [d["date"] for d in week["by_day"]] == [f"2025-03-0{i}" for i in range(1, 8)]
    start = (datetime.now(UTC).date() - timedelta(days=365)).isoformat()
    assert usage(base, **{"from": start}).status_code == 200  # 366 days: the most one request may ask


@pytest.mark.parametrize(
    ("params", "message"),
    [({"header": "maybe"}, "header"), ({"retention_days": 0}, "retention_days"), ({"nope": 1}, "nope")],
)
def test_params_are_checked_at_start(params, message):
    with pytest.raises(PolicyConfigError, match=message):
        load_policy(PolicySpec(use="cost", **params))
