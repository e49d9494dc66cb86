"""Responses <-> Chat Completions translation: request bodies, final responses, usage, the response shell, ids."""

import copy
import re
from typing import Any

import pytest
from openai.types.responses import Response

from gateway.responses.ids import (
    new_call_id,
    new_function_call_id,
    new_message_id,
    new_reasoning_id,
    new_response_id,
)
from gateway.responses.translate import (
    UnsupportedFeature,
    chat_to_response,
    request_to_chat,
    response_shell,
    usage_from_chat,
    usage_to_chat,
)
from tests.responses import LLAMACPP, assert_subset, load, normalize_ids, read_json, sdk_extras

RESPONSE_ID = "resp_" + "0" * 32
CREATED_AT = 1741569952
COMPLETED_AT = 1741569960
# openapi `Response.required`: emitted even when null.
REQUIRED = (
    "id object created_at model output error incomplete_details instructions metadata parallel_tool_calls "
    "temperature tool_choice tools top_p"
).split()


def shell_for(request: dict[str, Any], status: str = "in_progress") -> dict[str, Any]:
    return response_shell(
        request, response_id=RESPONSE_ID, created_at=CREATED_AT, model=request["model"], status=status
    )


def assert_valid_response(response: dict[str, Any]) -> None:
    """The official SDK accepts the object, recognises every key, and every required key is present."""
    assert sdk_extras(Response.model_validate(response)) == []
    assert all(key in response for key in REQUIRED)


# --- request ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", load("requests.json"), ids=lambda case: case["name"])
def test_request_to_chat(case: dict[str, Any]) -> None:
    request, history = copy.deepcopy(case["request"]), copy.deepcopy(case["history"])
    assert request_to_chat(request, history) == case["chat"]
    assert (request, history) == (case["request"], case["history"]), "inputs are never mutated"


@pytest.mark.parametrize("case", load("unsupported.json"), ids=lambda case: case["name"])
def test_unsupported_features_name_the_param(case: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedFeature) as raised:
        request_to_chat(case["request"], case["history"])
    assert isinstance(raised.value, ValueError)
    assert raised.value.param == case["param"]
    assert str(raised.value) == raised.value.message and raised.value.message


def test_instructions_come_only_from_the_request() -> None:
    history = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]
    chat = request_to_chat({"model": "m", "instructions": "New rules.", "input": "again"}, history)
    assert chat["messages"] == [
        {"role": "system", "content": "New rules."},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "user", "content": "again"},
    ]


# --- the shell ---------------------------------------------------------------------------------------------------


def test_shell_of_a_minimal_request_has_openai_defaults() -> None:
    shell = shell_for({"model": "gpt-4.1", "input": "hi"})
    assert shell == {
        "id": RESPONSE_ID,
        "object": "response",
        "created_at": CREATED_AT,
        "status": "in_progress",
        "completed_at": None,
        "background": False,
        "conversation": None,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "max_tool_calls": None,
        "model": "gpt-4.1",
        "output": [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "prompt_cache_key": None,
        "reasoning": {"effort": None, "summary": None},
        "safety_identifier": None,
        "service_tier": None,
        "store": True,
        "temperature": 1,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_logprobs": None,
        "top_p": 1,
        "truncation": "disabled",
        "usage": None,
        "user": None,
        "metadata": {},
    }
    assert_valid_response(shell)


def test_shell_echoes_the_request() -> None:
    request = load("requests.json")[4]["request"] | {
        "instructions": "Be brief.",
        "previous_response_id": "resp_abc",
        "conversation": {"id": "conv_123"},
        "metadata": {"k": "v"},
        "store": False,
        "background": True,
        "truncation": "auto",
        "temperature": 0.2,
        "top_p": 0.5,
        "parallel_tool_calls": False,
        "max_output_tokens": 500,
        "user": "u1",
    }
    shell = shell_for(request, status="queued")
    assert_subset(
        shell,
        {
            "status": "queued",
            "instructions": "Be brief.",
            "previous_response_id": "resp_abc",
            "conversation": {"id": "conv_123"},
            "metadata": {"k": "v"},
            "store": False,
            "background": True,
            "truncation": "auto",
            "temperature": 0.2,
            "top_p": 0.5,
            "parallel_tool_calls": False,
            "max_output_tokens": 500,
            "user": "u1",
            "reasoning": {"effort": "minimal", "summary": "auto"},
            "text": request["text"],
            "tool_choice": {"type": "function", "name": "get_current_weather"},
            "tools": [
                request["tools"][0],
                {"type": "function", "name": "get_time", "description": None, "parameters": None, "strict": None},
            ],
        },
    )
    assert_valid_response(shell)
    assert shell_for({"model": "m", "conversation": "conv_9"})["conversation"] == {"id": "conv_9"}


# --- final response ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", load("completions.json"), ids=lambda case: case["name"])
def test_chat_to_response(case: dict[str, Any]) -> None:
    shell = shell_for(case["request"])
    pristine = copy.deepcopy(shell)
    response = chat_to_response(case["chat"], shell=shell, completed_at=COMPLETED_AT)
    assert_subset(normalize_ids(response), case["expected"])
    assert (response["id"], response["created_at"], response["object"]) == (RESPONSE_ID, CREATED_AT, "response")
    assert_valid_response(response)
    assert shell == pristine, "the shell is never mutated"


def test_completed_at_defaults_to_now_and_is_only_set_when_completed() -> None:
    shell = shell_for({"model": "m"})
    done = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}]}
    cut = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "length"}]}
    assert chat_to_response(done, shell=shell)["completed_at"] >= CREATED_AT
    assert chat_to_response(cut, shell=shell)["completed_at"] is None


def test_output_item_ids_are_minted_by_the_gateway() -> None:
    case = load("completions.json")[6]
    output = chat_to_response(case["chat"], shell=shell_for(case["request"]))["output"]
    assert re.fullmatch(r"msg_[0-9a-f]{32}", output[0]["id"])
    assert re.fullmatch(r"fc_[0-9a-f]{32}", output[1]["id"])
    assert re.fullmatch(r"call_[0-9a-f]{32}", output[1]["call_id"]), "a call id is minted when the upstream sent none"


def expected_output(message: dict[str, Any], cut: bool) -> list[dict[str, Any]]:
    """The output items a Chat message maps to (CONTRACT §4.2), with normalised ids; after a cut the last one
    is incomplete."""
    output: list[dict[str, Any]] = []
    if message.get("content"):
        text = {"type": "output_text", "text": message["content"], "annotations": [], "logprobs": []}
        output.append({"id": "msg_1", "type": "message", "status": "", "role": "assistant", "content": [text]})
    for i, call in enumerate(message.get("tool_calls") or []):
        function = call["function"]
        output.append(
            {
                "id": f"fc_{i + 1}",
                "type": "function_call",
                "status": "",
                "call_id": call["id"],
                "name": function["name"],
                "arguments": function["arguments"],
            }
        )
    for item in output:
        item["status"] = "completed"
    if cut and output:
        output[-1]["status"] = "incomplete"
    return output


@pytest.mark.parametrize("path", sorted(LLAMACPP.glob("chat_completion*.json")), ids=lambda path: path.name)
def test_llamacpp_answers(path: Any) -> None:
    chat = read_json(path)
    [choice] = chat["choices"]
    response = chat_to_response(chat, shell=shell_for({"model": "gemma", "input": "x"}), completed_at=COMPLETED_AT)
    cut = choice["finish_reason"] == "length"
    assert_subset(
        normalize_ids(response),
        {
            "status": "incomplete" if cut else "completed",
            "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
            "completed_at": None if cut else COMPLETED_AT,
            "model": "gemma",
            "output": expected_output(choice["message"], cut),
            "usage": {
                "input_tokens": chat["usage"]["prompt_tokens"],
                "input_tokens_details": {"cached_tokens": chat["usage"]["prompt_tokens_details"]["cached_tokens"]},
                "output_tokens": chat["usage"]["completion_tokens"],
                "total_tokens": chat["usage"]["total_tokens"],
            },
        },
    )
    assert_valid_response(response)


def test_the_recorded_llamacpp_tool_request_is_what_we_send() -> None:
    tool = {"name": "get_weather", "description": "Get the weather for a city"}
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    request = {
        "model": "gemma",
        "input": "What is the weather in Paris?",
        "max_output_tokens": 40,
        "tools": [{"type": "function", **tool, "parameters": parameters}],
        "tool_choice": "required",
    }
    assert request_to_chat(request, []) == {
        "model": "gemma",
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "max_completion_tokens": 40,
        "tools": [{"type": "function", "function": {**tool, "parameters": parameters}}],
        "tool_choice": "required",
    }


# --- usage ---------------------------------------------------------------------------------------------------------

USAGE_CASES = [
    ("absent", None, None),
    ("empty", {}, None),
    (
        "openai with details",
        {
            "prompt_tokens": 1082,
            "completion_tokens": 117,
            "total_tokens": 1199,
            "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 64, "audio_tokens": 0},
        },
        {
            "input_tokens": 1082,
            "input_tokens_details": {"cached_tokens": 1024, "cache_write_tokens": 0},
            "output_tokens": 117,
            "output_tokens_details": {"reasoning_tokens": 64},
            "total_tokens": 1199,
        },
    ),
    (
        "llama.cpp without details",
        {"completion_tokens": 31, "prompt_tokens": 14, "total_tokens": 45},
        {
            "input_tokens": 14,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": 31,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 45,
        },
    ),
    (
        "null details, cache writes, no total",
        {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": None, "cache_write_tokens": 8},
            "completion_tokens_details": None,
        },
        {
            "input_tokens": 10,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 8},
            "output_tokens": 5,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 15,
        },
    ),
]


@pytest.mark.parametrize(("chat", "expected"), [c[1:] for c in USAGE_CASES], ids=[c[0] for c in USAGE_CASES])
def test_usage_from_chat(chat: dict[str, Any] | None, expected: dict[str, Any] | None) -> None:
    assert usage_from_chat(chat) == expected


def test_usage_to_chat_reverses_usage_from_chat() -> None:
    chat = USAGE_CASES[2][1]
    assert usage_to_chat(usage_from_chat(chat)) == {
        "prompt_tokens": 1082,
        "completion_tokens": 117,
        "total_tokens": 1199,
        "prompt_tokens_details": {"cached_tokens": 1024},
        "completion_tokens_details": {"reasoning_tokens": 64},
    }
    assert usage_to_chat(None) is None


# --- ids -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mint", "prefix"),
    [
        (new_response_id, "resp_"),
        (new_message_id, "msg_"),
        (new_function_call_id, "fc_"),
        (new_reasoning_id, "rs_"),
        (new_call_id, "call_"),
    ],
)
def test_ids_are_a_prefix_and_32_hex_digits(mint: Any, prefix: str) -> None:
    ids = {mint() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(re.escape(prefix) + "[0-9a-f]{32}", value) for value in ids)
