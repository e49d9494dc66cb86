"""Traces over OTLP/HTTP, received by a real OTLP receiver on loopback (OTLP/JSON read through opentelemetry-proto's
schema): the gateway's own spans, exporter, sampler and propagation, end to end."""

import ast
import gc
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml

from config import Settings
from gateway.app import create_app
from tests.conftest import ADMIN_KEY, SPACE, TENANT, catalogue
from tests.fakes.otlp import OtlpReceiver, Span
from tests.servers import serve, wait_for
from tests.test_tool_loop import _catalogue, _mcp_tool, _script, mcp  # noqa: F401 (fixtures)

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
CALLER_TRACE, CALLER_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[OtlpReceiver, str]]:
    otlp = OtlpReceiver()
    with serve(otlp, lifespan=False) as base:
        yield otlp, base + "/v1/traces"


def _traced(start_gateway: Any, cat: dict[str, Any], endpoint: str, **settings: Any) -> Any:
    return start_gateway(cat, traces=True, traces_endpoint=endpoint, traces_export_delay_seconds=0.05, **settings)


def _trace(otlp: OtlpReceiver, trace_id: str, *names: str) -> dict[str, Span]:
    """The trace's spans by name, once every one of ``names`` has arrived."""
    spans = wait_for(lambda: otlp.trace(trace_id), lambda got: set(names) <= {s.name for s in got})
    return {s.name: s for s in spans}


def _policies(cat: dict[str, Any]) -> dict[str, Any]:
    cat["tenants"][0]["policies"] = [
        {"use": "allow_list"},
        {"use": "idempotency"},
        {"use": "budget", "limits": [{"scope": "space", "period": "day", "usd": "1000"}]},
    ]
    cat["tenants"][0]["models"][0]["pricing"] = {"input_per_mtok": "1", "output_per_mtok": "2"}
    return cat


def test_a_chat_request_is_one_trace_under_the_callers_traceparent(
    start_gateway, upstream, receiver, redis_url, redis_prefix
):
    fake, upstream_url = upstream
    otlp, endpoint = receiver
    base = _traced(
        start_gateway, _policies(catalogue(upstream_url)), endpoint, redis_url=redis_url, redis_prefix=redis_prefix
    )
    traceparent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    r = httpx2.post(
        base + "/v1/chat/completions",
        headers={
            **AUTH,
            "traceparent": traceparent,
            "tracestate": "congo=t61rcWkgMzE",
            "Idempotency-Key": os.urandom(8).hex(),
        },
        json={"model": "up", "messages": [{"role": "user", "content": "a secret prompt"}], "max_tokens": 7},
    )
    assert r.status_code == 200 and r.headers["x-trace-id"] == CALLER_TRACE
    spans = _trace(otlp, CALLER_TRACE, "POST /v1/chat/completions", "chat up", "store after")
    server, chat = spans["POST /v1/chat/completions"], spans["chat up"]
    assert (server.kind, server.parent_id) == ("server", CALLER_SPAN)
    assert server.attributes["http.route"] == "/v1/chat/completions"
    assert server.attributes["http.request.method"] == "POST"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["gateway.space.id"] == SPACE and server.attributes["gateway.tenant.id"] == TENANT
    assert server.attributes["gateway.api_key.name"] == "admin" and server.attributes["gateway.outcome"] == "ok"
    assert len(server.attributes["gateway.request.id"]) > 0
    assert server.resource["service.name"] == "llm-gateway"
    assert server.status == 0
    # the chat span, GenAI conventions: a client span of the server span; it answered at its first attempt, so it
    # is the attempt's span too (no span of its own)
    assert (chat.kind, chat.parent_id) == ("client", server.span_id)
    assert {k: v for k, v in chat.attributes.items() if k.startswith("gen_ai.")} == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.system": "openai",
        "gen_ai.request.model": "up",
        "gen_ai.request.max_tokens": 7,
        "gen_ai.response.model": "up-model",
        "gen_ai.response.id": "chatcmpl-up",
        "gen_ai.response.finish_reasons": ["stop"],
        "gen_ai.usage.input_tokens": 5,
        "gen_ai.usage.output_tokens": 3,
        "gen_ai.usage.cache_read.input_tokens": 0,
        "gen_ai.usage.reasoning.output_tokens": 0,
    }
    assert chat.attributes["gateway.deployment.model"] == "ok" and chat.attributes["server.port"] > 0
    assert chat.attributes["server.address"] == "127.0.0.1"
    assert not any(s.kind == "client" and s is not chat for s in spans.values())
    # a span per policy hook that ran (a policy's own: allow_list has no after) and per store round trip (on
    # Redis), all children of the server span
    for name in (
        "before allow_list",
        "before idempotency",
        "before budget",
        "before_call budget",
        "store before",
        "after_call budget",
        "after idempotency",
        "store after",
    ):
        assert spans[name].parent_id == server.span_id, name
    assert "after allow_list" not in spans
    assert spans["before budget"].attributes == {"gateway.policy.name": "budget", "gateway.policy.hook": "before"}
    assert spans["store after"].attributes == {"gateway.store.phase": "after"}
    # the upstream got the call's context: same trace, the chat span as parent
    sent = next(h for h in reversed(fake.headers) if CALLER_TRACE in h.get("traceparent", ""))
    assert sent["traceparent"] == f"00-{CALLER_TRACE}-{chat.span_id}-01"
    assert sent["tracestate"] == "congo=t61rcWkgMzE"
    # exported as OTLP/JSON (the receiver reads it through the protobuf schema)
    assert all(h["content-type"] == "application/json" for h in otlp.headers)
    # no content by default
    assert not any("a secret prompt" in str(s.attributes) for s in spans.values())


def test_on_the_in_memory_store_the_round_trips_are_no_spans(start_gateway, upstream, receiver):
    otlp, endpoint = receiver
    base = _traced(start_gateway, _policies(catalogue(upstream[1])), endpoint)
    body = {"model": "up", "messages": [{"role": "user", "content": "x"}]}
    r = httpx2.post(base + "/v1/chat/completions", headers=AUTH, json=body)
    assert r.status_code == 200
    spans = _trace(otlp, r.headers["x-trace-id"], "POST /v1/chat/completions", "after idempotency", "before budget")
    assert "before budget" in spans and not any(name.startswith("store ") for name in spans)


def test_without_a_traceparent_the_gateway_starts_the_trace(start_gateway, upstream, receiver):
    otlp, endpoint = receiver
    base = _traced(start_gateway, catalogue(upstream[1]), endpoint)
    r = httpx2.post(
        base + "/v1/chat/completions",
        headers=AUTH,
        json={"model": "up", "messages": [{"role": "user", "content": "x"}]},
    )
    trace_id = r.headers["x-trace-id"]
    assert len(trace_id) == 32 and trace_id != CALLER_TRACE
    server = _trace(otlp, trace_id, "POST /v1/chat/completions")["POST /v1/chat/completions"]
    assert server.parent_id == ""


def test_a_streamed_chat_is_traced_with_its_usage(start_gateway, upstream, receiver):
    otlp, endpoint = receiver
    base = _traced(start_gateway, catalogue(upstream[1]), endpoint)
    body = {"model": "up", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    with httpx2.stream("POST", base + "/v1/chat/completions", headers=AUTH, json=body) as r:
        assert r.status_code == 200 and b"[DONE]" in r.read()
        trace_id = r.headers["x-trace-id"]
    chat = _trace(otlp, trace_id, "chat up", "POST /v1/chat/completions")["chat up"]
    assert chat.attributes["gen_ai.usage.output_tokens"] > 0
    assert chat.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert chat.attributes["gen_ai.response.model"]


def test_errors_are_traced_with_their_status(start_gateway, upstream, receiver):
    otlp, endpoint = receiver
    base = _traced(start_gateway, catalogue(upstream[1], "status-500"), endpoint)
    r = httpx2.post(
        base + "/v1/chat/completions",
        headers=AUTH,
        json={"model": "up", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 502
    spans = _trace(otlp, r.headers["x-trace-id"], "POST /v1/chat/completions", "chat up")
    assert spans["POST /v1/chat/completions"].status == 2 and spans["chat up"].status == 2
    assert spans["POST /v1/chat/completions"].attributes["http.response.status_code"] == 502
    r = httpx2.post(base + "/v1/chat/completions", headers={"Authorization": "Bearer nope"}, json={})
    server = _trace(otlp, r.headers["x-trace-id"], "POST /v1/chat/completions")["POST /v1/chat/completions"]
    assert server.attributes["http.response.status_code"] == 401 and "gateway.space.id" not in server.attributes


def test_content_is_recorded_only_when_asked_and_bounded(start_gateway, upstream, receiver):
    otlp, endpoint = receiver
    base = _traced(start_gateway, catalogue(upstream[1]), endpoint, traces_content=True, traces_content_max_chars=200)
    prompt = "tell me " + "x" * 1000
    r = httpx2.post(
        base + "/v1/chat/completions",
        headers=AUTH,
        json={"model": "up", "messages": [{"role": "user", "content": prompt}]},
    )
    chat = _trace(otlp, r.headers["x-trace-id"], "chat up")["chat up"]
    recorded = chat.attributes["gen_ai.input.messages"]
    assert "tell me xxx" in recorded and len(recorded) <= 201
    assert "hi from upstream" in chat.attributes["gen_ai.output.messages"]


def test_the_headers_setting_reaches_the_collector(start_gateway, upstream, receiver):
    otlp, endpoint = receiver
    base = _traced(
        start_gateway, catalogue(upstream[1]), endpoint, traces_headers="Authorization=Basic cGs6c2s%3D,x-team=ai"
    )
    r = httpx2.post(
        base + "/v1/chat/completions",
        headers=AUTH,
        json={"model": "up", "messages": [{"role": "user", "content": "x"}]},
    )
    _trace(otlp, r.headers["x-trace-id"], "POST /v1/chat/completions")
    exports = wait_for(lambda: [h for h in otlp.headers if h.get("x-team") == "ai"])
    assert exports and exports[0]["authorization"] == "Basic cGs6c2s="


def test_sampling_zero_exports_nothing_but_still_propagates(tmp_path, upstream, receiver):
    fake, upstream_url = upstream
    otlp, endpoint = receiver
    path = tmp_path / "catalogue.yaml"
    path.write_text(yaml.safe_dump(catalogue(upstream_url)))
    settings = Settings(config=path, traces=True, traces_endpoint=endpoint, traces_sample_ratio=0)
    before = len(otlp.all())
    with serve(create_app(settings)) as base:
        body = {"model": "up", "messages": [{"role": "user", "content": "unsampled"}]}
        r = httpx2.post(base + "/v1/chat/completions", headers=AUTH, json=body)
        assert r.status_code == 200 and "x-trace-id" not in r.headers
        sent = fake.headers[-1]["traceparent"]
        assert sent.startswith("00-") and int(sent[-2:], 16) & 1 == 0  # the context travels, marked unsampled
    assert len(otlp.all()) == before  # the gateway stopped: its provider shut down, everything flushed


def test_the_native_response_carries_its_trace_id(start_gateway, upstream, receiver):
    otlp, endpoint = receiver
    base = _traced(start_gateway, catalogue(upstream[1]), endpoint)
    r = httpx2.post(
        f"{base}/v1/spaces/{SPACE}/responses", headers=AUTH, json={"model": "up", "input": "hi", "tool_mode": "manual"}
    )
    assert r.status_code == 200
    trace_id = r.headers["x-trace-id"]
    assert r.json()["data"]["aimable"]["langfuse_trace_id"] == trace_id
    chat = _trace(otlp, trace_id, "chat up")["chat up"]
    assert chat.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert chat.attributes["gen_ai.usage.input_tokens"] == 5


def test_a_tool_loop_has_a_span_per_round_and_per_tool_call(start_gateway, scripted, mcp, receiver):  # noqa: F811
    otlp, endpoint = receiver
    base = _traced(start_gateway, _catalogue(scripted[1]), endpoint, traces_content=True)
    body = {
        "model": "up",
        "input": _script([["calc__add", {"a": 2, "b": 3}]], "sum is {outputs}"),
        "tools": [_mcp_tool(mcp[0], require_approval="never")],
    }
    r = httpx2.post(base + "/v1/responses", headers=AUTH, json=body, timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "completed"
    spans = wait_for(
        lambda: otlp.trace(r.headers["x-trace-id"]),
        lambda got: sum(s.name == "chat up" for s in got) == 2 and any(s.kind == "server" for s in got),
    )
    server = next(s for s in spans if s.kind == "server")
    rounds = sorted((s for s in spans if s.name == "chat up"), key=lambda s: s.attributes.get("gateway.call.round", 1))
    tool = next(s for s in spans if s.name == "execute_tool add")
    assert {s.parent_id for s in [*rounds, tool]} == {server.span_id}  # the tool runs between the rounds
    assert tool.attributes["gen_ai.tool.name"] == "add" and tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert (
        tool.attributes["gen_ai.tool.call.result"] == "5" and '"a":2' in tool.attributes["gen_ai.tool.call.arguments"]
    )
    assert rounds[1].attributes["gateway.call.round"] == 2
    assert [r.attributes["gen_ai.response.finish_reasons"] for r in rounds] == [["stop"], ["stop"]]
    sent = mcp[1].calls[-1]["_meta"]["traceparent"]  # the MCP server is told the tool call's span, as the SDK does
    assert sent == f"00-{tool.trace_id}-{tool.span_id}-01"


def test_traces_off_installs_nothing(gateway):
    assert gateway.app.state.gateway.tracing is None
    r = httpx2.post(
        gateway + "/v1/chat/completions",
        headers=AUTH,
        json={"model": "up", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 200 and "x-trace-id" not in r.headers


@pytest.mark.parametrize(
    "settings",
    [{"traces_endpoint": "ftp://x/v1/traces"}, {"traces_headers": "no-equals-sign"}, {"traces_sample_ratio": 2}],
)
def test_bad_trace_settings_fail_the_start(settings):
    with pytest.raises(ValueError):
        Settings(**settings)


def test_only_the_tracing_modules_import_opentelemetry():
    importers = []
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] == "opentelemetry" for n in names):
                importers.append(path.relative_to(ROOT).as_posix())
    assert set(importers) <= {"gateway/tracing.py", "gateway/request_trace.py"}


def test_a_fallback_is_two_attempts_in_one_call_whose_status_is_the_last(start_gateway, upstream, receiver):
    otlp, endpoint = receiver
    cat = catalogue(upstream[1])
    model = cat["tenants"][0]["models"][0]
    del model["deployment"]
    model["deployments"] = [
        {"type": "openai", "base_url": upstream[1] + "/v1", "model": m} for m in ("status-503", "ok")
    ]
    model["routing"] = {"backoff": 0.01, "retries": 0}
    base = _traced(start_gateway, cat, endpoint)
    body = {"model": "up", "messages": [{"role": "user", "content": "x"}]}
    r = httpx2.post(base + "/v1/chat/completions", headers=AUTH, json=body)
    assert r.status_code == 200
    spans = wait_for(
        lambda: otlp.trace(r.headers["x-trace-id"]),
        lambda got: sum(s.name == "POST" for s in got) == 2 and any(s.kind == "server" for s in got),
    )
    chat = next(s for s in spans if s.name == "chat up")
    attempts = sorted((s for s in spans if s.name == "POST"), key=lambda s: s.status, reverse=True)
    assert [a.parent_id for a in attempts] == [chat.span_id, chat.span_id]
    assert [a.attributes["gateway.deployment.model"] for a in attempts] == ["status-503", "ok"]
    assert attempts[0].status == 2 and attempts[0].attributes["http.response.status_code"] == 503
    assert chat.status == 0 and "error.type" not in chat.attributes
    assert chat.attributes["gateway.deployment.model"] == "ok"  # the deployment of its last attempt
    # the first attempt went with the call's context, the fallback with its own span's
    trace = r.headers["x-trace-id"]
    sent = [h["traceparent"] for h in upstream[0].headers if trace in h.get("traceparent", "")]
    assert sent == [f"00-{trace}-{chat.span_id}-01", f"00-{trace}-{attempts[1].span_id}-01"]


def test_token_counts_no_int64_holds_are_exported_as_strings(start_gateway, upstream, receiver):
    otlp, endpoint = receiver
    cat = catalogue(upstream[1])
    cat["tenants"][0]["models"][0]["deployment"]["model"] = "absurd-usage"
    base = _traced(start_gateway, cat, endpoint)
    body = {"model": "up", "messages": [{"role": "user", "content": "x"}]}
    r = httpx2.post(base + "/v1/chat/completions", headers=AUTH, json=body)
    assert r.status_code == 200, r.text
    chat = _trace(otlp, r.headers["x-trace-id"], "chat up", "POST /v1/chat/completions")["chat up"]
    assert chat.attributes["gen_ai.usage.input_tokens"] == str(2**70)  # a collector would refuse the batch else
    assert chat.attributes["gen_ai.usage.output_tokens"] == -3


@pytest.mark.parametrize(
    "traceparent",
    ["garbage", "00-" + "0" * 32 + "-" + "1" * 16 + "-01", "00-" + "a" * 32 + "-" + "b" * 16 + "-01" + "x" * 100_000],
)
def test_a_hostile_traceparent_starts_a_trace_of_its_own(start_gateway, upstream, receiver, traceparent):
    otlp, endpoint = receiver
    base = _traced(start_gateway, catalogue(upstream[1]), endpoint)
    body = {"model": "up", "messages": [{"role": "user", "content": "x"}]}
    r = httpx2.post(base + "/v1/chat/completions", headers={**AUTH, "traceparent": traceparent}, json=body)
    assert r.status_code == 200
    trace_id = r.headers["x-trace-id"]
    assert len(trace_id) == 32 and trace_id not in (traceparent[3:35], "0" * 32)
    server = _trace(otlp, trace_id, "POST /v1/chat/completions")["POST /v1/chat/completions"]
    assert server.parent_id == ""


def test_a_background_response_is_traced_after_its_answer(start_gateway, upstream, receiver):
    otlp, endpoint = receiver
    base = _traced(start_gateway, catalogue(upstream[1]), endpoint)
    body = {"model": "up", "input": "hi", "background": True, "store": True}
    r = httpx2.post(base + "/v1/responses", headers=AUTH, json=body)
    assert r.status_code == 200
    trace_id, response_id = r.headers["x-trace-id"], r.json()["id"]
    done = wait_for(
        lambda: httpx2.get(f"{base}/v1/responses/{response_id}", headers=AUTH).json(),
        lambda got: got["status"] == "completed",
    )
    assert done["status"] == "completed"
    spans = _trace(otlp, trace_id, "POST /v1/responses", "chat up")
    assert spans["chat up"].parent_id == spans["POST /v1/responses"].span_id
    assert spans["chat up"].attributes["gen_ai.usage.output_tokens"] == 3


@pytest.mark.parametrize("traces", ["false", "true"])
def test_the_sdk_is_not_even_imported(traces):
    """Traces on or off: the gateway's spans and exporter are its own (gateway/otlp.py)."""
    code = (
        "import sys; from gateway.app import create_app; create_app(); "
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter'))))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")} | {"GATEWAY_TRACES": traces}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_callers_unsampled_flag_holds_at_full_sampling(start_gateway, upstream, receiver):
    fake, upstream_url = upstream
    otlp, endpoint = receiver
    base = _traced(start_gateway, catalogue(upstream_url), endpoint)
    body = {"model": "up", "messages": [{"role": "user", "content": "x"}]}
    trace = os.urandom(16).hex()
    r = httpx2.post(
        base + "/v1/chat/completions", headers={**AUTH, "traceparent": f"00-{trace}-{CALLER_SPAN}-00"}, json=body
    )
    assert r.status_code == 200 and "x-trace-id" not in r.headers
    sent = next(h for h in reversed(fake.headers) if trace in h.get("traceparent", ""))
    assert sent["traceparent"].startswith(f"00-{trace}-") and sent["traceparent"].endswith("-00")
    assert sent["traceparent"][36:52] != CALLER_SPAN  # the gateway's own (unrecorded) span is the parent
    assert otlp.trace(trace) == []


@pytest.mark.parametrize("traced", [False, True])
def test_a_request_leaves_no_garbage_cycle(start_gateway, upstream, receiver, traced):
    """Once answered, a request's context (and its trace) is freed by reference counting: a cycle through it
    would wait for the cyclic collector, whose collections cost every request (a cancelled watcher task's
    traceback, a trace and its context referring to each other, a closure held by what it closes over)."""
    settings = {"traces": True, "traces_endpoint": receiver[1]} if traced else {}
    base = start_gateway(catalogue(upstream[1]), **settings)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds is kept in gc.garbage instead of freed
    try:
        with httpx2.Client(base_url=base, headers=AUTH, timeout=30) as client:
            chat = {"model": "up", "messages": [{"role": "user", "content": "hi"}]}
            for body in (chat, {**chat, "stream": True}):
                assert client.post("/v1/chat/completions", json=body).status_code == 200
            for body in ({"model": "up", "input": "hi"}, {"model": "up", "input": "hi", "stream": True}):
                assert client.post("/v1/responses", json=body).status_code == 200
        base.idle()
        gc.collect()
        left = sorted({type(o).__name__ for o in gc.garbage if type(o).__module__.startswith("gateway")})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == []
