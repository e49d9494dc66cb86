"""The rate_limit policy: limits shared by two gateway processes on one Redis, OpenAI's x-ratelimit headers,
Retry-After, per-key and per-space limits, tokens counted after the fact, and store outages (open and closed)."""

import contextlib
import hashlib
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from config.catalog import PolicySpec
from gateway.policy import PolicyConfigError, load_policy
from tests.conftest import ADMIN_KEY, RESTRICTED, SPACE, catalogue
from tests.servers import gateway_process, throwaway_redis

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
CI_KEY = "sk-test-ci"
DURATION = re.compile(r"^(\d+ms|\d+(\.\d+)?s|\d+m\d+s)$")


def limited(upstream_url: str, **params: Any) -> dict[str, Any]:
    """The test catalogue with the chain rate_limit → allow_list, and a second key on the main space."""
    cat = catalogue(upstream_url)
    tenant = cat["tenants"][0]
    tenant["policies"] = [{"use": "rate_limit", **params}, {"use": "allow_list"}]
    sha = hashlib.sha256(CI_KEY.encode()).hexdigest()
    tenant["api_keys"].append(
        {"name": "ci", "sha256": sha, "principal": "ci", "spaces": [SPACE], "default_space": SPACE}
    )
    return cat


def chat(base: str, key: str = ADMIN_KEY, content: str = "hi", **headers: str) -> httpx2.Response:
    return httpx2.post(
        base + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}", **headers},
        json={"model": "fake-echo", "messages": [{"role": "user", "content": content}]},
    )


@pytest.fixture
def second_process(tmp_path: Path) -> Iterator[Any]:
    """Starts ``python -m gateway`` for a catalogue on Redis; stopped (by its pid) after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda cat, redis_url, prefix: stack.enter_context(gateway_process(cat, tmp_path, redis_url, prefix))


def test_two_processes_on_one_redis_share_the_limit(start_gateway, upstream, redis_url, redis_prefix, second_process):
    prefix = redis_prefix + uuid.uuid4().hex + ":"
    cat = limited(upstream[1], space={"requests_per_minute": 10})
    first = start_gateway(cat, redis_url=redis_url, redis_prefix=prefix)
    second = second_process(cat, redis_url, prefix)
    answers = [chat(base) for _ in range(10) for base in (first, second)]
    assert sum(r.status_code == 200 for r in answers) == 10
    refused = [r for r in answers if r.status_code != 200]
    assert {r.status_code for r in refused} == {429}
    for r in refused:
        assert r.json()["error"]["type"] == "rate_limit_error" and r.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert r.headers["x-ratelimit-limit-requests"] == "10"


def test_headers_on_success_and_the_tighter_of_key_and_space(start_gateway, upstream):
    cat = limited(upstream[1], space={"requests_per_minute": 3}, key={"requests_per_minute": 2})
    base = start_gateway(cat)
    r = chat(base)
    assert r.status_code == 200
    assert r.headers["x-ratelimit-limit-requests"] == "2"  # the key's limit binds first
    assert r.headers["x-ratelimit-remaining-requests"] == "1"
    assert DURATION.match(r.headers["x-ratelimit-reset-requests"])
    assert "x-ratelimit-limit-tokens" not in r.headers
    assert chat(base).headers["x-ratelimit-remaining-requests"] == "0"
    r = chat(base)
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 30
    assert "2 requests per minute for this key" in r.json()["error"]["message"]
    # another key still has its own key budget, but only one request of the space's three is left
    assert chat(base, CI_KEY).status_code == 200
    r = chat(base, CI_KEY)
    assert r.status_code == 429 and "3 requests per minute for this space" in r.json()["error"]["message"]


def test_the_native_route_gets_the_headers_and_a_fastapi_shaped_429(start_gateway, upstream):
    base = start_gateway(limited(upstream[1], space={"requests_per_minute": 1}))
    url = f"{base}/v1/spaces/{SPACE}/responses"
    r = httpx2.post(url, headers=AUTH, json={"input": "hi"})
    assert r.status_code == 200 and r.headers["x-ratelimit-remaining-requests"] == "0"
    r = httpx2.post(url, headers=AUTH, json={"input": "hi"})
    assert r.status_code == 429 and "Rate limit reached" in r.json()["detail"] and r.headers["retry-after"]


def test_tokens_are_charged_after_the_answer_and_refuse_while_used_up(start_gateway, upstream):
    base = start_gateway(limited(upstream[1], key={"tokens_per_minute": 10}))
    r = chat(base, content="a b c d e f")  # the echo costs 6 input + 6 output tokens
    assert r.status_code == 200
    assert r.headers["x-ratelimit-limit-tokens"] == "10" and r.headers["x-ratelimit-remaining-tokens"] == "10"
    r = chat(base)
    assert r.status_code == 429
    assert r.headers["x-ratelimit-remaining-tokens"] == "0" and int(r.headers["retry-after"]) >= 1
    assert "10 tokens per minute for this key" in r.json()["error"]["message"]
    assert "x-ratelimit-limit-requests" not in r.headers


def test_streams_are_counted_too(start_gateway, upstream):
    base = start_gateway(limited(upstream[1], space={"requests_per_minute": 1, "tokens_per_minute": 1000}))
    body = {"model": "fake-echo", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx2.stream("POST", base + "/v1/chat/completions", headers=AUTH, json=body) as r:
        assert r.status_code == 200 and r.headers["x-ratelimit-remaining-requests"] == "0"
        r.read()
    assert chat(base).status_code == 429


def test_store_down_fails_open_by_default_and_closed_when_asked(start_gateway, upstream):
    cat = catalogue(upstream[1])
    main, restricted = cat["tenants"][0]["spaces"]
    # Canned answers without the upstream, so nothing but the rate limit needs the store here
    main["policies"] = [
        {"use": "rate_limit", "space": {"requests_per_minute": 5}},
        {"use": "tests.plugins.recorder:Canned"},
    ]
    restricted["policies"] = [
        {"use": "rate_limit", "space": {"requests_per_minute": 5}, "on_store_error": "closed"},
        {"use": "tests.plugins.recorder:Canned"},
    ]
    with throwaway_redis() as url:
        base = start_gateway(cat, redis_url=url, redis_prefix="rl:")
        assert chat(base, **{"x-canned": "1"}).status_code == 200
    r = chat(base, **{"x-canned": "1"})  # Redis is gone: the check is skipped
    assert r.status_code == 200 and r.json() == {"canned": True}
    r = chat(base, **{"x-canned": "1", "x-space-id": RESTRICTED})
    assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"space": {"requests_per_minute": 0}},
            "space.requests_per_minute: Input should be greater than or equal to 1",
        ),
        ({"key": {"rpm": 5}}, "key.rpm: Extra inputs are not permitted"),
        ({"on_store_error": "maybe"}, "on_store_error: Input should be 'open' or 'closed'"),
    ],
)
def test_params_are_checked_at_start(params, message):
    with pytest.raises(PolicyConfigError, match=re.escape(message)):
        load_policy(PolicySpec(use="rate_limit", **params))
