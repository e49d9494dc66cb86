"""Upstream errors keep their meaning: the upstream's OpenAI error type and code reach the caller (clients branch
on them), a bare 429 is ``rate_limit_exceeded`` and a bare 5xx a ``server_error``; nothing else of the body's
shape is trusted."""

import httpx
import openai
import pytest

from tests.conftest import ADMIN_KEY, SPACE, catalogue

MESSAGES = [{"role": "user", "content": "hi"}]


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=15)


def call(upstream_model: str, start_gateway, upstream, stream: bool) -> openai.APIStatusError:
    cat = catalogue(upstream[1], upstream_model=upstream_model)
    cat["tenants"][0]["models"][0]["routing"] = {"retries": 0}
    c = client(start_gateway(cat))
    with pytest.raises(openai.APIStatusError) as caught:
        if stream:
            list(c.chat.completions.create(model="up", messages=MESSAGES, stream=True))
        else:
            c.chat.completions.create(model="up", messages=MESSAGES)
    return caught.value


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("upstream_model", "status", "kind", "code"),
    [
        ("oai-429-requests-rate_limit_exceeded", 429, "requests", "rate_limit_exceeded"),
        ("oai-429-insufficient_quota-insufficient_quota", 429, "insufficient_quota", "insufficient_quota"),
        (
            "oai-400-invalid_request_error-context_length_exceeded",
            400,
            "invalid_request_error",
            "context_length_exceeded",
        ),
        ("oai-429---", 429, "rate_limit_error", "rate_limit_exceeded"),
        ("oai-400---", 400, "invalid_request_error", "upstream_400"),
        ("oai-500---", 502, "server_error", "upstream_error"),
        ("oai-500-server_error-boom", 502, "server_error", "boom"),
        ("text-503", 503, "server_error", "upstream_unavailable"),
    ],
)
def test_the_upstream_error_type_and_code_are_kept(start_gateway, upstream, stream, upstream_model, status, kind, code):
    err = call(upstream_model, start_gateway, upstream, stream)
    assert err.status_code == status
    assert err.body["type"] == kind and err.code == code, err.body


def test_an_upstream_code_that_is_not_an_identifier_is_dropped(start_gateway, upstream):
    err = call("oai-429-x y-" + "c" * 100, start_gateway, upstream, False)
    assert err.code == "rate_limit_exceeded" and err.body["type"] == "rate_limit_error"


def test_the_native_route_keeps_the_status(start_gateway, upstream):
    cat = catalogue(upstream[1], upstream_model="oai-429-requests-rate_limit_exceeded")
    cat["tenants"][0]["models"][0]["routing"] = {"retries": 0}
    base = start_gateway(cat)
    r = httpx.post(
        f"{base}/v1/spaces/{SPACE}/responses",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        json={"model": "up", "input": "hi", "tool_mode": "manual"},
    )
    assert r.status_code == 429 and "detail" in r.json()
