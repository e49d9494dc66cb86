"""The one resolver: a request runs on the same model whatever policies its space runs (the body's name, else the
space default), decided once before the chain; a caller's model name is repeated in errors only bounded."""

from typing import Any

import httpx2
import pytest

from tests.conftest import ADMIN_KEY, SPACE, catalogue

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
MESSAGES = [{"role": "user", "content": "hi"}]


def with_policies(upstream_url: str, policies: list[dict[str, Any]]) -> dict[str, Any]:
    cat = catalogue(upstream_url)
    cat["tenants"][0]["policies"] = policies
    return cat


ROUTES = {
    "chat": ("/v1/chat/completions", {"messages": MESSAGES}),
    "responses": ("/v1/responses", {"input": "hi"}),
    "native": (f"/v1/spaces/{SPACE}/responses", {"input": "hi"}),
}


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("policies", [[], [{"use": "allow_list"}]], ids=["no-policy", "allow-list"])
def test_no_model_runs_on_the_space_default_in_every_space(start_gateway, upstream, route, policies):
    base = start_gateway(with_policies(upstream[1], policies))
    path, body = ROUTES[route]
    r = httpx2.post(base + path, headers=AUTH, json=body)
    assert r.status_code == 200, r.text
    answer = r.json().get("data", r.json())
    assert answer["model"] in ("fake-echo", "echo")  # the space default (chat reports the upstream's model name)


def test_an_unknown_name_without_an_allow_list_is_404_and_bounded(start_gateway, upstream):
    base = start_gateway(with_policies(upstream[1], []))
    long = "m" * 5000
    r = httpx2.post(base + "/v1/chat/completions", headers=AUTH, json={"model": long, "messages": MESSAGES})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert len(r.json()["error"]["message"]) < 200


@pytest.mark.parametrize("route", list(ROUTES))
def test_a_refusal_repeats_a_long_name_bounded(gateway, route):
    path, body = ROUTES[route]
    r = httpx2.post(gateway + path, headers=AUTH, json={**body, "model": "x" * 100_000})
    assert r.status_code == 403
    text = r.text
    assert "x" * 101 not in text and len(text) < 1000
