"""Idempotency at the edges of time: an answer is recorded before its last byte goes out (a retry sent the
moment it ended is a replay, never a 409), a streaming retry of a Responses stream still in flight follows
its event log (same replica, or another one on the same Redis), and refusals that depend on the moment (a
malformed body refused before any policy, a rate limit, a budget) do not consume the key."""

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import orjson
import pytest
import redis

from tests.policies.test_idempotency import AUTH, CHAT, NATIVE, RESPONSES, frames, idem_catalogue

ROUTES = {
    "responses": (RESPONSES, {"model": "up", "input": "x", "stream": True}),
    "native": (NATIVE, {"model": "up", "input": "x", "stream": True}),
    "chat-stream": (CHAT, {"model": "up", "messages": [{"role": "user", "content": "hi"}], "stream": True}),
    "chat": (CHAT, {"model": "up", "messages": [{"role": "user", "content": "hi"}]}),
}


@pytest.fixture(params=["memory", "redis"])
def gateway_of(request, start_gateway, upstream, redis_url, redis_prefix):
    """Start gateways with the idempotency chain on the parametrised store (several share one Redis prefix)."""
    prefix = redis_prefix + uuid.uuid4().hex + ":"

    def start(cat: dict[str, Any] | None = None) -> str:
        cat = cat or idem_catalogue(upstream[1])
        if request.param == "memory":
            return start_gateway(cat)
        return start_gateway(cat, redis_url=redis_url, redis_prefix=prefix)

    start.store = request.param  # type: ignore[attr-defined]
    return start


@pytest.mark.parametrize("route", list(ROUTES))
def test_a_retry_sent_the_moment_an_answer_ended_is_a_replay(gateway_of, route):
    """The record is complete before the answer's last message is written, so however fast the retry, it
    finds it: no 409 in any of the iterations (the ordering is guaranteed, not likely)."""
    base = gateway_of()
    path, body = ROUTES[route]
    with httpx2.Client(headers=AUTH, timeout=10) as client:
        for _ in range(30):
            key = uuid.uuid4().hex
            with client.stream("POST", base + path, json=body, headers={"Idempotency-Key": key}) as first:
                original = first.read()
            again = client.post(base + path, json=body, headers={"Idempotency-Key": key, "Last-Event-ID": "2"})
            assert (first.status_code, again.status_code) == (200, 200), again.text
            assert again.headers["idempotent-replayed"] == "true"
            if route in ("responses", "native"):
                assert again.content == b"".join(frames(original)[3:])
                response_id = orjson.loads(frames(original)[0].split(b"data: ", 1)[1])["response"]["id"]
                stored = client.get(f"{base}/v1/responses/{response_id}")  # the record is final too
                assert stored.json()["status"] == "completed"
            else:
                assert again.content == original  # Chat chunks carry no ids: the whole answer


def test_a_retry_in_flight_without_a_log_to_follow_is_still_409(gateway_of, upstream):
    """A Chat stream has no event log: a retry while it runs is 409, as is a whole answer's retry."""
    base = gateway_of(idem_catalogue(upstream[1], "gate-chat"))
    body = {"model": "up", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with held_stream(upstream[0], base, CHAT, body, "k-chat", "gate-chat") as (first, _):
        again = httpx2.post(base + CHAT, headers={**AUTH, "Idempotency-Key": "k-chat"}, json=body, timeout=10)
        assert again.status_code == 409 and again.headers["retry-after"] == "1"
    assert first.status_code == 200


class Reader:
    """An event stream read frame by frame, as far as the test needs."""

    def __init__(self, response: httpx2.Response) -> None:
        self.response = response
        self.chunks = response.iter_raw()
        self.data = b""

    def until(self, marker: bytes) -> bytes:
        """Read until ``marker`` arrived (the stream's read timeout bounds the wait)."""
        while marker not in self.data:
            self.data += next(self.chunks)
        return self.data

    def rest(self) -> bytes:
        for chunk in self.chunks:
            self.data += chunk
        return self.data


class held_stream:
    """A streamed POST whose upstream answer is held at a gate of the fake upstream after its first chunk
    (``gate-<name>``); opened on exit, and both the stream and any followers can then be read to the end."""

    def __init__(self, fake: Any, base: str, path: str, body: dict[str, Any], key: str, gate: str) -> None:
        self.fake, self.gate = fake, gate
        self.client = httpx2.Client(headers=AUTH, timeout=10)
        self.request = self.client.build_request("POST", base + path, json=body, headers={"Idempotency-Key": key})

    def __enter__(self) -> tuple[httpx2.Response, Reader]:
        self.fake.close_gate(self.gate)
        self.response = self.client.send(self.request, stream=True)
        reader = Reader(self.response)
        reader.until(b"one ")  # the first chunk went through: the upstream now waits at the gate
        return self.response, reader

    def __exit__(self, *exc: object) -> None:
        self.fake.open_gate(self.gate)
        self.response.close()
        self.client.close()


def follow(base: str, path: str, body: dict[str, Any], key: str, last: str | None) -> Iterator[Any]:
    headers = {**AUTH, "Idempotency-Key": key, **({"Last-Event-ID": last} if last is not None else {})}
    return httpx2.stream("POST", base + path, headers=headers, json=body, timeout=10)


@pytest.mark.parametrize("last", [None, "1"])
@pytest.mark.parametrize("path", [RESPONSES, NATIVE])
# two replicas share a stream only through Redis
@pytest.mark.parametrize(
    ("gateway_of", "replicas"), [("memory", 1), ("redis", 1), ("redis", 2)], indirect=["gateway_of"]
)
def test_a_streaming_retry_in_flight_follows_the_live_stream(gateway_of, upstream, path, replicas, last):
    gate = f"gate-{uuid.uuid4().hex[:8]}"
    cat = idem_catalogue(upstream[1], gate)
    bases = [gateway_of(cat) for _ in range(replicas)]
    body = {"model": "up", "input": "x", "stream": True}
    key = uuid.uuid4().hex
    with held_stream(upstream[0], bases[0], path, body, key, gate) as (first, reader):
        with follow(bases[-1], path, body, key, last) as again:
            assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
            follower = Reader(again)
            follower.until(b"one ")  # what the first stream had sent so far, while it is still held
            upstream[0].open_gate(gate)
            original, followed = reader.rest(), follower.rest()
    all_frames = frames(original)
    assert b"response.completed" in all_frames[-1] and first.status_code == 200
    assert followed == b"".join(all_frames[0 if last is None else 2 :])
    assert upstream[0].counts[gate] == 1
    # once it ended, the same retry is a replay of the recorded stream
    with follow(bases[-1], path, body, key, last) as replayed:
        assert replayed.read() == followed


BAD_AND_GOOD = [
    (RESPONSES, "temperature", {"model": "up", "input": "x", "temperature": 5}, {"model": "up", "input": "x"}),
    (NATIVE, "temperature", {"model": "up", "input": "x", "temperature": 5}, {"model": "up", "input": "x"}),
    (NATIVE, "input", {"model": "up", "input": [{"type": "message"}], "stream": True}, {"model": "up", "input": "x"}),
    (
        CHAT,
        "messages",
        {"model": "up", "messages": []},
        {"model": "up", "messages": [{"role": "user", "content": "x"}]},
    ),
]


@pytest.mark.parametrize(("path", "param", "bad", "good"), BAD_AND_GOOD)
def test_a_body_refused_before_any_policy_does_not_consume_the_key(gateway_of, path, param, bad, good):
    """Stripe's rule and the IETF draft's: a request that failed validation was not processed, so the
    corrected request with the same key runs (it is another body: with a consumed key it would be 422)."""
    base = gateway_of()
    key = uuid.uuid4().hex
    refused = httpx2.post(base + path, headers={**AUTH, "Idempotency-Key": key}, json=bad, timeout=10)
    assert refused.status_code in (400, 422) and param in refused.text
    again = httpx2.post(base + path, headers={**AUTH, "Idempotency-Key": key}, json=bad, timeout=10)
    assert again.status_code == refused.status_code and "idempotent-replayed" not in again.headers
    ran = httpx2.post(base + path, headers={**AUTH, "Idempotency-Key": key}, json=good, timeout=10)
    assert ran.status_code == 200 and "idempotent-replayed" not in ran.headers


@pytest.mark.parametrize(
    "limit",
    [
        {"use": "rate_limit", "space": {"requests_per_minute": 1}},
        {"use": "budget", "limits": [{"scope": "space", "period": "day", "usd": "0.000001"}]},
    ],
    ids=["rate_limit", "budget"],
)
def test_a_rate_limit_or_budget_refusal_is_not_recorded(start_gateway, upstream, redis_url, redis_prefix, limit):
    """A 429 of the gateway's own limits holds for the moment only. Once the limit is gone (here: a second
    gateway on the same store, without it), the same key runs instead of replaying the 429."""
    prefix = redis_prefix + uuid.uuid4().hex + ":"
    loose = idem_catalogue(upstream[1])
    strict = idem_catalogue(upstream[1])
    strict["tenants"][0]["models"][0]["pricing"] = {"input_per_mtok": "1000", "output_per_mtok": "1000"}
    strict["tenants"][0]["policies"].append(limit)
    limited = start_gateway(strict, redis_url=redis_url, redis_prefix=prefix)
    free = start_gateway(loose, redis_url=redis_url, redis_prefix=prefix)
    body = {"model": "up", "messages": [{"role": "user", "content": "hi"}]}
    if limit["use"] == "rate_limit":  # the one request of the minute
        assert httpx2.post(limited + CHAT, headers=AUTH, json=body, timeout=10).status_code == 200
    key = uuid.uuid4().hex
    for _ in range(2):
        refused = httpx2.post(limited + CHAT, headers={**AUTH, "Idempotency-Key": key}, json=body, timeout=10)
        assert refused.status_code == 429 and "idempotent-replayed" not in refused.headers
    ran = httpx2.post(free + CHAT, headers={**AUTH, "Idempotency-Key": key}, json=body, timeout=10)
    assert ran.status_code == 200 and "idempotent-replayed" not in ran.headers
    replayed = httpx2.post(limited + CHAT, headers={**AUTH, "Idempotency-Key": key}, json=body, timeout=10)
    assert replayed.status_code == 200 and replayed.headers["idempotent-replayed"] == "true"


def test_the_after_phase_run_before_the_end_sees_the_final_usage_and_outcome(
    start_gateway, upstream, redis_url, redis_prefix
):
    """With a key, every policy's ``after`` runs before the answer's last message goes out, and still sees what
    happened: the outcome and the upstream's final usage (3 output tokens), whole answers and streams alike.
    Without a key it runs after the last byte, as before."""
    prefix = redis_prefix + uuid.uuid4().hex + ":"
    cat = idem_catalogue(upstream[1])
    cat["tenants"][0]["policies"] = [{"use": "idempotency"}, {"use": "tests.plugins.recorder:Recorder", "log": "log"}]
    base = start_gateway(cat, redis_url=redis_url, redis_prefix=prefix)
    client = redis.Redis.from_url(redis_url)
    try:
        for route, (path, body) in ROUTES.items():
            client.delete(prefix + "log")
            with httpx2.stream("POST", base + path, headers={**AUTH, "Idempotency-Key": route}, json=body) as r:
                assert r.status_code == 200
                r.read()
            # written by ``after`` before the last message went out: there by the time the answer is read
            assert client.lrange(prefix + "log", 0, -1) == [b"before", b"after:ok:3:idempotency,recorder"], route
    finally:
        client.close()


def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.01)


def test_a_follower_whose_client_left_stops_following(gateway_of, upstream):
    """An attached retry, or a GET replay, whose client went away stops reading the live stream at once,
    while the stream itself still runs."""
    gate = f"gate-{uuid.uuid4().hex[:8]}"
    base = gateway_of(idem_catalogue(upstream[1], gate))
    body, key = {"model": "up", "input": "x", "stream": True}, uuid.uuid4().hex
    with held_stream(upstream[0], base, RESPONSES, body, key, gate) as (_, reader):
        response_id = orjson.loads(frames(reader.data)[0].split(b"data: ", 1)[1])["response"]["id"]
        live = base.app.state.gateway.responses.live.get(response_id)
        with follow(base, RESPONSES, body, key, None) as again:
            follower = Reader(again)  # (held: a reader dropped would close the connection itself)
            follower.until(b"one ")
            assert live.followers == 1
        wait_until(lambda: live.followers == 0)
        url = f"{base}/v1/responses/{response_id}"
        with httpx2.stream("GET", url, params={"stream": "true"}, headers=AUTH, timeout=10) as replay:
            follower = Reader(replay)
            follower.until(b"one ")
            assert live.followers == 1
        wait_until(lambda: live.followers == 0)
        assert not live.done
