"""Edges of resuming a stream and of the Idempotency-Key header: a resume position is a non-negative sequence
number (query ``starting_after`` or the ``Last-Event-ID`` an EventSource reconnects with), and a key sent twice
is refused rather than guessed; a response created without streaming replays as the events its stream would
have carried."""

import json

import httpx
import openai
import pytest

from tests.conftest import ADMIN_KEY, SPACE, catalogue
from tests.test_responses_api import native_catalogue

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def streamed_response(base: str) -> tuple[str, list[int]]:
    """A stored streamed response's id and the sequence numbers of its events."""
    with httpx.stream(
        "POST", base + "/v1/responses", headers=AUTH, json={"model": "up", "input": "hi", "stream": True}
    ) as r:
        text = r.read().decode()
    frames = [f for f in text.split("\n\n") if f.startswith("id: ")]
    numbers = [int(f.split("\n")[0][4:]) for f in frames]
    response_id = next(line for line in text.split("\n") if '"id":"resp_' in line).split('"id":"')[1].split('"')[0]
    return response_id, numbers


def replay(base: str, response_id: str, params: dict, headers: dict | None = None) -> httpx.Response:
    return httpx.get(
        f"{base}/v1/responses/{response_id}", headers={**AUTH, **(headers or {})}, params={"stream": "true", **params}
    )


@pytest.mark.parametrize("value", ["-5", "-1", "x", "1.5", ""])
def test_starting_after_must_be_a_non_negative_integer(gateway, value):
    response_id, _ = streamed_response(gateway)
    r = replay(gateway, response_id, {"starting_after": value})
    assert r.status_code == 400 and r.json()["error"]["param"] == "starting_after"


def test_last_event_id_resumes_a_replay_too(gateway):
    response_id, numbers = streamed_response(gateway)
    r = replay(gateway, response_id, {}, {"Last-Event-ID": "4"})
    got = [int(f.split("\n")[0][4:]) for f in r.text.split("\n\n") if f.startswith("id: ")]
    assert r.status_code == 200 and got == numbers[5:]
    r = replay(gateway, response_id, {"starting_after": "2"}, {"Last-Event-ID": "4"})  # the query wins
    assert [int(f.split("\n")[0][4:]) for f in r.text.split("\n\n") if f.startswith("id: ")] == numbers[3:]
    r = replay(gateway, response_id, {}, {"Last-Event-ID": "-3"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "Last-Event-ID"


def test_two_idempotency_keys_are_refused(gateway, upstream):
    calls = len(upstream[0].requests)
    keys = [("Authorization", f"Bearer {ADMIN_KEY}"), ("Idempotency-Key", "a"), ("Idempotency-Key", "b")]
    chat = {"model": "up", "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(gateway + "/v1/chat/completions", headers=keys, json=chat)
    assert r.status_code == 400 and "only once" in r.json()["error"]["message"]
    r = httpx.post(gateway + "/v1/responses", headers=keys, json={"model": "up", "input": "hi"})
    assert r.status_code == 400 and "only once" in r.json()["error"]["message"]
    r = httpx.post(f"{gateway}/v1/spaces/{SPACE}/responses", headers=keys, json={"model": "up", "input": "hi"})
    assert r.status_code == 400 and "only once" in r.json()["detail"]
    assert len(upstream[0].requests) == calls
    repeated_other = [("Authorization", f"Bearer {ADMIN_KEY}"), ("Accept", "a"), ("Accept", "b")]
    assert httpx.post(gateway + "/v1/chat/completions", headers=repeated_other, json=chat).status_code == 200


def event_frames(text: str) -> list[dict]:
    return [json.loads(f.split("data: ", 1)[1]) for f in text.split("\n\n") if f.startswith("id: ")]


@pytest.mark.parametrize("upstream_kind", ["chat", "responses"])
def test_a_response_created_without_streaming_replays_as_its_event_sequence(start_gateway, upstream, upstream_kind):
    """Built by the machine that builds live streams, from the stored response: the same events a stream of
    it carries (one delta per part), numbered from 0, ending in response.completed with the stored response."""
    url = upstream[1]
    base = start_gateway(catalogue(url) if upstream_kind == "chat" else native_catalogue(url))
    stored = httpx.post(base + "/v1/responses", headers=AUTH, json={"model": "up", "input": "hello"}).json()
    r = replay(base, stored["id"], {})
    events = event_frames(r.text)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    item = stored["output"][0]
    assert events[2]["item"]["id"] == item["id"] and events[7]["item"]["id"] == item["id"]
    assert events[4]["delta"] == events[5]["text"] == item["content"][0]["text"]
    assert events[-1]["response"] == stored and stored["usage"]["total_tokens"] > 0
    # the SDK reads it as a stream of its own types; a position keeps the events after it
    sdk = openai.OpenAI(base_url=base + "/v1", api_key=ADMIN_KEY, max_retries=0)
    assert [e.sequence_number for e in sdk.responses.retrieve(stored["id"], stream=True)] == list(range(9))
    assert event_frames(replay(base, stored["id"], {"starting_after": "5"}).text) == events[6:]
    assert event_frames(replay(base, stored["id"], {}, {"Last-Event-ID": "7"}).text) == events[8:]
    assert event_frames(replay(base, stored["id"], {"starting_after": "8"}).text) == []


def test_a_function_call_replays_with_its_arguments(gateway):
    tools = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
    body = {"model": "fake-tool", "input": "find it", "tools": tools}
    stored = httpx.post(gateway + "/v1/responses", headers=AUTH, json=body).json()
    events = event_frames(replay(gateway, stored["id"], {}).text)
    call = stored["output"][0]
    assert call["type"] == "function_call"
    assert [e["type"] for e in events][2:] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[3]["delta"] == events[4]["arguments"] == call["arguments"]
    assert events[2]["item"]["call_id"] == events[5]["item"]["call_id"] == call["call_id"]
    assert events[5]["item"] == call
