"""The budget policy: atomic reservations against every budget, settled or released on every exit path."""

import asyncio
import signal
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx2
import pytest
import redis

from config.catalog import PolicySpec
from gateway.policy import PolicyConfigError, load_policy
from tests.conftest import ADMIN_KEY, SPACE, TENANT, catalogue
from tests.servers import gateway_process, spawn_gateway, throwaway_redis

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
# output only, 1000 USD/Mtok: the fake upstream's 3 output tokens cost 3000 micro-dollars, and so does the
# worst case of a request with max_tokens=3 (its prompt is free), so every admitted request settles exactly
# what it reserved
OUTPUT_ONLY = {"input_per_mtok": "0", "output_per_mtok": "1000"}
EXTRA_MODELS = {"stall": "stall", "hang": "hang", "broken": "status-500"}


def budget_catalogue(upstream_url: str, limits: list[dict[str, Any]], pricing: dict[str, str] = OUTPUT_ONLY, **params):
    """The test catalogue with priced models ``up`` (ok), ``stall``, ``hang`` and ``broken`` (status-500) on
    the fake upstream, and the chain allow_list → budget → cost."""
    cat = catalogue(upstream_url)
    tenant = cat["tenants"][0]
    tenant["models"][0]["pricing"] = pricing
    for alias, behaviour in EXTRA_MODELS.items():
        deployment = {"type": "openai", "model": behaviour, "base_url": upstream_url + "/v1"}
        tenant["models"].append({"id": str(uuid.uuid4()), "alias": alias, "deployment": deployment, "pricing": pricing})
        tenant["spaces"][0]["models"].append(alias)
    tenant["policies"] = [{"use": "allow_list"}, {"use": "budget", "limits": limits, **params}, {"use": "cost"}]
    return cat


def space_day(usd: str) -> list[dict[str, str]]:
    return [{"scope": "space", "period": "day", "usd": usd}]


def space_key() -> str:
    return f"budget:{{{TENANT}}}:space:{SPACE}:day:{datetime.now(UTC):%Y%m%d}"


def body(model: str = "up", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, **extra}


class State:
    """A budget's hash and reservations, read straight from the store (in memory or Redis)."""

    def __init__(self, base: Any = None, redis_url: str | None = None, prefix: str = "") -> None:
        self.base, self.prefix = base, prefix
        self.client = redis.Redis.from_url(redis_url) if redis_url else None

    def __call__(self, key: str) -> tuple[int, int, list[str], list[str]]:
        """(spent, held, reservation fields, sorted-set members)."""
        if self.client is not None:
            h = {k.decode(): int(v) for k, v in self.client.hgetall(self.prefix + key).items()}
            z = [m.decode() for m in self.client.zrange(self.prefix + key + ":held", 0, -1)]
        else:
            data = self.base.app.state.gateway.store.data
            h, z = dict(data.get(key) or {}), list(data.get(key + ":held") or {})
        return h.get("spent", 0), h.get("held", 0), [f for f in h if f.startswith("r:")], z

    def settled(self, key: str, spent: int, timeout: float = 10.0) -> tuple[int, int, list[str], list[str]]:
        """The state once ``spent`` is settled and nothing is held (settling runs just after the answer)."""
        deadline = time.monotonic() + timeout
        while (state := self(key)) != (spent, 0, [], []) and time.monotonic() < deadline:
            time.sleep(0.02)
        return state


async def _burst(bases: list[str], n: int) -> list[httpx2.Response]:
    async with httpx2.AsyncClient(timeout=30, limits=httpx2.Limits(max_connections=n)) as client:
        calls = [
            client.post(bases[i % len(bases)] + "/v1/chat/completions", headers=AUTH, json=body()) for i in range(n)
        ]
        return list(await asyncio.gather(*calls))


def burst(bases: list[str], n: int = 50) -> list[httpx2.Response]:
    return asyncio.run(_burst(bases, n))


def check_burst(answers: list[httpx2.Response], admitted: int) -> None:
    assert sum(r.status_code == 200 for r in answers) == admitted
    refused = [r for r in answers if r.status_code != 200]
    assert all(r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota" for r in refused)
    assert all(r.headers["x-should-retry"] == "false" for r in refused)


def test_fifty_concurrent_requests_across_two_processes_never_overspend(
    start_gateway, upstream, redis_url, redis_prefix, tmp_path
):
    prefix = redis_prefix + uuid.uuid4().hex + ":"
    cat = budget_catalogue(upstream[1], space_day("0.0329"))  # room for 10 requests of 3000 micro-dollars
    here = start_gateway(cat, redis_url=redis_url, redis_prefix=prefix)
    with gateway_process(cat, tmp_path, redis_url, prefix) as other:
        check_burst(burst([here, other]), admitted=10)
    state = State(redis_url=redis_url, prefix=prefix)
    assert state.settled(space_key(), 30000) == (30000, 0, [], [])
    deadline = time.monotonic() + 10
    while (usage := httpx2.get(f"{here}/v1/spaces/{SPACE}/usage", headers=AUTH).json()["data"])["requests"] < 10:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert (usage["cost_usd"], usage["requests"]) == ("0.030000", 10)
    state.client.close()


def test_in_memory_the_tightest_budget_refuses_and_is_named(start_gateway, upstream):
    limits = [
        {"scope": "tenant", "period": "total", "usd": "1000"},
        {"scope": "key", "period": "month", "usd": "0.015"},
        {"scope": "space", "period": "day", "usd": "5.00"},
    ]
    base = start_gateway(budget_catalogue(upstream[1], limits))
    answers = burst([base])
    check_burst(answers, admitted=5)
    message = next(r for r in answers if r.status_code == 429).json()["error"]["message"]
    assert "monthly budget of API key 'admin' (0.015000 USD)" in message and "up to 0.003000 USD" in message
    assert State(base).settled(space_key(), 15000) == (15000, 0, [], [])
    native = httpx2.post(f"{base}/v1/spaces/{SPACE}/responses", headers=AUTH, json={"input": "x", "model": "up"})
    assert native.status_code == 429 and "monthly budget of API key 'admin'" in native.json()["detail"]


def test_the_worst_case_counts_prompt_and_context_window_and_settles_to_the_real_cost(start_gateway, upstream):
    pricing = {"input_per_mtok": "1000", "output_per_mtok": "1000"}  # 1000 micro-dollars a token
    base = start_gateway(budget_catalogue(upstream[1], space_day("1.00"), pricing))
    chat = base + "/v1/chat/completions"
    # no max_tokens: the model's context window (4096 tokens, 4.096 USD) is the worst case
    refused = httpx2.post(chat, headers=AUTH, json={"model": "up", "messages": [{"role": "user", "content": "x"}]})
    assert refused.status_code == 429 and "up to 4.1" in refused.json()["error"]["message"]
    # a prompt of ~2 MB is ~500k tokens at 4 bytes a token: more than the budget
    huge = httpx2.post(chat, headers=AUTH, json=body(messages=[{"role": "user", "content": "x" * 2_000_000}]))
    assert huge.status_code == 429
    ok = httpx2.post(chat, headers=AUTH, json=body())
    assert ok.status_code == 200
    # reserved: (body bytes / 4) input + 3 output tokens; settled: the real 5 input + 3 output tokens
    assert State(base).settled(space_key(), 8000) == (8000, 0, [], [])


def test_released_after_upstream_errors_and_client_disconnects(start_gateway, upstream):
    base = start_gateway(budget_catalogue(upstream[1], space_day("1.00")))
    state = State(base)
    assert httpx2.post(base + "/v1/chat/completions", headers=AUTH, json=body("broken")).status_code == 502
    assert state.settled(space_key(), 0) == (0, 0, [], [])

    gone = upstream[0].disconnects
    with httpx2.stream("POST", base + "/v1/chat/completions", headers=AUTH, json=body("stall", stream=True)) as r:
        chunks = r.iter_bytes()  # kept: a dropped iterator closes the connection at once
        next(chunks)
        assert state(space_key())[1] == 3000  # held while the stream runs
    assert state.settled(space_key(), 0) == (0, 0, [], [])

    with pytest.raises(httpx2.TimeoutException):
        httpx2.post(base + "/v1/chat/completions", headers=AUTH, json=body("hang"), timeout=0.5)
    assert state.settled(space_key(), 0) == (0, 0, [], [])
    deadline = time.monotonic() + 5
    while upstream[0].disconnects < gone + 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert upstream[0].disconnects >= gone + 2  # both upstream calls were abandoned, not left running

    assert httpx2.post(base + "/v1/chat/completions", headers=AUTH, json=body()).status_code == 200
    assert state.settled(space_key(), 3000) == (3000, 0, [], [])


def test_a_dead_process_reservation_expires(start_gateway, upstream, redis_url, redis_prefix, tmp_path):
    prefix = redis_prefix + uuid.uuid4().hex + ":"
    cat = budget_catalogue(upstream[1], space_day("0.003"), reservation_ttl_seconds=3)  # one request at a time
    proc, doomed = spawn_gateway(cat, tmp_path, redis_url, prefix)
    survivor = start_gateway(cat, redis_url=redis_url, redis_prefix=prefix)
    state = State(redis_url=redis_url, prefix=prefix)
    hanging = threading.Thread(target=_post_quietly, args=(doomed, body("hang")), daemon=True)
    try:
        hanging.start()
        deadline = time.monotonic() + 10
        while not state(space_key())[3] and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)  # no after() runs: only the expiry can free the reservation
        proc.wait(10)
    hanging.join(10)
    chat: Callable[[], httpx2.Response] = lambda: httpx2.post(  # noqa: E731
        survivor + "/v1/chat/completions", headers=AUTH, json=body()
    )
    assert chat().status_code == 429  # the dead process still holds the whole budget
    deadline = time.monotonic() + 15
    while (answer := chat()).status_code == 429 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert answer.status_code == 200
    assert state.settled(space_key(), 3000) == (3000, 0, [], [])
    state.client.close()


def _post_quietly(base: str, payload: dict[str, Any]) -> None:
    try:
        httpx2.post(base + "/v1/chat/completions", headers=AUTH, json=payload, timeout=30)
    except httpx2.TransportError:
        pass


def test_store_unreachable_closed_fails_open_passes(start_gateway, upstream):
    with throwaway_redis() as url:
        gateways = {}
        for mode in ("closed", "open"):
            cat = catalogue(upstream[1])
            cat["tenants"][0]["policies"] = [{"use": "budget", "limits": space_day("5"), "on_store_error": mode}]
            gateways[mode] = start_gateway(cat, redis_url=url, redis_prefix=f"gw{mode}:")
    # no request has read a circuit breaker's state: failing open, it acts on the process's own state
    passed = httpx2.post(gateways["open"] + "/v1/chat/completions", headers=AUTH, json=body())
    assert passed.status_code == 200
    failed = httpx2.post(gateways["closed"] + "/v1/chat/completions", headers=AUTH, json=body())
    assert failed.status_code == 503 and failed.json()["error"]["code"] == "store_unavailable"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "limits: Field required"),
        ({"limits": []}, "limits: List should have at least 1 item"),
        ({"limits": [{"scope": "space", "period": "week", "usd": "1"}]}, "period"),
        ({"limits": [{"scope": "space", "period": "day", "usd": "-1"}]}, "usd"),
        ({"limits": [{"scope": "space", "period": "day", "usd": "0.0000001"}]}, "usd"),
        ({"limits": [{"scope": "space", "period": "day", "usd": "ten"}]}, "usd"),
        ({"limits": space_day("1") + space_day("2")}, "two limits for the same scope and period"),
        ({"limits": space_day("1"), "on_store_error": "maybe"}, "on_store_error"),
    ],
)
def test_params_are_checked_at_start(params, message):
    with pytest.raises(PolicyConfigError, match=message):
        load_policy(PolicySpec(use="budget", **params))
