"""Fault tests: upstreams that refuse, fail, hang, stall, cut or garble. Each ends in a defined outcome, no
request hangs, no connection leaks, and the gateway never answers 500 for an upstream's fault."""

import time
import uuid
from collections import Counter

import httpx2
import openai
import pytest

from tests.conftest import ADMIN_KEY, catalogue
from tests.servers import throwaway_redis, wait_for, wait_pool_idle

MESSAGES = [{"role": "user", "content": "hello"}]
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def with_deployments(url: str, *deployments: dict, **routing: object) -> dict:
    cat = catalogue(url)
    model = cat["tenants"][0]["models"][0]
    model.pop("deployment", None)
    model["deployments"] = [{"type": "openai", "base_url": url + "/v1", **d} for d in deployments]
    model["routing"] = {"backoff": 0.01, **routing}
    return cat


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=15)


@pytest.mark.parametrize("stream", [False, True])
def test_fallback_to_the_next_deployment(start_gateway, upstream, stream):
    fake, url = upstream
    base = start_gateway(with_deployments(url, {"model": "status-500"}, {"model": "ok"}))
    answer = client(base).chat.completions.create(model="up", messages=MESSAGES, stream=stream)
    text = "".join(c.choices[0].delta.content or "" for c in answer) if stream else answer.choices[0].message.content
    assert text in ("hi from upstream", "one two three")
    assert wait_pool_idle(base) == 0


def test_retry_on_the_same_deployment_honours_retry_after(start_gateway, upstream):
    fake, url = upstream
    model = f"flaky-2-{uuid.uuid4().hex[:6]}"  # the upstream fails twice, then answers
    base = start_gateway(with_deployments(url, {"model": model}, retries=2))
    assert client(base).chat.completions.create(model="up", messages=MESSAGES).choices[0].message.content
    assert fake.counts[model] == 3


def test_caller_errors_are_not_retried(start_gateway, upstream):
    fake, url = upstream
    base = start_gateway(with_deployments(url, {"model": "status-400"}, {"model": "ok"}, retries=3))
    before = fake.counts.get("status-400", 0)
    with pytest.raises(openai.BadRequestError):
        client(base).chat.completions.create(model="up", messages=MESSAGES)
    assert fake.counts["status-400"] == before + 1  # neither retried nor sent to the fallback


def test_a_long_retry_after_moves_on_and_reaches_the_caller(start_gateway, upstream):
    fake, url = upstream
    base = start_gateway(with_deployments(url, {"model": "status-429"}, retries=3, max_retry_after=1))
    before = fake.counts.get("status-429", 0)
    with pytest.raises(openai.RateLimitError) as err:
        client(base).chat.completions.create(model="up", messages=MESSAGES)
    # the upstream asked for 7 s, more than max_retry_after: no attempt waited for it, none was made again
    assert fake.counts["status-429"] == before + 1 and err.value.response.headers["retry-after"] == "7"


def test_weighted_routing_spreads_by_weight(start_gateway, upstream):
    fake, url = upstream
    a, b = f"ok-a-{uuid.uuid4().hex[:6]}", f"ok-b-{uuid.uuid4().hex[:6]}"
    base = start_gateway(
        with_deployments(url, {"model": a, "weight": 3}, {"model": b, "weight": 1}, strategy="weighted")
    )
    c = client(base)
    for _ in range(80):
        c.chat.completions.create(model="up", messages=MESSAGES)
    share = Counter({a: fake.counts.get(a, 0), b: fake.counts.get(b, 0)})
    assert share[a] + share[b] == 80 and 45 <= share[a] <= 75


def test_hang_before_headers_hits_the_first_byte_timeout_then_falls_back(start_gateway, upstream):
    fake, url = upstream
    base = start_gateway(
        with_deployments(url, {"model": "hang", "timeouts": {"first_byte": 0.3}}, {"model": "ok"}, retries=0)
    )
    before = fake.counts.get("hang", 0)
    # "hang" never answers: an answer at all (within the client's own timeout) means the first-byte timeout cut it
    assert client(base).chat.completions.create(model="up", messages=MESSAGES).choices[0].message.content
    assert fake.counts["hang"] == before + 1
    assert wait_pool_idle(base) == 0


def test_stall_mid_stream_ends_with_an_error_event_after_the_idle_timeout(start_gateway, upstream):
    fake, url = upstream
    base = start_gateway(with_deployments(url, {"model": "stall", "timeouts": {"idle": 0.3}}))
    r = httpx2.post(
        base + "/v1/chat/completions",
        headers=AUTH,
        timeout=10,
        json={"model": "up", "messages": MESSAGES, "stream": True},
    )
    assert r.status_code == 200 and "first" in r.text
    assert '"code":"upstream_timeout"' in r.text and "[DONE]" not in r.text
    assert wait_pool_idle(base) == 0


def test_cut_stream_is_not_retried_after_the_first_byte(start_gateway, upstream):
    fake, url = upstream
    base = start_gateway(with_deployments(url, {"model": "cut"}, {"model": "ok"}, retries=2))
    before = fake.counts.get("cut", 0)
    r = httpx2.post(
        base + "/v1/chat/completions", headers=AUTH, json={"model": "up", "messages": MESSAGES, "stream": True}
    )
    assert "upstream_stream_cut" in r.text and "[DONE]" not in r.text
    assert fake.counts["cut"] == before + 1 and wait_pool_idle(base) == 0


def test_malformed_sse_is_relayed_as_is_and_usage_stays_unknown(start_gateway, upstream):
    fake, url = upstream
    base = start_gateway(with_deployments(url, {"model": "malformed-sse"}))
    r = httpx2.post(
        base + "/v1/chat/completions", headers=AUTH, json={"model": "up", "messages": MESSAGES, "stream": True}
    )
    assert r.status_code == 200 and r.text == "data: {not json\n\ndata: [DONE]\n\n"


def test_circuit_breaker_ejects_a_failing_deployment_and_probes_it_back(start_gateway, upstream):
    fake, url = upstream
    bad = "status-503"
    base = start_gateway(
        with_deployments(
            url, {"model": bad}, {"model": "ok"}, retries=0, breaker={"failures": 2, "window": 10, "cooldown": 0.5}
        )
    )
    c = client(base)
    before = fake.counts.get(bad, 0)
    for _ in range(6):
        assert c.chat.completions.create(model="up", messages=MESSAGES).choices[0].message.content
    assert fake.counts[bad] - before == 2  # ejected after two failures: the rest went straight to the fallback
    time.sleep(1.2)  # cool-down over (and the one-second local cache expired): one probe goes through
    c.chat.completions.create(model="up", messages=MESSAGES)
    c.chat.completions.create(model="up", messages=MESSAGES)
    assert fake.counts[bad] - before == 3  # the probe failed: ejected again


def test_every_deployment_ejected_is_a_clear_503(start_gateway, upstream):
    fake, url = upstream
    base = start_gateway(
        with_deployments(url, {"model": "status-500"}, retries=0, breaker={"failures": 1, "window": 10, "cooldown": 30})
    )
    c = client(base)
    with pytest.raises(openai.InternalServerError) as first:
        c.chat.completions.create(model="up", messages=MESSAGES)
    assert first.value.status_code == 502
    with pytest.raises(openai.InternalServerError) as second:
        c.chat.completions.create(model="up", messages=MESSAGES)
    assert second.value.status_code == 503 and "temporarily ejected" in second.value.message


def test_breaker_state_is_shared_through_redis(start_gateway, upstream, redis_url, redis_prefix):
    fake, url = upstream
    cat = with_deployments(
        url, {"model": "status-503"}, {"model": "ok"}, retries=0, breaker={"failures": 2, "window": 10, "cooldown": 30}
    )
    settings = {"redis_url": redis_url, "redis_prefix": redis_prefix + uuid.uuid4().hex + ":"}
    one, two = start_gateway(cat, **settings), start_gateway(cat, **settings)
    before = fake.counts.get("status-503", 0)
    client(one).chat.completions.create(model="up", messages=MESSAGES)
    client(two).chat.completions.create(model="up", messages=MESSAGES)  # the second failure, from the other
    for base in (one, two, one, two):
        client(base).chat.completions.create(model="up", messages=MESSAGES)
    assert fake.counts["status-503"] - before == 2  # ejected for both replicas after the second failure


def test_breakers_act_on_local_state_while_the_store_is_down(start_gateway, upstream):
    fake, url = upstream
    bad = "status-503"
    cat = with_deployments(
        url, {"model": bad}, {"model": "ok"}, retries=0, breaker={"failures": 2, "window": 30, "cooldown": 30}
    )
    cat["tenants"][0]["policies"] = []  # nothing in the chain needs the store
    with throwaway_redis() as redis_url:
        base = start_gateway(cat, redis_url=redis_url)
    # the store is gone (and no request has read a breaker's state yet): failures are counted in this process
    before = fake.counts.get(bad, 0)
    for _ in range(5):
        assert client(base).chat.completions.create(model="up", messages=MESSAGES).choices[0].message.content
    assert fake.counts[bad] - before == 2  # ejected here after two failures: the rest went to the fallback


def test_client_disconnect_cancels_a_non_streaming_upstream_request(start_gateway, upstream):
    fake, url = upstream
    base = start_gateway(with_deployments(url, {"model": "hang"}))
    before = fake.disconnects
    with pytest.raises(httpx2.TimeoutException):
        httpx2.post(
            base + "/v1/chat/completions", headers=AUTH, timeout=0.5, json={"model": "up", "messages": MESSAGES}
        )
    assert wait_for(lambda: fake.disconnects, lambda n: n > before) == before + 1 and wait_pool_idle(base) == 0
