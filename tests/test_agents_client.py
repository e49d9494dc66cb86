"""The client API of seed 004 (``/api/client/v1``): its examples with raw HTTP and the openai SDK against the
recording upstream, and its errors as ``{"error": "…"}`` with the seed's statuses."""

import httpx2
import openai
import pytest

from tests.agents_helpers import agents_catalogue
from tests.conftest import ADMIN_KEY, MEMBER_KEY

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
BASE = "/api/client/v1"


@pytest.fixture
def client_gateway(start_gateway, upstream):
    return start_gateway(agents_catalogue(upstream[1]))


def test_list_agents_in_the_seeds_shape_with_a_status_filter(client_gateway):
    r = httpx2.get(client_gateway + BASE + "/agents", headers=AUTH)
    assert r.status_code == 200
    agents = {a["key"]: a for a in r.json()["agents"]}
    assert set(agents) == {"support-bot", "retired", "on-extra", "unpublished"}  # the space's; not "hidden"
    assert agents["support-bot"] == {
        "key": "support-bot",
        "name": "Support Bot",
        "description": "Customer support agent",
        "config": {"modelKey": "up", "temperature": 0.2, "topP": None, "maxTokens": 256},
        "version": 2,
        "status": "active",
        "createdAt": "2026-01-15T10:00:00.000Z",
    }
    r = httpx2.get(client_gateway + BASE + "/agents", headers=AUTH, params={"status": "inactive"})
    assert [a["key"] for a in r.json()["agents"]] == ["retired"]
    r = httpx2.get(client_gateway + BASE + "/agents", headers=AUTH, params={"status": "x" * 10_000})
    assert r.status_code == 400 and set(r.json()) == {"error"} and len(r.text) < 200


def test_get_agent(client_gateway):
    r = httpx2.get(client_gateway + BASE + "/agents/support-bot", headers=AUTH)
    assert r.status_code == 200 and r.json()["agent"]["key"] == "support-bot"
    for key in ("hidden", "nope", "bad key!", "k" * 5000):
        r = httpx2.get(client_gateway + BASE + "/agents/" + key, headers=AUTH)
        assert r.status_code == 404 and set(r.json()) == {"error"} and len(r.text) < 200, key


@pytest.mark.parametrize("path", ["/responses", "/agents/responses"])
@pytest.mark.parametrize(
    "given",
    [
        "How do I reset my password?",
        [{"role": "user", "content": "How do I reset my password?"}],
        [{"role": "user", "content": [{"type": "input_text", "text": "How do I reset my password?"}]}],
    ],
    ids=["string", "messages", "parts"],
)
def test_invoke_in_every_input_format(client_gateway, upstream, path, given):
    r = httpx2.post(
        client_gateway + BASE + path, headers=AUTH, json={"model": "support-bot", "input": given, "version": 1}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["object"], body["model"], body["status"], body["previous_response_id"]) == (
        "response",
        "support-bot",
        "completed",
        None,
    )
    assert body["id"].startswith("resp_") and isinstance(body["created_at"], int)
    assert body["output"][0]["type"] == "message" and body["output"][0]["content"][0]["type"] == "output_text"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
    sent = upstream[0].requests[-1]
    assert sent["messages"][0] == {"role": "system", "content": "You are Support Bot (v1)."}
    assert (sent["temperature"], sent["top_p"], sent["max_completion_tokens"]) == (0.7, 1, 4096)


def test_the_openai_sdk_on_the_client_api_and_a_multi_turn_conversation(client_gateway, upstream):
    client = openai.OpenAI(base_url=client_gateway + BASE, api_key=ADMIN_KEY, max_retries=0, timeout=30)
    first = client.responses.create(model="support-bot", input="Hello, I need help", extra_body={"version": 1})
    second = client.responses.create(
        model="support-bot", input="Can you elaborate on the security settings?", previous_response_id=first.id
    )
    assert second.model == "support-bot" and second.previous_response_id == first.id
    sent = upstream[0].requests[-1]
    assert sent["messages"][0]["content"] == "You are Support Bot (v1)."  # the version the conversation began on
    assert len([m for m in sent["messages"] if m["role"] == "user"]) == 2


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"input": "hi"}, 400, "'model' is required"),
        ({"model": "support-bot"}, 400, "'input' is required"),
        ({"model": 5, "input": "hi"}, 400, "must be a string"),
        ({"model": "retired", "input": "hi"}, 400, "not active"),
        ({"model": "support-bot", "input": "hi", "version": 3}, 400, "not published"),
        ({"model": "support-bot", "input": "hi", "version": 0}, 400, "positive integer"),
        ({"model": "support-bot", "input": "hi", "version": "1"}, 400, "positive integer"),
        ({"model": "support-bot", "input": "hi", "version": True}, 400, "positive integer"),
        ({"model": "support-bot@1", "input": "hi", "version": 1}, 400, "not both"),
        ({"model": "support-bot", "input": "hi", "version": 7}, 404, "no version 7"),
        ({"model": "nope", "input": "hi"}, 404, "Agent 'nope' not found"),
        ({"model": "hidden", "input": "hi"}, 404, "not found"),
        ({"model": "up", "input": "hi"}, 404, "Agent 'up' not found"),  # a model is not an agent here
        ({"model": "x" * 100_000, "input": "hi"}, 404, "not found"),
        ({"model": "support-bot", "input": "hi", "previous_response_id": "resp_nope"}, 404, "resp_nope"),
    ],
)
def test_errors_in_the_seeds_shape(client_gateway, upstream, body, status, says):
    before = len(upstream[0].requests)
    r = httpx2.post(client_gateway + BASE + "/responses", headers=AUTH, json=body)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and says in r.json()["error"] and len(r.text) < 400
    assert len(upstream[0].requests) == before


def test_auth_and_malformed_bodies(client_gateway):
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx2.post(
            client_gateway + BASE + "/responses", headers=headers, json={"model": "support-bot", "input": "hi"}
        )
        assert r.status_code == 401 and isinstance(r.json()["error"], str)
    r = httpx2.get(client_gateway + BASE + "/agents", headers={"Authorization": f"Bearer {MEMBER_KEY}"})
    assert r.status_code == 200 and r.json() == {"agents": []}  # the member's space lists no agent
    r = httpx2.post(client_gateway + BASE + "/responses", headers=AUTH, content=b"{nope")
    assert r.status_code == 400 and isinstance(r.json()["error"], str)
    r = httpx2.get(client_gateway + BASE + "/nothing", headers=AUTH)
    assert r.status_code == 404 and isinstance(r.json()["error"], str)
