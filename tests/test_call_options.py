"""No request field chooses where the gateway connects, which credential it sends or how it calls the upstream.

A canary listener on loopback stands where a hostile body points: it must see zero connections for every such
field, streamed or not, on chat, /v1/responses and the native route, for an OpenAI-compatible deployment, a
``type: litellm`` one and a named litellm type (Anthropic), neither of the last two with a ``base_url``.
"""

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY, SPACE, catalogue
from tests.servers import Canary

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def canary() -> Iterator[Canary]:
    c = Canary()
    yield c
    c.close()


def fields(url: str) -> dict[str, Any]:
    return {
        "api_base": url,
        "base_url": url,
        "api_key": "sk-caller",
        "api_version": "2024-01-01",
        "user_config": {"api_base": url},
        "extra_body": {"api_base": url},
        "extra_headers": {"Authorization": "Bearer x"},
        "headers": {"x": "y"},
        "custom_llm_provider": "openai",
        "aws_region_name": "us-east-1",
        "vertex_project": "p",
        "azure_ad_token": "t",
        "litellm_params": {"api_base": url},
        "mock_response": "pwned",
        "timeout": 1,
        "num_retries": 3,
    }


DEPLOYMENTS = {
    "openai": {},  # the test catalogue's OpenAI-compatible deployment, on the loopback upstream
    "litellm": {"type": "litellm", "model": "openai/gpt-4o-mini", "api_key_env": "TEST_CANARY_KEY"},
    "anthropic": {"type": "anthropic", "model": "claude-x", "api_key_env": "TEST_CANARY_KEY"},
}


@pytest.mark.parametrize("kind", sorted(DEPLOYMENTS))
def test_no_body_field_chooses_the_upstream(start_gateway, upstream, canary, kind, monkeypatch):
    monkeypatch.setenv("TEST_CANARY_KEY", "sk-tenant-secret")
    fake, url = upstream
    cat = catalogue(url)
    if DEPLOYMENTS[kind]:
        cat["tenants"][0]["models"][0]["deployment"] = DEPLOYMENTS[kind]
    base = start_gateway(cat)
    seen = len(fake.requests)
    with httpx.Client(base_url=base, headers=AUTH, timeout=10) as client:
        for name, value in fields(canary.url).items():
            for stream in (False, True):
                chat = {"model": "up", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
                r = client.post("/v1/chat/completions", json={**chat, name: value})
                assert r.status_code == 400 and r.json()["error"]["param"] == name, (name, r.text)
                responses = {"model": "up", "input": "hi", "stream": stream}
                r = client.post("/v1/responses", json={**responses, name: value})
                assert r.status_code == 400 and r.json()["error"]["param"] == name, (name, r.text)
                r = client.post(f"/v1/spaces/{SPACE}/responses", json={**responses, name: value})
                assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", name], (name, r.text)
                assert "sk-tenant-secret" not in r.text
    assert canary.connections == 0
    assert len(fake.requests) == seen  # refused at the edge: no upstream call at all


def test_the_refusal_names_a_bounded_field(gateway):
    name = "api_" + "x" * 5000
    body = {"model": "up", "messages": [{"role": "user", "content": "hi"}], name: 1}
    r = httpx.post(gateway + "/v1/chat/completions", headers=AUTH, json=body)
    assert r.status_code == 400 and len(r.text) < 1000
    assert r.json()["error"]["param"] == name[:64]


def test_openai_fields_still_pass(gateway, upstream):
    body = {"model": "up", "messages": [{"role": "user", "content": "hi"}], "seed": 7, "max_completion_tokens": 5}
    assert httpx.post(gateway + "/v1/chat/completions", headers=AUTH, json=body).status_code == 200
    assert upstream[0].requests[-1]["seed"] == 7
