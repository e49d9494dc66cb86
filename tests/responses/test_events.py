"""Streaming: Chat chunks -> Responses events (checked against the official SDK's types), SSE framing, and
Responses events -> Chat chunks."""

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from openai.types.chat import ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from gateway.responses.events import ChatStreamToEvents, EventsToChatChunks, events_of
from gateway.responses.translate import chat_to_response, response_shell, usage_to_chat
from gateway.sse import format_sse
from tests.responses import LLAMACPP, assert_subset, load, normalize_ids, read_json, read_sse, sdk_extras

STREAMS = load("streams.json")
COMPLETED_AT = 1751800005
EVENT = TypeAdapter(ResponseStreamEvent)


def shell_for(request: dict[str, Any], status: str = "in_progress") -> dict[str, Any]:
    return response_shell(
        request, response_id="resp_" + "1" * 32, created_at=1751800000, model=request["model"], status=status
    )


def run(case: dict[str, Any]) -> tuple[ChatStreamToEvents, list[dict[str, Any]]]:
    machine = ChatStreamToEvents(shell_for(case["request"]))
    events = machine.start()
    for chunk in case["chunks"]:
        events += machine.feed(chunk)
    if "fail" in case:
        events += machine.fail(case["fail"]["code"], case["fail"]["message"])
    else:
        events += machine.finish(completed_at=COMPLETED_AT)
    return machine, events


def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, **extra}
    return {"id": "chatcmpl-t", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice]}


# --- Chat chunks -> Responses events -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", STREAMS, ids=lambda case: case["name"])
def test_stream_events(case: dict[str, Any]) -> None:
    _, events = run(case)
    assert [event["sequence_number"] for event in events] == list(range(len(events))), "from 0, no gaps"
    assert [event["type"] for event in events] == [event["type"] for event in case["events"]]
    assert_subset(normalize_ids(events), case["events"])


SHORT = {
    "response.output_item.added": "A",
    "response.content_part.added": "P",
    "response.output_text.delta": "t",
    "response.refusal.delta": "t",
    "response.reasoning_text.delta": "t",
    "response.output_text.done": "T",
    "response.refusal.done": "T",
    "response.reasoning_text.done": "T",
    "response.content_part.done": "Q",
    "response.function_call_arguments.delta": "a",
    "response.function_call_arguments.done": "F",
    "response.output_item.done": "D",
}
# Per item (CONTRACT §3.5): message/reasoning = added, (part added, deltas, text done, part done)+, item done;
# function call = added, argument deltas, arguments done, item done.
ITEM_ORDER = re.compile(r"A(Pt*TQ)+D|Aa*FD")


def assert_canonical_order(events: list[dict[str, Any]]) -> None:
    """created, in_progress, each item in canonical order, a text item done before the next item starts, and one
    terminal event; cut streams (``response.failed``) may leave the last items unfinished."""
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[-1]["type"] in ("response.completed", "response.incomplete", "response.failed")
    per_item: dict[int, str] = {}
    for event in events[2:-1]:
        per_item[event["output_index"]] = per_item.get(event["output_index"], "") + SHORT[event["type"]]
    failed = events[-1]["type"] == "response.failed"
    for index, kinds in per_item.items():
        assert ITEM_ORDER.fullmatch(kinds) or (failed and kinds.endswith(("A", "a"))), (index, kinds)
    starts = [i for i, e in enumerate(events) if e["type"] == "response.output_item.added"]
    for event in events:
        if event["type"] == "response.output_item.done" and event["item"]["type"] != "function_call":
            later = [i for i in starts if events[i]["output_index"] > event["output_index"]]
            assert not later or events.index(event) < later[0], "a text item is done before the next one starts"


@pytest.mark.parametrize("case", STREAMS, ids=lambda case: case["name"])
def test_canonical_order(case: dict[str, Any]) -> None:
    assert_canonical_order(run(case)[1])


@pytest.mark.parametrize("case", STREAMS, ids=lambda case: case["name"])
def test_every_event_validates_with_the_sdk(case: dict[str, Any]) -> None:
    _, events = run(case)
    for event in events:
        assert sdk_extras(EVENT.validate_python(event)) == [], event["type"]
        if "response" in event:
            assert sdk_extras(Response.model_validate(event["response"])) == []


@pytest.mark.parametrize("case", STREAMS, ids=lambda case: case["name"])
def test_events_agree_with_the_final_response(case: dict[str, Any]) -> None:
    machine, events = run(case)
    final = events[-1]["response"]
    assert machine.response == final
    done = {event["output_index"]: event["item"] for event in events if event["type"] == "response.output_item.done"}
    for index, item in done.items():
        assert final["output"][index] == item
    texts: dict[tuple[str, int], str] = {}
    for event in events:
        if event["type"] in ("response.output_text.delta", "response.refusal.delta", "response.reasoning_text.delta"):
            key = (event["item_id"], event["content_index"])
            texts[key] = texts.get(key, "") + event["delta"]
        elif event["type"] in ("response.output_text.done", "response.reasoning_text.done"):
            assert texts[(event["item_id"], event["content_index"])] == event["text"]
        elif event["type"] == "response.refusal.done":
            assert texts[(event["item_id"], event["content_index"])] == event["refusal"]
    assert machine.feed(case["chunks"][0]) == machine.finish() == machine.fail("server_error", "late") == []


def _per_item(events: list[dict[str, Any]]) -> dict[int, list[str]]:
    """Each output item's event types, one delta per part (a live stream may interleave parallel calls)."""
    items: dict[int, list[str]] = {}
    for event in events[2:-1]:
        kinds = items.setdefault(event["output_index"], [])
        if not (event["type"].endswith(".delta") and kinds and kinds[-1] == event["type"]):
            kinds.append(event["type"])
    return items


@pytest.mark.parametrize("case", [c for c in STREAMS if "fail" not in c], ids=lambda case: case["name"])
def test_a_finished_response_replays_as_the_events_of_its_stream(case: dict[str, Any]) -> None:
    """``events_of`` (a response created without streaming, replayed as a stream): the live stream's events,
    one delta per part, from the stored response alone; its items and final response exactly as stored."""
    _, live = run(case)
    final = live[-1]["response"]
    replayed = events_of(final)
    assert _per_item(replayed) == _per_item(live)
    assert [e["sequence_number"] for e in replayed] == list(range(len(replayed)))
    assert_canonical_order(replayed)
    for event in replayed:
        assert sdk_extras(EVENT.validate_python(event)) == [], event["type"]
    assert replayed[0]["response"] == {**live[0]["response"], "status": "in_progress"}
    assert [e["item"] for e in replayed if e["type"] == "response.output_item.done"] == final["output"]
    assert replayed[-1] == {**live[-1], "sequence_number": len(replayed) - 1}


def test_a_replay_announces_items_it_cannot_stream_and_a_cancelled_one_ends_without_a_terminal_event() -> None:
    search = {"id": "ws_1", "type": "web_search_call", "status": "completed", "action": {"type": "search"}}
    message = {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant", "content": []}
    response = {**shell_for({"model": "m"}), "status": "cancelled", "output": [search, message]}
    types = [(e["type"], e.get("item", {}).get("id")) for e in events_of(response)]
    assert types == [
        ("response.created", None),
        ("response.in_progress", None),
        ("response.output_item.added", "ws_1"),
        ("response.output_item.done", "ws_1"),
        ("response.output_item.added", "msg_1"),
        ("response.output_item.done", "msg_1"),
    ]


def test_start_is_implied_and_a_queued_shell_is_created_queued() -> None:
    machine = ChatStreamToEvents(shell_for({"model": "m", "background": True}, status="queued"))
    events = machine.feed(chunk({"content": "x"}))
    assert [(e["type"], e["response"]["status"]) for e in events[:2]] == [
        ("response.created", "queued"),
        ("response.in_progress", "in_progress"),
    ]
    assert machine.start() == []


def test_logprobs_stream_into_deltas_and_the_part() -> None:
    entry = {"token": "Hi", "logprob": -0.01, "bytes": None, "top_logprobs": [{"token": "Hi", "logprob": -0.01}]}
    machine = ChatStreamToEvents(shell_for({"model": "m"}))
    events = machine.feed(chunk({"content": "Hi"}, logprobs={"content": [entry], "refusal": None}))
    events += machine.feed(chunk({}, "stop")) + machine.finish()
    delta = next(e for e in events if e["type"] == "response.output_text.delta")
    assert delta["logprobs"] == [{"token": "Hi", "logprob": -0.01, "top_logprobs": [{"token": "Hi", "logprob": -0.01}]}]
    text_done = next(e for e in events if e["type"] == "response.output_text.done")
    assert text_done["logprobs"] == delta["logprobs"]
    part = machine.response["output"][0]["content"][0]
    assert part["logprobs"] == [
        {
            "token": "Hi",
            "logprob": -0.01,
            "bytes": [72, 105],
            "top_logprobs": [{"token": "Hi", "logprob": -0.01, "bytes": [72, 105]}],
        }
    ]
    for event in events:
        assert sdk_extras(EVENT.validate_python(event)) == []


def test_other_choices_are_ignored_and_late_call_ids_are_kept() -> None:
    machine = ChatStreamToEvents(shell_for({"model": "m"}))
    machine.feed({"choices": [{"index": 1, "delta": {"content": "second choice"}, "finish_reason": None}]})
    machine.feed(chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{"}}]}))
    machine.feed(chunk({"tool_calls": [{"index": 0, "id": "call_late", "function": {"arguments": "}"}}]}))
    machine.finish()
    [item] = machine.response["output"]
    assert (item["type"], item["call_id"], item["name"], item["arguments"]) == ("function_call", "call_late", "f", "{}")


def test_format_sse() -> None:
    event = {"type": "response.output_text.delta", "sequence_number": 4, "item_id": "msg_1", "delta": "é\n"}
    frame = format_sse(event)
    assert frame == b'id: 4\nevent: response.output_text.delta\ndata: {"type":"response.output_text.delta",' + (
        b'"sequence_number":4,"item_id":"msg_1","delta":"\xc3\xa9\\n"}\n\n'
    )
    assert orjson.loads(frame.split(b"data: ", 1)[1]) == event


# --- Responses events -> Chat chunks -------------------------------------------------------------------------------


def chat_view(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """What a Chat client assembles from a stream: text, refusal, tool calls by index, finish reason, usage."""
    view: dict[str, Any] = {"content": "", "refusal": "", "tool_calls": {}, "finish_reason": None, "usage": None}
    for piece in chunks:
        if piece.get("usage"):
            view["usage"] = piece["usage"]
        for choice in piece.get("choices") or []:
            delta = choice["delta"]
            view["content"] += delta.get("content") or ""
            view["refusal"] += delta.get("refusal") or ""
            for call in delta.get("tool_calls") or []:
                slot = view["tool_calls"].setdefault(call.get("index", 0), {"id": None, "name": "", "arguments": ""})
                slot["id"] = call.get("id") or slot["id"]
                slot["name"] += call.get("function", {}).get("name") or ""
                slot["arguments"] += call.get("function", {}).get("arguments") or ""
            view["finish_reason"] = choice["finish_reason"] or view["finish_reason"]
    return view


@pytest.mark.parametrize("case", [c for c in STREAMS if "fail" not in c], ids=lambda case: case["name"])
def test_round_trip_through_responses_events(case: dict[str, Any]) -> None:
    machine, events = run(case)
    reverse = EventsToChatChunks(chunk_id="chatcmpl-rt", created=1751800000, model="m", include_usage=True)
    chunks = [piece for event in events for piece in reverse.feed(event)]
    assert reverse.done and reverse.feed(events[-1]) == []
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert {(c["id"], c["created"], c["model"], c["object"]) for c in chunks} == {
        ("chatcmpl-rt", 1751800000, "m", "chat.completion.chunk")
    }
    for piece in chunks:
        ChatCompletionChunk.model_validate(piece)
    original, again = chat_view(case["chunks"]), chat_view(chunks)
    assert (again["content"], again["refusal"]) == (original["content"], original["refusal"])
    calls = [item for item in machine.response["output"] if item["type"] == "function_call"]
    assert list(again["tool_calls"].values()) == [
        {"id": item["call_id"], "name": item["name"], "arguments": item["arguments"]} for item in calls
    ]
    assert again["finish_reason"] == (original["finish_reason"] or "stop")
    usage = original["usage"]
    if usage is None:
        assert chunks[-1]["choices"], "no usage chunk without usage"
    else:
        assert chunks[-1]["choices"] == []
        assert_subset(
            again["usage"], {key: usage[key] for key in ("prompt_tokens", "completion_tokens", "total_tokens")}
        )


def test_reverse_without_usage_and_with_done_only_events() -> None:
    reverse = EventsToChatChunks(chunk_id="c", created=2, model="m")
    events = [
        {"type": "response.created", "sequence_number": 0, "response": {}},
        {
            "type": "response.output_item.added",
            "item": {"id": "fc_a", "type": "function_call", "call_id": "call_a", "name": "f"},
        },
        {"type": "response.function_call_arguments.done", "item_id": "fc_a", "arguments": '{"x":1}'},
        {"type": "response.output_text.done", "item_id": "msg_a", "text": "whole"},
        {"type": "response.output_text.done", "item_id": "msg_a", "text": "whole"},
        {
            "type": "response.incomplete",
            "response": {"status": "incomplete", "output": [], "usage": {"input_tokens": 1}},
        },
    ]
    chunks = [piece for event in events for piece in reverse.feed(event)]
    assert all("usage" not in piece for piece in chunks)
    view = chat_view(chunks)
    assert view["content"] == "whole"
    assert view["tool_calls"] == {0: {"id": "call_a", "name": "f", "arguments": '{"x":1}'}}
    assert view["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("terminal", "finish_reason"),
    [
        ({"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}, "length"),
        ({"status": "incomplete", "incomplete_details": {"reason": "content_filter"}}, "content_filter"),
        ({"status": "completed", "incomplete_details": None}, "stop"),
    ],
)
def test_reverse_finish_reasons(terminal: dict[str, Any], finish_reason: str) -> None:
    reverse = EventsToChatChunks(chunk_id="c", created=2, model="m")
    chunks = reverse.feed({"type": f"response.{terminal['status']}", "response": {"output": [], **terminal}})
    assert chunks[-1]["choices"][0]["finish_reason"] == finish_reason


def test_reverse_failure_ends_with_an_error_payload() -> None:
    case = next(c for c in STREAMS if "fail" in c)
    _, events = run(case)
    reverse = EventsToChatChunks(chunk_id="c", created=2, model="m")
    chunks = [piece for event in events for piece in reverse.feed(event)]
    assert chunks[-1] == {
        "error": {
            "message": "The upstream connection was lost.",
            "type": "upstream_error",
            "param": None,
            "code": "server_error",
        }
    }
    assert reverse.done
    other = EventsToChatChunks(chunk_id="c", created=2, model="m")
    error = other.feed({"type": "error", "code": "rate_limit_exceeded", "message": "Slow down.", "param": None})
    assert error[-1]["error"]["code"] == "rate_limit_exceeded"


# --- real llama.cpp recordings -------------------------------------------------------------------------------------


def pairs(pattern: str) -> list[tuple[Path, Path]]:
    """Recorded streams with the whole (non-streamed) answer to the same request beside them."""
    found = []
    for stream in sorted(LLAMACPP.glob(pattern)):
        whole = stream.with_name(stream.name.removesuffix("_stream.sse") + ".json")
        if whole.exists():
            found.append((stream, whole))
    return found


def without_ids(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: value for key, value in item.items() if key not in ("id", "call_id")} for item in output]


@pytest.mark.parametrize(("stream", "whole"), pairs("chat_completion*_stream.sse"), ids=lambda path: path.name)
def test_llamacpp_stream_gives_the_same_response_as_the_whole_answer(stream: Path, whole: Path) -> None:
    shell = shell_for({"model": "gemma", "input": "x", "stream": True})
    machine = ChatStreamToEvents(shell)
    events = machine.start()
    for piece in read_sse(stream):
        events += machine.feed(piece)
    events += machine.finish()
    for event in events:
        assert sdk_extras(EVENT.validate_python(event)) == [], event["type"]
    assert_canonical_order(events)
    expected = chat_to_response(read_json(whole), shell=shell)
    streamed = machine.response
    assert without_ids(streamed["output"]) == without_ids(expected["output"])
    for key in ("status", "incomplete_details", "usage"):
        assert streamed[key] == expected[key]


@pytest.mark.parametrize(("stream", "whole"), pairs("responses*_stream.sse"), ids=lambda path: path.name)
def test_llamacpp_responses_stream_to_chat_chunks(stream: Path, whole: Path) -> None:
    response = read_json(whole)
    reverse = EventsToChatChunks(chunk_id="chatcmpl-x", created=response["created_at"], model="m", include_usage=True)
    chunks = [piece for event in read_sse(stream) for piece in reverse.feed(event)]
    assert reverse.done
    for piece in chunks:
        ChatCompletionChunk.model_validate(piece)
    view = chat_view(chunks)
    messages = [item for item in response["output"] if item["type"] == "message"]
    calls = [item for item in response["output"] if item["type"] == "function_call"]
    assert view["content"] == "".join(part["text"] for item in messages for part in item["content"])
    # Stream and whole answer are two recordings: the same calls, under other ids.
    assert [(call["name"], call["arguments"]) for call in view["tool_calls"].values()] == [
        (item["name"], item["arguments"]) for item in calls
    ]
    call_ids = [e["item"]["call_id"] for e in read_sse(stream) if e.get("item", {}).get("type") == "function_call"]
    assert [call["id"] for call in view["tool_calls"].values()] == list(dict.fromkeys(call_ids))
    assert view["finish_reason"] == ("tool_calls" if calls else "stop")
    assert view["usage"] == usage_to_chat(response["usage"])
