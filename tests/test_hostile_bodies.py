"""Malformed request bodies are a 4xx in the route's shape, never a 5xx (the SDKs retry 5xx, alerts fire).

A property-based sweep substitutes wrong-typed values at every field and nested path of representative valid
Responses, Chat and native bodies and sends them to a real gateway (fake provider and loopback upstream); plain
regression tests pin each crash found by hand.
"""

from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.responses.translate import UnsupportedFeature, request_to_chat, response_shell
from tests.conftest import ADMIN_KEY, SPACE

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
NATIVE = f"/v1/spaces/{SPACE}/responses"

_TOOL = {
    "type": "function",
    "name": "lookup",
    "description": "Look it up",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
    "strict": False,
}
RESPONSES_BODY: dict[str, Any] = {
    "model": "fake-tool",
    "instructions": [{"role": "developer", "content": "Be brief."}],
    "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "hello"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hi"}]},
        {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "42"},
        {"role": "user", "content": "and now?"},
    ],
    "tools": [_TOOL],
    "tool_choice": {"type": "function", "name": "lookup"},
    "text": {"format": {"type": "json_schema", "name": "r", "schema": {"type": "object"}}, "verbosity": "low"},
    "reasoning": {"effort": "low"},
    "include": ["reasoning.encrypted_content"],
    "metadata": {"k": "v"},
    "temperature": 0.5,
    "top_p": 1,
    "max_output_tokens": 50,
    "parallel_tool_calls": True,
    "store": True,
    "user": "u1",
}
CHAT_BODY: dict[str, Any] = {
    "model": "up",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "hello"}]},
    ],
    "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
    "stream": False,
    "stream_options": {"include_usage": True},
}
NATIVE_BODY: dict[str, Any] = {
    "model": "fake-echo",
    "input": [{"role": "user", "content": [{"type": "input_text", "text": "hello"}]}],
    "tools": [_TOOL],
    "metadata": {"k": "v"},
    "tool_mode": "manual",
    "x_context": {"plan": "pro"},
}
STREAMED_BODY: dict[str, Any] = {**RESPONSES_BODY, "model": "fake-echo", "stream": True, "tool_choice": "auto"}
ROUTES = [
    ("/v1/responses", RESPONSES_BODY),
    ("/v1/responses", STREAMED_BODY),
    ("/v1/chat/completions", {**CHAT_BODY, "stream": True}),
    ("/v1/chat/completions", CHAT_BODY),
    (NATIVE, NATIVE_BODY),
]


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON value (dict keys and list indexes), the leaves and the containers."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, inner in value.items():
            out += paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            out += paths(inner, (*prefix, i))
    return out


def replaced(body: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(body, dict):
        return {**body, head: replaced(body[head], rest, new)}
    return [replaced(v, rest, new) if i == head else v for i, v in enumerate(body)]


WRONG_VALUES = [None, 0, 5, -1, 1.5, True, False, "", "x", [], [None], [1], ["s"], [[]], {}, {"a": 1}]
WRONG = st.sampled_from(WRONG_VALUES)
CASES = [(route, body, path) for route, body in ROUTES for path in paths(body)]


def assert_route_shape(route: str, r: httpx2.Response) -> None:
    assert r.status_code < 500, (route, r.status_code, r.text)
    if r.status_code < 400:
        return
    body = r.json()
    if route.startswith("/v1/spaces/"):
        detail = body["detail"]
        assert isinstance(detail, str) or all(isinstance(d["loc"], list) and d["msg"] for d in detail), body
    else:
        error = body["error"]
        assert isinstance(error["message"], str) and isinstance(error["type"], str), body


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=st.sampled_from(CASES), wrong=WRONG)
def test_wrong_types_anywhere_are_a_4xx_in_the_routes_shape(gateway, case, wrong):
    # One gateway serves every example (hypothesis runs the fixture once per test, not per example).
    route, body, path = case
    r = httpx2.post(gateway + route, headers=AUTH, json=replaced(body, path, wrong), timeout=15)
    assert_route_shape(route, r)


def test_every_path_with_every_wrong_value(gateway):
    # The sweep above samples (and shrinks a failure to its smallest case); this visits every path with every
    # wrong value, so no field is left out by chance.
    with httpx2.Client(base_url=gateway, headers=AUTH, timeout=15) as client:
        for route, body, path in CASES:
            for wrong in WRONG_VALUES:
                assert_route_shape(route, client.post(route, json=replaced(body, path, wrong)))


@pytest.mark.parametrize("route,body", ROUTES)
def test_the_representative_bodies_are_valid(gateway, route, body):
    r = httpx2.post(gateway + route, headers=AUTH, json=body, timeout=15)
    assert r.status_code == 200, r.text


RESPONSES_CRASHES = [
    ({"tools": [1]}, "tools[0]"),
    ({"tools": [None]}, "tools[0]"),
    ({"tools": ["s"]}, "tools[0]"),
    ({"tools": [[]]}, "tools[0]"),
    ({"text": "x"}, "text"),
    ({"text": {"format": 5}}, "text.format"),
    ({"reasoning": "x"}, "reasoning"),
    ({"input": [{"role": "user", "content": [5]}]}, "input[0].content[0]"),
    ({"input": [{"role": "user", "content": [{"type": "input_text", "text": 5}]}]}, "input[0].content[0].text"),
]


@pytest.mark.parametrize("change,param", RESPONSES_CRASHES)
def test_responses_crashes_are_400_naming_the_path(gateway, change, param):
    r = httpx2.post(gateway + "/v1/responses", headers=AUTH, json={"model": "fake-tool", "input": "hi", **change})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


@pytest.mark.parametrize("change,param", RESPONSES_CRASHES)
def test_native_crashes_are_422_with_the_loc(gateway, change, param):
    r = httpx2.post(gateway + NATIVE, headers=AUTH, json={"model": "fake-tool", "input": "hi", **change})
    assert r.status_code == 422, r.text
    loc = ["body", *(int(p) if p.isdigit() else p for p in param.replace("]", "").replace("[", ".").split("."))]
    assert r.json()["detail"][0]["loc"] == loc


def test_a_present_field_of_the_wrong_type_says_what_it_must_be(gateway):
    body = {"model": "fake-echo", "input": [{"type": "function_call", "call_id": 5, "name": "f", "arguments": ""}]}
    r = httpx2.post(gateway + "/v1/responses", headers=AUTH, json=body)
    assert r.status_code == 400 and r.json()["error"]["message"] == "'input[0].call_id' must be a string."


def test_a_numeric_model_is_400_on_every_route(gateway):
    responses = httpx2.post(gateway + "/v1/responses", headers=AUTH, json={"model": 5, "input": "hi"})
    assert responses.status_code == 400 and responses.json()["error"]["param"] == "model"
    chat = httpx2.post(gateway + "/v1/chat/completions", headers=AUTH, json={"model": 5, "messages": [{}]})
    assert chat.status_code == 400 and chat.json()["error"]["param"] == "model"
    native = httpx2.post(gateway + NATIVE, headers=AUTH, json={"model": 5, "input": "hi"})
    assert native.status_code == 422 and native.json()["detail"][0]["loc"] == ["body", "model"]


@pytest.mark.parametrize("conversation", ["conv_123", {"id": "conv_123"}])
def test_conversation_is_refused_until_conversations_exist(gateway, conversation):
    body = {"model": "fake-echo", "input": "hi", "conversation": conversation}
    r = httpx2.post(gateway + "/v1/responses", headers=AUTH, json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "conversation"


@pytest.mark.parametrize(
    "change,param",
    [
        ({"stream_options": "x"}, "stream_options"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"tools": [1]}, "tools[0]"),
        ({"tools": "x"}, "tools"),
    ],
)
def test_chat_fields_the_gateway_reads_are_400(gateway, change, param):
    body = {"model": "fake-echo", "messages": [{"role": "user", "content": "hi"}], "stream": True, **change}
    r = httpx2.post(gateway + "/v1/chat/completions", headers=AUTH, json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_the_fake_provider_survives_odd_chat_bodies(gateway):
    # Unread fields pass through to the provider, which must answer, not crash.
    body = {"model": "fake-tool", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}
    r = httpx2.post(gateway + "/v1/chat/completions", headers=AUTH, json={**body, "tools": [{"function": 5}]})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "request_body",
    [
        {"tools": [1]},
        {"tools": [None]},
        {"text": "x"},
        {"text": {"format": 5}},
        {"reasoning": "x"},
        {"tool_choice": 5},
        {"input": [5]},
        {"input": [{"role": "user", "content": [5]}]},
        {"input": [{"role": "user", "content": [{"type": "input_text", "text": 5}]}]},
    ],
)
def test_translation_refuses_what_slips_past_validation(request_body):
    # Defence in depth: translation answers UnsupportedFeature (a 400), and the shell echoes without crashing.
    request = {"model": "m", "input": "hi", **request_body}
    response_shell(request, response_id="resp_1", created_at=0, model="m")
    with pytest.raises(UnsupportedFeature):
        # tool_choice is only read alongside tools
        request_to_chat({"tools": [{"type": "function", "name": "f"}], **request}, [])
