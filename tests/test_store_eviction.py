"""The in-memory store's limit: past it the oldest stored responses and event logs go first, and nothing else
ever does (idempotency claims, budget holds, counters); an evicted response reads as an expired one."""

import logging
import os
import socket
import time
import tracemalloc
from typing import Any

import httpx
import orjson
import pytest

from config import Settings
from gateway.errors import Conflict
from gateway.idempotency import IdempotencyRecords
from gateway.responses.records import EVICTABLE
from gateway.store import MemoryStore
from gateway.store.eviction import SETTING
from tests.conftest import ADMIN_KEY, SPACE, catalogue
from tests.policies.test_budget import OUTPUT_ONLY, State, space_key
from tests.test_resume_and_keys import streamed_response

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
RECORD = b"r" * 1000


def store(limit: int) -> MemoryStore:
    return MemoryStore(limit, EVICTABLE)


async def fill(s: MemoryStore, n: int, value: bytes = RECORD) -> list[str]:
    keys = [f"resp:resp_{i:04d}" for i in range(n)]
    for key in keys:
        await s.set(key, value, 3600)
    return keys


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "gateway.store" and r.levelno == logging.WARNING]


# ------------------------------------------------------------------------------------------- the store itself


async def test_past_the_limit_the_oldest_responses_go_first():
    s = store(20_000)
    keys = await fill(s, 100)
    kept = [k for k in keys if await s.get(k) is not None]
    assert kept == keys[-len(kept) :], "the survivors are the newest, in order"
    assert 10 <= len(kept) < 20 and s.data.ledger is not None and s.data.ledger.total <= 20_000
    assert s.data.ledger.evicted == 100 - len(kept)


async def test_rewriting_a_response_makes_it_the_newest():
    s = store(20_000)
    keys = await fill(s, 10)
    await s.set(keys[0], RECORD, 3600)  # saved again, as a stream's record is at its end
    for i in range(10):
        await s.set(f"resp:new_{i}", RECORD, 3600)
    assert await s.get(keys[1]) is None and await s.get(keys[0]) is not None


async def test_an_event_log_counts_what_is_appended_and_stays_the_newest():
    s = store(30_000)
    await s.extend("resp:resp_live:events", [b"e" * 300], 3600)
    await fill(s, 10)
    for _ in range(40):  # the log of a stream in progress grows while older records arrive before it
        await s.extend("resp:resp_live:events", [b"e" * 300] * 2, 3600)
        await s.set(f"resp:other_{_}", RECORD, 3600)
    assert len(await s.read_log("resp:resp_live:events")) == 81
    assert s.data.ledger is not None and s.data.ledger.total <= 30_000 and s.data.ledger.evicted > 0
    assert await s.get("resp:resp_0000") is None


async def test_claims_holds_counters_and_other_keys_are_never_evicted():
    s = store(10_000)
    idem = IdempotencyRecords(s, 3600)
    assert await idem.claim("idem:t:s:alice:chat:k", "fp", "owner") is None  # in flight
    await s.incr("ratelimit:{t:s}:requests", 5, 60)
    await s.hset("budget:{t}:space:s:day:20261202", "held", b"3000")
    await s.set("spend:{t}:20261202", b"x" * 50_000, 3600)  # larger than the whole limit: not counted
    await s.append("audit:t:s", b"entry", 3600)
    await fill(s, 200)
    assert s.data.ledger is not None and s.data.ledger.evicted > 150
    with pytest.raises(Conflict, match="still being processed"):
        await idem.claim("idem:t:s:alice:chat:k", "fp", "another")
    assert await s.incr("ratelimit:{t:s}:requests", 0) == 5
    assert await s.hget("budget:{t}:space:s:day:20261202", "held") == b"3000"
    assert await s.get("spend:{t}:20261202") == b"x" * 50_000
    assert await s.read_log("audit:t:s") == [b"entry"]


async def test_the_first_eviction_logs_one_warning_naming_the_setting(caplog):
    caplog.set_level(logging.WARNING, logger="gateway.store")
    s = store(5_000)
    await fill(s, 3)
    assert warnings_of(caplog) == []
    await fill(s, 50)
    (warning,) = warnings_of(caplog)
    assert f"{SETTING}=5000" in warning.getMessage()


async def test_deleted_and_expired_responses_give_their_bytes_back():
    s = store(1_000_000)
    assert s.data.ledger is not None
    await s.set("resp:a", RECORD, 3600)
    await s.extend("resp:a:events", [b"e" * 100] * 3, 3600)
    await s.set("resp:b", RECORD, 0.05)
    assert s.data.ledger.total > 3 * len(RECORD)
    await s.delete("resp:a", "resp:a:events")
    deadline = time.monotonic() + 10
    while await s.get("resp:b") is not None:  # expires on its own
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert s.data.ledger.total == 0


async def test_one_value_larger_than_the_limit_is_kept_alone():
    s = store(5_000)
    await fill(s, 3)
    await s.set("resp:big", b"b" * 8_000, 3600)
    assert await s.get("resp:big") == b"b" * 8_000 and await s.get("resp:resp_0002") is None


async def test_no_limit_and_the_default():
    unbounded = MemoryStore(0, EVICTABLE)
    await fill(unbounded, 300)
    assert unbounded.data.ledger is None and await unbounded.get("resp:resp_0000") == RECORD
    assert Settings().memory_store_max_bytes == 256 * 1024 * 1024


def test_the_setting_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv(SETTING, "1048576")
    assert Settings().memory_store_max_bytes == 1048576
    monkeypatch.setenv(SETTING, "-1")
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        Settings()


async def test_the_accounted_bytes_follow_what_python_holds():
    """The ledger's overheads (eviction.py) against tracemalloc, for records shaped like real ones: orjson
    output (whose working buffer the store must not keep) and logs of SSE frames."""
    s = store(10**12)
    record = {"id": "resp_x", "output": [{"type": "message", "content": [{"text": "hello " * 200}]}]}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(500):
            await s.set(f"resp:resp_{i:032x}", orjson.dumps({**record, "id": i}), 3600)
            await s.extend(f"resp:resp_{i:032x}:events", [os.urandom(300) for _ in range(25)], 3600)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert s.data.ledger is not None
    assert 0.8 < s.data.ledger.total / held < 1.25, (s.data.ledger.total, held)


# -------------------------------------------------------------------------------------------- through HTTP


def create(base: str, **body: Any) -> httpx.Response:
    return httpx.post(base + "/v1/responses", headers=AUTH, json={"model": "fake-echo", "input": "hi", **body})


def test_an_evicted_response_answers_like_an_expired_one(start_gateway, upstream):
    base = start_gateway(catalogue(upstream[1]), memory_store_max_bytes=60_000)
    first = create(base, stream=False).json()["id"]
    streamed, _ = streamed_response(base)
    ledger = base.app.state.gateway.store.data.ledger
    ids = []
    while ledger.evicted < 4:  # the two above are the oldest: they go first
        ids.append(create(base).json()["id"])
        assert len(ids) < 500, "the limit was never reached"
    unknown = httpx.get(f"{base}/v1/responses/resp_{'0' * 32}", headers=AUTH)
    for gone in (first, streamed):
        r = httpx.get(f"{base}/v1/responses/{gone}", headers=AUTH)
        assert r.status_code == 404 == unknown.status_code
        assert r.json()["error"]["code"] == unknown.json()["error"]["code"]
        assert httpx.get(f"{base}/v1/responses/{gone}", headers=AUTH, params={"stream": "true"}).status_code == 404
        r = create(base, previous_response_id=gone)
        assert r.status_code == 400 and r.json()["error"]["code"] == "previous_response_not_found"
    latest = httpx.get(f"{base}/v1/responses/{ids[-1]}", headers=AUTH)
    assert latest.status_code == 200 and create(base, previous_response_id=ids[-1]).status_code == 200


def governed(upstream_url: str) -> dict[str, Any]:
    """The test catalogue with every policy that keeps state, and ``hang`` (an upstream that never answers)."""
    cat = catalogue(upstream_url)
    tenant = cat["tenants"][0]
    tenant["models"].append(
        {
            "id": "5b0e9b1c-6f0e-4d7e-9a57-0c7b2f4f7a01",
            "alias": "hang",
            "deployment": {"type": "openai", "model": "hang", "base_url": upstream_url + "/v1"},
            "pricing": OUTPUT_ONLY,
        }
    )
    tenant["spaces"][0]["models"].append("hang")
    tenant["policies"] = [
        {"use": "idempotency"},
        {"use": "allow_list"},
        {"use": "rate_limit", "space": {"requests_per_minute": 100000}},
        {"use": "budget", "limits": [{"scope": "space", "period": "day", "usd": "1000"}]},
        {"use": "cost"},
    ]
    return cat


def hanging_chat(base: str, key: str) -> socket.socket:
    """A chat request to ``hang`` with an Idempotency-Key, left open: its claim and budget hold stay in flight
    until the socket is closed."""
    host, port = base.removeprefix("http://").split(":")
    body = orjson.dumps({"model": "hang", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {ADMIN_KEY}\r\n"
        f"Idempotency-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock = socket.create_connection((host, int(port)))
    sock.sendall(head.encode() + body)
    return sock


def test_in_flight_claims_and_holds_and_counters_survive_eviction(start_gateway, upstream):
    base = start_gateway(governed(upstream[1]), memory_store_max_bytes=40_000)
    data = base.app.state.gateway.store.data
    sock = hanging_chat(base, "keep-me")
    try:
        deadline = time.monotonic() + 10
        while State(base)(space_key())[1] == 0:  # the hold is made before the upstream is called
            assert time.monotonic() < deadline
            time.sleep(0.01)
        claims = [k for k in data.values if k.startswith("idem:")]
        counters = {k: data.values[k] for k in data.values if k.startswith(("ratelimit:", "spend:"))}
        for _ in range(150):
            assert create(base).status_code == 200
        assert data.ledger.evicted > 50
        assert all(data.get(k) is not None for k in claims) and len(claims) == 1
        assert all(data.get(k) is not None for k in counters)
        again = httpx.post(
            base + "/v1/chat/completions",
            headers={**AUTH, "Idempotency-Key": "keep-me"},
            json={"model": "hang", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
        )
        assert again.status_code == 409 and again.json()["error"]["code"] == "idempotency_in_progress"
        assert State(base)(space_key())[1] == 3000, "the hold of the request in flight is still there"
        usage = httpx.get(f"{base}/v1/spaces/{SPACE}/usage", headers=AUTH).json()["data"]
        assert usage["requests"] >= 150
    finally:
        sock.close()
    assert State(base).settled(space_key(), 0) == (0, 0, [], []), "the hold is released once the caller left"
