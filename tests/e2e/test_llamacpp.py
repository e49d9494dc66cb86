"""The gateway in front of a real upstream nobody here wrote: llama.cpp's server on Gemma 3 270M, driven with
the official openai SDK. Gemma 270M is a base model (its answers echo the prompt), so these tests check shapes
and relaying, not meaning; at temperature 0, with one slot and no prompt cache, its answers are deterministic.
"""

import json
import urllib.request
from typing import Any

import openai
import pytest

from tests.conftest import ADMIN_KEY, MEMBER_KEY
from tests.e2e.record import HELLO, MODEL_ALIAS, WEATHER, WEATHER_TOOL

MODEL = "up"  # the tenant model in front of llama.cpp (tests.conftest.catalogue)


def client(base: str, key: str = ADMIN_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=120)


def chat(base: str, key: str = ADMIN_KEY, **kw: Any) -> Any:
    return client(base, key).chat.completions.create(model=MODEL, temperature=0, **kw)


def prompt_tokens_seen(llama: str) -> float:
    """llama.cpp's count of prompt tokens it has processed (its Prometheus ``/metrics``)."""
    with urllib.request.urlopen(llama + "/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("llamacpp:prompt_tokens_total "):
                return float(line.split()[1])
    raise AssertionError("llama.cpp's /metrics has no llamacpp:prompt_tokens_total")


def test_plain_chat_is_llamas_answer(llama_gateway, llama):
    answer = chat(llama_gateway, messages=HELLO, max_tokens=16)
    assert answer.object == "chat.completion"
    assert answer.model == MODEL_ALIAS  # llama.cpp names its own model, whatever was asked; relayed as is
    message = answer.choices[0].message
    assert message.role == "assistant" and message.content
    assert answer.choices[0].finish_reason in ("stop", "length")
    usage = answer.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 16
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    direct = openai.OpenAI(base_url=llama + "/v1", api_key="unused", max_retries=0, timeout=120)
    same = direct.chat.completions.create(model="gemma", messages=HELLO, max_tokens=16, temperature=0)
    assert same.choices[0].message.content == message.content
    assert same.usage == usage


def test_stream_text_is_the_plain_text_and_usage_comes_only_when_asked(llama_gateway):
    plain = chat(llama_gateway, messages=HELLO, max_tokens=16)

    chunks = list(chat(llama_gateway, messages=HELLO, max_tokens=16, stream=True))
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == plain.choices[0].message.content
    assert all(c.choices and c.usage is None for c in chunks)  # the gateway hid the usage chunk it asked for
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason

    chunks = list(
        chat(llama_gateway, messages=HELLO, max_tokens=16, stream=True, stream_options={"include_usage": True})
    )
    *text_chunks, last = chunks
    assert "".join(c.choices[0].delta.content or "" for c in text_chunks) == plain.choices[0].message.content
    assert all(c.usage is None for c in text_chunks)
    assert last.choices == [] and last.usage == plain.usage


def test_tool_call(llama_gateway):
    # The chat template (tests/e2e/record.py) renders tools; tool_choice "required" makes llama.cpp constrain
    # the answer with a grammar, so even this base model produces a call.
    answer = chat(llama_gateway, messages=WEATHER, tools=[WEATHER_TOOL], tool_choice="required", max_tokens=40)
    calls = answer.choices[0].message.tool_calls
    assert calls, answer
    assert calls[0].type == "function" and calls[0].id
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    # llama.cpp says "tool_calls" only when the model stops by itself; cut by max_tokens it says "length".
    assert answer.choices[0].finish_reason in ("tool_calls", "length")

    chunks = list(
        chat(
            llama_gateway,
            messages=WEATHER,
            tools=[WEATHER_TOOL],
            tool_choice="required",
            max_tokens=40,
            stream=True,
        )
    )
    deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or [] if d.index == 0]
    assert deltas and deltas[0].id and deltas[0].function.name == "get_weather"
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {"city": "Paris"}


def test_model_not_allowed_is_403_and_never_reaches_llama(llama_gateway, llama):
    before = prompt_tokens_seen(llama)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        chat(llama_gateway, key=MEMBER_KEY, messages=HELLO, max_tokens=4)  # the member's space lacks "up"
    assert refused.value.status_code == 403
    assert refused.value.code == "model_not_allowed"
    assert prompt_tokens_seen(llama) == before

    chat(llama_gateway, messages=HELLO, max_tokens=1)  # the same request where it is allowed does reach it
    assert prompt_tokens_seen(llama) > before


def test_models_are_the_space_allow_list(llama_gateway):
    assert [m.id for m in client(llama_gateway).models.list()] == ["up", "fake-echo", "fake-slow", "fake-tool"]
    assert client(llama_gateway).models.retrieve("up").id == "up"
    assert [m.id for m in client(llama_gateway, key=MEMBER_KEY).models.list()] == ["fake-echo"]
