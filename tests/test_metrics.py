"""Prometheus metrics through real gateways: the openai SDK against the loopback upstream, /metrics scraped over
HTTP and parsed, ``promtool check metrics`` on the real output, and two processes summed in multiprocess mode."""

import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import process_ended
from tests.conftest import ADMIN_KEY, MODEL_IDS, SPACE, catalogue
from tests.servers import gateway_process, spawn_gateway, wait_for

MESSAGES = [{"role": "user", "content": "hello"}]
UP = f"{MODEL_IDS['up']}:0"  # the deployment label of the test model's first deployment


def client(base: str, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=15, **kwargs)


def scrape(base: str, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = httpx2.get(base + "/metrics", headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return answer.text


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels`` (0 when there is none)."""
    return sum(v for n, lab, v in samples(text) if n == name and labels.items() <= lab.items())


def with_model(
    url: str, deployments: list[dict[str, Any]], policies: list[dict[str, Any]] | None = None, **routing: Any
) -> dict[str, Any]:
    cat = catalogue(url)
    model = cat["tenants"][0]["models"][0]
    model.pop("deployment")
    model["deployments"] = [{"type": "openai", "base_url": url + "/v1", **d} for d in deployments]
    model["routing"] = {"backoff": 0.01, **routing}
    model["pricing"] = {"input_per_mtok": "1", "output_per_mtok": "2"}
    if policies is not None:
        cat["tenants"][0]["policies"] = policies
    return cat


def test_a_chat_and_a_stream_move_requests_tokens_cost_and_time_to_first_token(start_gateway, upstream):
    base = start_gateway(with_model(upstream[1], [{"model": "ok"}]))
    sdk = client(base)
    sdk.chat.completions.create(model="up", messages=MESSAGES)
    chunks = list(
        sdk.chat.completions.create(model="up", messages=MESSAGES, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[-1].usage is not None
    base.idle()
    text = scrape(base)
    request = {"route": "chat.completions", "space": SPACE, "model": "up"}
    assert value(text, "gateway_requests_total", **request, status="200", outcome="ok") == 2
    assert value(text, "gen_ai_server_request_duration_count", **request, status="200") == 2
    # the upstream reports 5 input and 3 output tokens per request; 1 and 2 USD per million
    assert value(text, "gen_ai_client_token_usage_sum", space=SPACE, model="up", token_type="input") == 10
    assert value(text, "gen_ai_client_token_usage_sum", space=SPACE, model="up", token_type="output") == 6
    assert value(text, "gen_ai_client_token_usage_count", token_type="cached_input") == 0  # none reported
    assert value(text, "gateway_cost_usd_total", space=SPACE, model="up") == pytest.approx(2 * 11e-6)
    assert value(text, "gen_ai_server_time_to_first_token_count", **request) == 1  # the stream only
    assert value(text, "gen_ai_server_time_per_output_token_count", **request) == 1
    assert value(text, "gateway_upstream_request_duration_seconds_count", deployment=UP, model="up") == 2
    assert value(text, "gateway_inflight_requests") == 0
    assert value(text, "gateway_open_streams") == 0


def test_a_responses_stream_has_its_time_to_first_token(start_gateway, upstream):
    base = start_gateway(with_model(upstream[1], [{"model": "ok"}]))
    events = list(client(base).responses.create(model="up", input="hello", stream=True))
    assert events[-1].type == "response.completed"
    base.idle()
    text = scrape(base)
    request = {"route": "responses.create", "space": SPACE, "model": "up"}
    assert value(text, "gateway_requests_total", **request, status="200", outcome="ok") == 1
    assert value(text, "gen_ai_server_time_to_first_token_count", **request) == 1
    assert value(text, "gen_ai_client_token_usage_sum", space=SPACE, model="up", token_type="output") == 3


def test_refusals_before_the_chain_are_counted_under_their_route(gateway):
    no_key = httpx2.post(gateway + "/v1/chat/completions", json={"model": "up", "messages": MESSAGES})
    assert no_key.status_code == 401
    bad_body = httpx2.post(gateway + "/v1/chat/completions", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert bad_body.status_code == 400
    assert httpx2.get(gateway + "/no/such/route").status_code == 404
    text = scrape(gateway)
    refused = {"route": "chat.completions", "space": "none", "model": "none", "outcome": "rejected"}
    assert value(text, "gateway_requests_total", **refused, status="401") == 1
    assert value(text, "gateway_requests_total", **refused, status="400") == 1
    assert value(text, "gateway_requests_total", route="unmatched", status="404") == 1


def test_an_upstream_error_is_retried_then_falls_back(start_gateway, upstream):
    flaky = f"flaky-1-{uuid.uuid4().hex[:6]}"  # one 503 (Retry-After: 0), then answers
    base = start_gateway(with_model(upstream[1], [{"model": flaky}], retries=1))
    client(base).chat.completions.create(model="up", messages=MESSAGES)
    fallback = start_gateway(with_model(upstream[1], [{"model": "status-500"}, {"model": "ok"}], retries=0))
    client(fallback).chat.completions.create(model="up", messages=MESSAGES)
    base.idle()
    fallback.idle()
    text = scrape(base)
    assert value(text, "gateway_upstream_errors_total", deployment=UP, model="up", status="503") == 1
    assert value(text, "gateway_upstream_retries_total", deployment=UP, model="up") == 1
    assert value(text, "gateway_upstream_request_duration_seconds_count", deployment=UP) == 2
    assert value(text, "gateway_fallbacks_total") == 0
    assert value(text, "gateway_requests_total", model="up", status="200", outcome="ok") == 1
    text = scrape(fallback)
    # labelled with the status the gateway maps the failure to: an upstream 500 is a 502
    assert value(text, "gateway_upstream_errors_total", deployment=UP, status="502") == 1
    assert value(text, "gateway_fallbacks_total", model="up") == 1
    assert value(text, "gateway_upstream_request_duration_seconds_count", deployment=f"{MODEL_IDS['up']}:1") == 1


def test_an_upstream_error_reaching_the_caller_is_labelled_with_its_status(start_gateway, upstream):
    base = start_gateway(with_model(upstream[1], [{"model": "status-400"}], retries=2))
    with pytest.raises(openai.BadRequestError):
        client(base).chat.completions.create(model="up", messages=MESSAGES)
    base.idle()
    text = scrape(base)
    assert value(text, "gateway_requests_total", model="up", status="400", outcome="upstream_error") == 1
    assert value(text, "gateway_upstream_retries_total") == 0  # the caller's error: not retried


def test_the_circuit_breaker_state_is_a_gauge_by_deployment(start_gateway, upstream):
    breaker = {"failures": 1, "window": 10, "cooldown": 30}
    base = start_gateway(
        with_model(upstream[1], [{"model": "status-500"}, {"model": "ok"}], retries=0, breaker=breaker)
    )
    client(base).chat.completions.create(model="up", messages=MESSAGES)
    base.idle()
    text = scrape(base)
    assert value(text, "gateway_circuit_breaker_state", deployment=UP) == 1  # opened by the one failure
    assert value(text, "gateway_circuit_breaker_state", deployment=f"{MODEL_IDS['up']}:1") == 0


def test_policy_decisions_and_rate_limit_refusals(start_gateway, upstream):
    policies = [{"use": "allow_list"}, {"use": "rate_limit", "space": {"requests_per_minute": 1}}]
    base = start_gateway(with_model(upstream[1], [{"model": "ok"}], policies))
    sdk = client(base)
    sdk.chat.completions.create(model="up", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model="up", messages=MESSAGES)
    with pytest.raises(openai.PermissionDeniedError):  # not in the space: the allow-list says no
        sdk.chat.completions.create(model="extra", messages=MESSAGES)
    base.idle()
    text = scrape(base)
    decisions = "gateway_policy_decisions_total"
    assert value(text, decisions, space=SPACE, policy="allow_list", decision="allowed") == 2
    assert value(text, decisions, space=SPACE, policy="allow_list", decision="denied") == 1
    assert value(text, decisions, space=SPACE, policy="rate_limit", decision="allowed") == 1
    assert value(text, decisions, space=SPACE, policy="rate_limit", decision="denied") == 1
    assert value(text, "gateway_rate_limit_refusals_total", space=SPACE) == 1
    assert value(text, "gateway_requests_total", model="up", status="429", outcome="rejected") == 1


def test_every_request_of_one_kind_counts_its_verdicts(start_gateway, upstream):
    # the first request of a kind binds its children; the ones after it take the short way: they count alike
    base = start_gateway(with_model(upstream[1], [{"model": "ok"}], [{"use": "idempotency"}, {"use": "allow_list"}]))
    sdk = client(base)
    for _ in range(3):
        sdk.chat.completions.create(model="up", messages=MESSAGES)
    for _ in range(2):  # through idempotency, each new key is counted as new
        sdk.chat.completions.create(model="up", messages=MESSAGES, extra_headers={"Idempotency-Key": uuid.uuid4().hex})
    base.idle()
    text = scrape(base)
    decisions = "gateway_policy_decisions_total"
    assert value(text, decisions, space=SPACE, policy="idempotency", decision="allowed") == 5
    assert value(text, decisions, space=SPACE, policy="allow_list", decision="allowed") == 5
    assert value(text, "gateway_idempotency_total", space=SPACE, result="new") == 2
    assert value(text, "gateway_requests_total", model="up", status="200", outcome="ok") == 5
    assert value(text, "gen_ai_server_request_duration_count", model="up", status="200") == 5
    assert value(text, "gen_ai_client_token_usage_count", model="up", token_type="input") == 5


def test_idempotency_replays_are_counted(start_gateway, upstream):
    base = start_gateway(with_model(upstream[1], [{"model": "ok"}], [{"use": "idempotency"}, {"use": "allow_list"}]))
    sdk = client(base)
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = sdk.chat.completions.create(model="up", messages=MESSAGES, extra_headers=key)
    base.idle()
    again = sdk.chat.completions.create(model="up", messages=MESSAGES, extra_headers=key)
    assert again.id == first.id
    sdk.chat.completions.create(model="up", messages=MESSAGES)  # no key: not an idempotent request
    base.idle()
    text = scrape(base)
    assert value(text, "gateway_idempotency_total", space=SPACE, result="new") == 1
    assert value(text, "gateway_idempotency_total", space=SPACE, result="replayed") == 1
    assert value(text, "gateway_policy_decisions_total", policy="idempotency", decision="answered") == 1
    assert value(text, "gateway_requests_total", model="up", outcome="replayed") == 1


def test_label_values_stay_bounded_for_hostile_model_names(gateway):
    hostile = 'x"} 1\n# EVIL ' + "é" * 300 + str(uuid.uuid4())
    with pytest.raises(openai.PermissionDeniedError):
        client(gateway).chat.completions.create(model=hostile, messages=MESSAGES)
    gateway.idle()
    text = scrape(gateway)
    assert "EVIL" not in text and "é" not in text
    assert value(text, "gateway_requests_total", space=SPACE, model="other", status="403") == 1
    models = {lab["model"] for n, lab, _ in samples(text) if "model" in lab}
    assert models <= {"up", "fake-echo", "extra", "fake-slow", "fake-tool", "other", "none"}


def test_metrics_token_guards_the_scrape(start_gateway, upstream):
    base = start_gateway(catalogue(upstream[1]), metrics_token="scrape-secret")
    assert httpx2.get(base + "/metrics").status_code == 401
    wrong = httpx2.get(base + "/metrics", headers={"Authorization": "Bearer scrape-secre"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_metrics_token"
    assert httpx2.get(base + "/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 401
    assert "gateway_requests_total" in scrape(base, token="scrape-secret")


def test_metrics_can_be_turned_off(start_gateway, upstream):
    base = start_gateway(catalogue(upstream[1]), metrics_enabled=False)
    client(base).chat.completions.create(model="up", messages=MESSAGES)
    assert base.app.state.gateway.metrics is None
    assert httpx2.get(base + "/metrics").status_code == 404


def test_store_operations_are_timed_on_redis(start_gateway, upstream, redis_url, redis_prefix):
    policies = [{"use": "rate_limit", "space": {"requests_per_minute": 1000}}]
    cat = with_model(upstream[1], [{"model": "ok"}], policies)
    base = start_gateway(cat, redis_url=redis_url, redis_prefix=redis_prefix + "metrics:")
    client(base).chat.completions.create(model="up", messages=MESSAGES)
    base.idle()
    text = scrape(base)
    assert value(text, "gateway_store_duration_seconds_count", op="batch") >= 1  # the chain's round trip
    assert value(text, "gateway_store_errors_total") == 0


def promtool() -> str:
    found = shutil.which("promtool") or str(Path(sys.executable).with_name("promtool"))
    if not Path(found).exists():
        raise AssertionError("promtool is not installed (make test installs it into .venv/bin)")
    return found


def test_promtool_finds_the_real_exposition_clean(start_gateway, upstream):
    policies = [
        {"use": "idempotency"},
        {"use": "allow_list"},
        {"use": "rate_limit", "space": {"requests_per_minute": 2}},
    ]
    base = start_gateway(with_model(upstream[1], [{"model": "status-500"}, {"model": "ok"}], policies, retries=1))
    sdk = client(base)
    sdk.chat.completions.create(model="up", messages=MESSAGES, extra_headers={"Idempotency-Key": "k1"})
    list(sdk.chat.completions.create(model="up", messages=MESSAGES, stream=True))
    for _ in range(2):
        with pytest.raises(openai.APIStatusError):
            sdk.chat.completions.create(model="up", messages=MESSAGES)
    httpx2.post(base + "/v1/chat/completions", json={})  # a 401
    base.idle()
    metrics = base.app.state.gateway.metrics
    metrics.tool_call("search", "lookup", ok=True)  # what the tool loop will move
    text = scrape(base)
    checked = subprocess.run([promtool(), "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
    assert checked.returncode == 0 and not checked.stdout and not checked.stderr, checked


def test_tool_names_are_bounded_per_server(gateway):
    metrics = gateway.app.state.gateway.metrics
    for i in range(250):
        metrics.tool_call("search", f"tool-{i}-" + "x" * 100, ok=i % 2 == 0)
    tools = {lab["tool"] for n, lab, _ in samples(scrape(gateway)) if n == "gateway_tool_calls_total"}
    assert len(tools) == 201 and "other" in tools and max(map(len, tools)) <= 64


def test_several_processes_sum_in_multiprocess_mode(tmp_path, upstream, redis_url, redis_prefix, monkeypatch):
    folder = tmp_path / "prometheus"
    folder.mkdir()
    cat, prefix = catalogue(upstream[1]), redis_prefix + f"mp-{uuid.uuid4().hex[:6]}:"
    env = {"PROMETHEUS_MULTIPROC_DIR": str(folder)}
    ok = {"route": "chat.completions", "model": "up", "status": "200", "outcome": "ok"}
    proc, one = spawn_gateway(cat, tmp_path, redis_url, prefix, **env)
    try:
        with gateway_process(cat, tmp_path, redis_url, prefix, **env) as two:
            client(one).chat.completions.create(model="up", messages=MESSAGES)
            client(two).chat.completions.create(model="up", messages=MESSAGES)
            client(two).chat.completions.create(model="up", messages=MESSAGES)
            # each process's values are in its own files: either one's /metrics shows the sums
            for base in (one, two):
                text = wait_for(lambda b=base: scrape(b), lambda t: value(t, "gateway_requests_total", **ok) == 3)
                assert value(text, "gateway_requests_total", **ok) == 3
                assert value(text, "gen_ai_client_token_usage_sum", model="up", token_type="input") == 15
                assert value(text, "gateway_inflight_requests") == 0
            checked = subprocess.run(
                [promtool(), "check", "metrics"], input=text.encode(), capture_output=True, timeout=60
            )
            assert checked.returncode == 0, checked
            proc.terminate()
            proc.wait(10)
            assert list(folder.glob(f"gauge_live*_{proc.pid}.db"))
            monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
            process_ended(proc.pid)  # what the process manager does when a worker ends
            assert not list(folder.glob(f"gauge_live*_{proc.pid}.db"))
            assert value(scrape(two), "gateway_requests_total", **ok) == 3  # its counts stay
    finally:
        proc.kill()
        proc.wait(10)


def test_the_timed_store_forwards_every_store_operation():
    """TimedStore wraps the Redis store when metrics are on: an operation of the protocol it lacks (or does not
    meter) would break only on Redis with metrics on."""
    import inspect

    from gateway.store import Store
    from gateway.store.timed import _OPS, TimedStore

    ops = {n for n, v in vars(Store).items() if not n.startswith("_") and inspect.isfunction(v)}
    assert ops <= set(vars(TimedStore)), ops - set(vars(TimedStore))
    timed = {n for n in ops if "_timed(" in inspect.getsource(getattr(TimedStore, n))}
    assert timed <= set(_OPS), timed - set(_OPS)
