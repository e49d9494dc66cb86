"""Responses through the gateway to llama.cpp: translated over its Chat Completions, and natively over its own
``/v1/responses``; and its Anthropic-style ``/v1/messages`` reached through the litellm bridge."""

import openai
import pytest

from tests.conftest import ADMIN_KEY, GatewayFactory, catalogue


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=120)


@pytest.fixture(params=["chat", "responses"])
def gateway_on_llama(request, start_gateway: GatewayFactory, llama: str) -> str:
    cat = catalogue(llama, upstream_model="gemma")
    if request.param == "responses":
        cat["tenants"][0]["models"][0]["deployment"]["api"] = "responses"
    return start_gateway(cat)


ASK = {"model": "up", "input": "The capital of France is", "max_output_tokens": 12, "temperature": 0}


def test_create_and_stream_agree(gateway_on_llama):
    c = client(gateway_on_llama)
    whole = c.responses.create(**ASK)
    assert whole.id.startswith("resp_") and whole.output_text
    assert whole.usage.input_tokens > 0 and whole.usage.output_tokens > 0
    events = list(c.responses.create(**ASK, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type in ("response.completed", "response.incomplete")
    streamed = events[-1].response
    assert streamed.output_text == whole.output_text  # temperature 0, one slot, no prompt cache: deterministic
    assert c.responses.retrieve(streamed.id).output_text == whole.output_text


def test_conversation_continues_from_the_gateways_store(gateway_on_llama):
    c = client(gateway_on_llama)
    first = c.responses.create(**ASK)
    second = c.responses.create(**{**ASK, "input": "And of Italy?"}, previous_response_id=first.id)
    assert second.output_text and second.usage.input_tokens > first.usage.input_tokens
    items = c.responses.input_items.list(second.id)
    assert [i.content[0].text for i in items.data] == ["And of Italy?"]


def test_length_limit_is_incomplete_on_the_translated_path(start_gateway: GatewayFactory, llama: str):
    base = start_gateway(catalogue(llama, upstream_model="gemma"))
    r = client(base).responses.create(**{**ASK, "max_output_tokens": 2})
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_messages_through_the_litellm_bridge(
    start_gateway: GatewayFactory, llama: str, stream: bool, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("E2E_ANTHROPIC_KEY", "sk-ant-local")  # llama.cpp ignores it; litellm insists on one
    cat = catalogue(llama)
    cat["tenants"][0]["models"][0]["deployment"] = {
        "type": "anthropic",
        "model": "gemma",
        "base_url": llama,
        "api_key_env": "E2E_ANTHROPIC_KEY",
    }
    base = start_gateway(cat)
    c = openai.OpenAI(base_url=base + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=120)
    messages = [{"role": "user", "content": "The capital of France is"}]
    if stream:
        chunks = list(
            c.chat.completions.create(
                model="up",
                messages=messages,
                max_tokens=8,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert chunks[-1].usage.completion_tokens > 0
    else:
        answer = c.chat.completions.create(model="up", messages=messages, max_tokens=8, temperature=0)
        assert answer.choices[0].message.content and answer.usage.prompt_tokens > 0
