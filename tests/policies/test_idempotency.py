"""The idempotency policy: one upstream call per key (also across processes on one Redis), replays byte for
byte (errors and streams included), 409 in flight, 422 for another body, Last-Event-ID resume, store outages."""

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import pytest
import redis
from starlette.types import Message, Send

from gateway import Policy, PolicyParams, RequestContext
from tests.conftest import ADMIN_KEY, SPACE, catalogue
from tests.servers import gateway_process, throwaway_redis

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
NATIVE = f"/v1/spaces/{SPACE}/responses"
MESSAGES = [{"role": "user", "content": "hi"}]


class Pause(Policy):
    """Holds every answer for a moment before it starts (the idempotency claim is held meanwhile), so that
    concurrent retries find the key in flight."""

    name = "pause"

    class Params(PolicyParams):
        seconds: float

    def wrap_send(self, ctx: RequestContext, send: Send) -> Send:
        async def paused(message: Message) -> None:
            if message["type"] == "http.response.start":
                await asyncio.sleep(self.params.seconds)
            await send(message)

        return paused


def idem_catalogue(upstream_url: str, upstream_model: str = "ok", pause: float = 0, **params: Any) -> dict[str, Any]:
    """The test catalogue with the chain idempotency → (pause) → allow_list and no upstream retries."""
    cat = catalogue(upstream_url, upstream_model)
    cat["tenants"][0]["models"][0]["routing"] = {"retries": 0}
    chain = [{"use": "idempotency", **params}, {"use": "allow_list"}]
    if pause:
        chain.insert(1, {"use": f"{__name__}:Pause", "seconds": pause})
    cat["tenants"][0]["policies"] = chain
    return cat


def unique_model() -> str:
    return f"ok-{uuid.uuid4().hex[:12]}"  # the fake upstream answers normally; its count is this test's own


@pytest.fixture
def on_redis(start_gateway, upstream, redis_url, redis_prefix) -> Callable[..., tuple[str, str]]:
    """Start a gateway with the idempotency chain on Redis (its own key prefix); returns (url, prefix)."""

    def start(upstream_model: str = "ok", **params: Any) -> tuple[str, str]:
        prefix = redis_prefix + uuid.uuid4().hex + ":"
        cat = idem_catalogue(upstream[1], upstream_model, **params)
        return start_gateway(cat, redis_url=redis_url, redis_prefix=prefix), prefix

    return start


def post(base: str, path: str, body: dict[str, Any], key: str | None = None, **headers: str) -> httpx2.Response:
    h = {**AUTH, **({"Idempotency-Key": key} if key else {}), **headers}
    return httpx2.post(base + path, headers=h, json=body, timeout=10)


def raw_stream(base: str, path: str, body: dict[str, Any], key: str, **headers: str) -> tuple[httpx2.Response, bytes]:
    with httpx2.stream("POST", base + path, headers={**AUTH, "Idempotency-Key": key, **headers}, json=body) as r:
        return r, r.read()


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "up", "messages": MESSAGES, **extra}


async def same_key_requests(bases: list[str], key: str, n: int = 50) -> list[openai.APIResponse[Any]]:
    """``n`` concurrent identical requests with one key, spread over ``bases``; the SDK retries 409s itself."""
    clients = [openai.AsyncOpenAI(base_url=b + "/v1", api_key=ADMIN_KEY, max_retries=8) for b in bases]
    try:
        calls = [
            clients[i % len(clients)].chat.completions.with_raw_response.create(
                model="up", messages=MESSAGES, extra_headers={"Idempotency-Key": key}
            )
            for i in range(n)
        ]
        return list(await asyncio.gather(*calls))
    finally:
        for c in clients:
            await c.close()


def check_exactly_one_call(results: list[openai.APIResponse[Any]], fake: Any, model: str) -> None:
    assert fake.counts[model] == 1
    originals = [r for r in results if r.headers.get("idempotent-replayed") != "true"]
    assert len(originals) == 1 and len(results) == 50
    assert {r.http_response.content for r in results} == {originals[0].http_response.content}
    assert any(r.retries_taken for r in results)  # some found it in flight (409) and the SDK retried


async def test_50_concurrent_requests_with_one_key_make_one_upstream_call(on_redis, upstream):
    model = unique_model()
    base, _ = on_redis(model, pause=0.5)
    check_exactly_one_call(await same_key_requests([base], "k-concurrent"), upstream[0], model)


async def test_one_upstream_call_across_two_gateway_processes(on_redis, upstream, redis_url, tmp_path):
    model = unique_model()
    base, prefix = on_redis(model, pause=0.5)
    with gateway_process(idem_catalogue(upstream[1], model, pause=0.5), tmp_path, redis_url, prefix) as other:
        results = await same_key_requests([base, other], "k-two-processes")
    check_exactly_one_call(results, upstream[0], model)


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_whole_answer_is_replayed_identically(store, start_gateway, on_redis, upstream):
    model = unique_model()
    base = start_gateway(idem_catalogue(upstream[1], model)) if store == "memory" else on_redis(model)[0]
    first = post(base, CHAT, chat_body(), key="k-whole")
    again = post(base, CHAT, chat_body(), key='"k-whole"')  # a Structured-Field string is the same key
    assert first.status_code == again.status_code == 200
    assert again.content == first.content and again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert upstream[0].counts[model] == 1
    created = post(base, RESPONSES, {"model": "up", "input": "x"}, key="k-resp").json()
    assert post(base, RESPONSES, {"model": "up", "input": "x"}, key="k-resp").json()["id"] == created["id"]


@pytest.mark.parametrize("path", [CHAT, RESPONSES])
def test_a_stream_is_replayed_byte_for_byte(on_redis, upstream, path):
    model = unique_model()
    base, _ = on_redis(model)
    body = chat_body(stream=True) if path == CHAT else {"model": "up", "input": "x", "stream": True}
    first, original = raw_stream(base, path, body, "k-stream")
    again, replayed = raw_stream(base, path, body, "k-stream")
    assert first.status_code == again.status_code == 200 and original.startswith(
        b"data: " if path == CHAT else b"id: 0"
    )
    assert replayed == original and again.headers["idempotent-replayed"] == "true"
    assert again.headers["content-type"].startswith("text/event-stream")
    assert upstream[0].counts[model] == 1


def test_errors_are_replayed_but_5xx_runs_again(on_redis, upstream):
    fake = upstream[0]
    base, _ = on_redis("status-429")
    before = fake.counts.get("status-429", 0)
    first = post(base, CHAT, chat_body(), key="k-429")
    again = post(base, CHAT, chat_body(), key="k-429")
    assert first.status_code == again.status_code == 429 and again.content == first.content
    assert again.headers["retry-after"] == "7" and again.headers["idempotent-replayed"] == "true"
    assert fake.counts["status-429"] == before + 1
    # a policy's refusal is an answer too: the model is not allowed in the space
    denied = post(base, CHAT, chat_body(model="extra"), key="k-403")
    again = post(base, CHAT, chat_body(model="extra"), key="k-403")
    assert denied.status_code == again.status_code == 403 and again.headers["idempotent-replayed"] == "true"
    # a 5xx is not stored: the retry calls the upstream again
    base, _ = on_redis("status-503")
    before = fake.counts.get("status-503", 0)
    for _ in range(2):
        r = post(base, CHAT, chat_body(), key="k-503")
        assert r.status_code == 503 and "idempotent-replayed" not in r.headers
    assert fake.counts["status-503"] == before + 2


def test_the_same_key_with_another_body_is_422(on_redis):
    base, _ = on_redis()
    assert post(base, CHAT, chat_body(), key="k-body").status_code == 200
    r = post(base, CHAT, chat_body(messages=[{"role": "user", "content": "other"}]), key="k-body")
    assert r.status_code == 422 and r.json()["error"]["code"] == "idempotency_key_reused"
    # the scope is per route: the same key on another route is another record
    assert post(base, RESPONSES, {"model": "up", "input": "x"}, key="k-body").status_code == 200


def test_a_retry_in_flight_is_409_and_a_disconnect_releases_the_key(on_redis, upstream):
    fake = upstream[0]
    base, _ = on_redis("hang")
    started = fake.counts.get("hang", 0)

    def hanging() -> None:
        with contextlib.suppress(httpx2.TimeoutException):
            httpx2.post(base + CHAT, headers={**AUTH, "Idempotency-Key": "k-hang"}, json=chat_body(), timeout=1.5)

    first = threading.Thread(target=hanging)
    first.start()
    deadline = time.monotonic() + 5
    while fake.counts.get("hang", 0) == started and time.monotonic() < deadline:
        time.sleep(0.02)
    r = post(base, CHAT, chat_body(), key="k-hang")
    assert r.status_code == 409 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "idempotency_in_progress"
    first.join()
    # the first client gave up: its claim is released, so a retry runs (and reaches the upstream) again
    deadline = time.monotonic() + 5
    while fake.counts["hang"] == started + 1 and time.monotonic() < deadline:
        with contextlib.suppress(httpx2.TimeoutException):
            assert post_with_timeout(base, "k-hang", 0.3).status_code == 409
    assert fake.counts["hang"] == started + 2


def post_with_timeout(base: str, key: str, timeout: float) -> httpx2.Response:
    return httpx2.post(base + CHAT, headers={**AUTH, "Idempotency-Key": key}, json=chat_body(), timeout=timeout)


def frames(body: bytes) -> list[bytes]:
    return [f + b"\n\n" for f in body.split(b"\n\n") if f]


def test_last_event_id_resumes_a_finished_stream_on_the_native_route(on_redis, upstream):
    model = unique_model()
    base, _ = on_redis(model)
    # the body's idempotency_key counts as the header: the retry sends it as a header, same request
    body = {"model": "up", "input": "resume me", "stream": True}
    with httpx2.stream("POST", base + NATIVE, headers=AUTH, json={**body, "idempotency_key": "k-native"}) as r:
        original = r.read()
    all_frames = frames(original)
    assert len(all_frames) > 4 and all_frames[0].startswith(b"id: 0\n")
    again, tail = raw_stream(base, NATIVE, body, "k-native", **{"Last-Event-ID": "2"})
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert tail == b"".join(all_frames[3:]) and tail.startswith(b"id: 3\n")
    assert raw_stream(base, NATIVE, body, "k-native")[1] == original
    assert upstream[0].counts[model] == 1


def test_a_background_response_is_replayed_while_it_runs(on_redis):
    base, _ = on_redis()
    body = {"model": "fake-slow", "input": "x", "background": True}
    queued = post(base, RESPONSES, body, key="k-bg")
    again = post(base, RESPONSES, body, key="k-bg")
    assert queued.json()["status"] == "queued" and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == queued.json()["id"]
    cancelled = httpx2.post(base + RESPONSES + "/" + queued.json()["id"] + "/cancel", headers=AUTH)
    assert cancelled.json()["status"] == "cancelled"
    assert post(base, RESPONSES, body, key="k-bg").content == again.content  # the first answer, still


def test_a_request_without_a_key_is_untouched(on_redis, upstream, redis_url):
    model = unique_model()
    base, prefix = on_redis(model)
    responses = [post(base, CHAT, chat_body()) for _ in range(2)]
    assert all(r.status_code == 200 and "idempotent-replayed" not in r.headers for r in responses)
    assert upstream[0].counts[model] == 2
    client = redis.Redis.from_url(redis_url)
    assert list(client.scan_iter(match=prefix + "idem:*")) == []  # nothing stored, nothing claimed
    client.close()


@pytest.mark.parametrize(("mode", "status"), [("closed", 503), ("open", 200)])
def test_an_unreachable_store(start_gateway, upstream, mode, status):
    cat = idem_catalogue(upstream[1], on_store_error=mode)
    # a canned answer right after the idempotency policy shows whether the request got past it
    cat["tenants"][0]["policies"][1] = {"use": "tests.plugins.recorder:Canned"}
    with throwaway_redis() as url:
        base = start_gateway(cat, redis_url=url)
    r = post(base, CHAT, chat_body(), key="k-outage", **{"x-canned": "1"})
    assert r.status_code == status
    if mode == "closed":
        assert r.json()["error"]["code"] == "store_unavailable"
    else:
        assert r.json() == {"canned": True}
