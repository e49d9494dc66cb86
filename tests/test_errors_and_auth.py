"""Bad input gets a clear 4xx in the right shape: OpenAI's on OpenAI routes, FastAPI's on native routes."""

import httpx2
import pytest

from tests.conftest import ADMIN_KEY, SPACE, catalogue
from tests.servers import throwaway_redis

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
CHAT = "/v1/chat/completions"


def openai_error(r: httpx2.Response) -> dict:
    body = r.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer wrong"}, 401), ({"X-API-Key": ADMIN_KEY}, 200)],
)
def test_api_key_by_bearer_or_x_api_key(gateway, headers, status):
    r = httpx2.post(gateway + CHAT, headers=headers, json={"messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == status
    if status == 401:
        assert openai_error(r)["type"] == "authentication_error"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b"", None),
        (b'{"messages": []}', "messages"),
        (b'{"messages": "hi"}', "messages"),
        (b'{"messages": [1]}', "messages[0]"),
        (b'{"model": 7, "messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"stream": "yes", "messages": [{"role": "user", "content": "x"}]}', "stream"),
    ],
)
def test_malformed_chat_bodies_are_400_naming_the_param(gateway, body, param):
    r = httpx2.post(gateway + CHAT, headers={**AUTH, "content-type": "application/json"}, content=body)
    assert r.status_code == 400
    error = openai_error(r)
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_oversized_body_is_413(start_gateway, upstream):
    base = start_gateway(catalogue(upstream[1]), max_body_bytes=1000)
    big = {"messages": [{"role": "user", "content": "x" * 2000}]}
    r = httpx2.post(base + CHAT, headers=AUTH, json=big)
    assert r.status_code == 413 and openai_error(r)["code"] == "request_too_large"

    def chunked():  # no Content-Length: the limit is enforced while reading
        yield b'{"messages": [{"role": "user", "content": "'
        yield b"x" * 2000
        yield b'"}]}'

    r = httpx2.post(base + CHAT, headers=AUTH, content=chunked())
    assert r.status_code == 413


def test_unknown_routes_and_methods_in_both_shapes(gateway):
    r = httpx2.get(gateway + "/v1/nothing-here", headers=AUTH)
    assert r.status_code == 404 and openai_error(r)["type"] == "not_found_error"
    r = httpx2.get(gateway + f"/v1/spaces/{SPACE}/nothing", headers=AUTH)
    assert r.status_code == 404 and isinstance(r.json()["detail"], str)
    r = httpx2.get(gateway + CHAT, headers=AUTH)
    assert r.status_code == 405 and openai_error(r)


def test_health_and_readiness_need_no_key(gateway):
    assert httpx2.get(gateway + "/healthz").json() == {"status": "ok"}
    assert httpx2.get(gateway + "/readyz").json()["status"] == "ready"


def test_readiness_reports_an_unreachable_store(start_gateway, upstream):
    # a gateway whose Redis goes away answers 503 on /readyz and on requests that need the store
    with throwaway_redis() as url:
        base = start_gateway(catalogue(upstream[1]), redis_url=url)
        assert httpx2.get(base + "/readyz").status_code == 200
    assert httpx2.get(base + "/readyz").status_code == 503
    r = httpx2.get(base + "/v1/models", headers=AUTH)
    assert r.status_code == 503 and openai_error(r)["code"] == "store_unavailable"
