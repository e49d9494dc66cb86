"""Edges of resuming a stream and of the Idempotency-Key header: a resume position is a non-negative sequence
number (query ``starting_after`` or the ``Last-Event-ID`` an EventSource reconnects with), and a key sent twice
is refused rather than guessed."""

import httpx
import pytest

from tests.conftest import ADMIN_KEY, SPACE

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
