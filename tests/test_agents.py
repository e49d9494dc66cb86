"""Agents (seed 004) from the OpenAI and native routes: ``model: "<key>"`` or ``"<key>@<version>"`` runs the
agent's version (its instructions, parameters and tools reach the upstream exactly), pinned or the latest
published, refused clearly when inactive, unknown, unlisted or unpublished; a conversation stays on its version."""

from typing import Any

import httpx2
import openai
import pytest

from tests.agents_helpers import agents_catalogue
from tests.conftest import ADMIN_KEY, SPACE

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def agents_gateway(start_gateway, upstream):
    return start_gateway(agents_catalogue(upstream[1]))


def _client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=30)


def _text(content: Any) -> str:
    return content if isinstance(content, str) else "".join(p["text"] for p in content)


def _sent(upstream: Any) -> dict[str, Any]:
    return upstream[0].requests[-1]


def test_the_agent_key_runs_the_latest_published_version_and_its_settings_reach_the_upstream(agents_gateway, upstream):
    response = _client(agents_gateway).responses.create(model="support-bot", input="How do I reset my password?")
    assert response.model == "support-bot" and response.status == "completed"
    assert response.usage is not None and response.usage.total_tokens > 0
    sent = _sent(upstream)
    assert sent["model"] == "ok"  # the version's model's upstream name
    assert sent["messages"] == [
        {"role": "system", "content": "You are Support Bot (v2)."},
        {"role": "user", "content": "How do I reset my password?"},
    ]
    assert (sent["temperature"], sent["max_completion_tokens"]) == (0.2, 256)
    assert "top_p" not in sent


def test_a_pinned_version_runs_that_version(agents_gateway, upstream):
    _client(agents_gateway).responses.create(model="support-bot@1", input="hi")
    sent = _sent(upstream)
    assert sent["messages"][0] == {"role": "system", "content": "You are Support Bot (v1)."}
    assert (sent["temperature"], sent["top_p"], sent["max_completion_tokens"]) == (0.7, 1, 4096)


def test_the_callers_instructions_follow_the_agents_and_max_tokens_is_a_ceiling(agents_gateway, upstream):
    client = _client(agents_gateway)
    client.responses.create(model="support-bot", input="hi", instructions="Answer in French.", max_output_tokens=100)
    sent = _sent(upstream)
    assert sent["messages"][0] == {"role": "system", "content": "You are Support Bot (v2).\n\nAnswer in French."}
    assert sent["max_completion_tokens"] == 100
    client.responses.create(model="support-bot", input="hi", max_output_tokens=100_000, temperature=0.2)
    assert _sent(upstream)["max_completion_tokens"] == 256


def test_a_parameter_the_version_fixes_cannot_be_changed(agents_gateway, upstream):
    before = len(upstream[0].requests)
    with pytest.raises(openai.BadRequestError) as err:
        _client(agents_gateway).responses.create(model="support-bot", input="hi", temperature=1.5)
    assert err.value.code == "agent_parameter_fixed" and "0.2" in err.value.message
    assert len(upstream[0].requests) == before


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("support-bot@3", 400, "version_not_published"),
        ("support-bot@9", 404, "agent_version_not_found"),
        ("support-bot@x", 400, "invalid_agent_version"),
        ("support-bot@0", 400, "invalid_agent_version"),
        ("support-bot@99999999999999999999", 400, "invalid_agent_version"),
        ("retired", 400, "agent_not_active"),
        ("unpublished", 400, "agent_not_published"),
        ("hidden", 403, "agent_not_allowed"),
        ("on-extra", 403, "model_not_allowed"),  # the space's allow-list applies to the agent's model
        ("no-such-agent", 403, "model_not_allowed"),  # an unknown name is a model name, as ever
        ("no-such-agent@2", 403, "model_not_allowed"),
    ],
)
def test_refusals_on_the_openai_route(agents_gateway, upstream, model, status, code):
    before = len(upstream[0].requests)
    r = httpx2.post(agents_gateway + "/v1/responses", headers=AUTH, json={"model": model, "input": "hi"})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert len(upstream[0].requests) == before


def test_refusals_on_the_native_route_take_its_shape(agents_gateway):
    url = f"{agents_gateway}/v1/spaces/{SPACE}/responses"
    r = httpx2.post(url, headers=AUTH, json={"model": "retired", "input": "hi"})
    assert r.status_code == 400 and "not active" in r.json()["detail"]
    r = httpx2.post(url, headers=AUTH, json={"model": "support-bot", "input": "hi", "temperature": 0.9})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "temperature"]


def test_the_native_route_runs_the_agent_and_names_its_version(agents_gateway, upstream):
    r = httpx2.post(
        f"{agents_gateway}/v1/spaces/{SPACE}/responses", headers=AUTH, json={"model": "support-bot@1", "input": "hi"}
    )
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["model_alias"] == "up" and data["aimable"]["agent"] == {"key": "support-bot", "version": 1}
    assert _sent(upstream)["messages"][0]["content"] == "You are Support Bot (v1)."


def test_a_conversation_stays_on_its_version_unless_the_request_names_another(agents_gateway, upstream):
    client = _client(agents_gateway)
    first = client.responses.create(model="support-bot@1", input="one")
    second = client.responses.create(model="support-bot", input="two", previous_response_id=first.id)
    sent = _sent(upstream)
    assert sent["messages"][0]["content"] == "You are Support Bot (v1)."
    assert [_text(m["content"]) for m in sent["messages"] if m["role"] == "user"] == ["one", "two"]
    client.responses.create(model="support-bot@2", input="three", previous_response_id=second.id)
    assert _sent(upstream)["messages"][0]["content"] == "You are Support Bot (v2)."
    native = httpx2.post(
        f"{agents_gateway}/v1/spaces/{SPACE}/responses",
        headers=AUTH,
        json={"input": "four", "previous_response_id": second.id},  # no model: the conversation's agent version
    )
    assert native.status_code == 200, native.text
    assert native.json()["data"]["aimable"]["agent"] == {"key": "support-bot", "version": 1}
    client.responses.create(model="up", input="five", previous_response_id=second.id)  # a model: no agent
    assert [m["role"] for m in _sent(upstream)["messages"]][:1] == ["user"]


def test_models_lists_the_spaces_invocable_agents_marked_as_agents(agents_gateway):
    client = _client(agents_gateway)
    listed = {m.id: m for m in client.models.list().data}
    assert {"up", "fake-echo", "support-bot", "on-extra"} <= set(listed)
    assert not {"retired", "hidden", "unpublished"} & set(listed)
    agent = listed["support-bot"].model_dump()
    assert agent["agent"] == {
        "name": "Support Bot",
        "description": "Customer support agent",
        "version": 2,
        "model": "up",
    }
    assert agent["created"] == 1768471200 and "agent" not in listed["up"].model_dump()
    assert client.models.retrieve("support-bot").id == "support-bot"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("hidden")


def test_chat_completions_does_not_invoke_agents(agents_gateway):
    r = httpx2.post(
        agents_gateway + "/v1/chat/completions",
        headers=AUTH,
        json={"model": "support-bot", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"
