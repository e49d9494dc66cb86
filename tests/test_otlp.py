"""The gateway's own spans and their OTLP/JSON export (gateway/otlp.py), and the W3C trace context it reads
(gateway/tracing.py), against a real OTLP receiver on loopback: what the receiver decodes through
opentelemetry-proto's schema is what a collector would read."""

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

from gateway.otlp import CLIENT, INTERNAL, SERVER, Exporter, Span, span_id, tail, trace_id
from gateway.tracecontext import parse_traceparent, parse_tracestate
from tests.fakes.otlp import OtlpReceiver
from tests.servers import serve, wait_for

TRACE, PARENT = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[OtlpReceiver, str]]:
    otlp = OtlpReceiver()
    with serve(otlp, lifespan=False) as base:
        yield otlp, base + "/v1/traces"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"00-{TRACE}-{PARENT}-01", (TRACE, PARENT, True)),
        (f"00-{TRACE}-{PARENT}-00", (TRACE, PARENT, False)),
        (f"00-{TRACE}-{PARENT}-03", (TRACE, PARENT, True)),  # other flags: only "sampled" is read
        (f"01-{TRACE}-{PARENT}-01-later-fields", (TRACE, PARENT, True)),  # a later version may append
        (f"00-{TRACE}-{PARENT}-01-x", None),  # version 00 has exactly four fields
        (f"ff-{TRACE}-{PARENT}-01", None),  # version ff is invalid
        (f"00-{TRACE.upper()}-{PARENT}-01", None),  # lowercase hex only
        (f"00-{'0' * 32}-{PARENT}-01", None),
        (f"00-{TRACE}-{'0' * 16}-01", None),
        (f"00-{TRACE[:-1]}-{PARENT}-01", None),
        (f" 00-{TRACE}-{PARENT}-01", None),
        (f"01-{TRACE}-{PARENT}-01-" + "x" * 600, None),  # longer than anyone needs: not read
        ("garbage", None),
        ("", None),
    ],
)
def test_traceparent_is_read_strictly(header, expected):
    assert parse_traceparent(header) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("congo=t61rcWkgMzE, rojo=00f067aa0ba902b7", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
        ("tenant@vendor=x,,", "tenant@vendor=x"),
        ('a="quoted\\"', 'a="quoted\\"'),  # printable values pass as they are (and are JSON-escaped on export)
        ("UPPER=x", ""),  # keys are lowercase
        ("novalue", ""),
        ("a=b\x00", ""),
        (",".join(f"k{n}=v" for n in range(33)), ""),  # at most 32 members
        ("k=" + "v" * 600, ""),
    ],
)
def test_tracestate_is_kept_only_when_every_member_is_valid(header, expected):
    assert parse_tracestate(header) == expected


def test_ids_are_random_lowercase_hex():
    traces, spans = {trace_id() for _ in range(1000)}, {span_id() for _ in range(1000)}
    assert len(traces) == len(spans) == 1000
    assert all(len(t) == 32 and int(t, 16) for t in traces) and all(len(s) == 16 and int(s, 16) for s in spans)


def _exporter(endpoint: str, **kwargs: object) -> Exporter:
    return Exporter(endpoint, {"x-team": "ai"}, {"service.name": "test-otlp"}, 0.01, **kwargs)  # type: ignore[arg-type]


async def test_spans_of_every_kind_reach_the_collector_as_valid_otlp_json(receiver):
    otlp, endpoint = receiver
    exporter = _exporter(endpoint)
    await exporter.start()
    trace = trace_id()
    server = Span((trace, PARENT, "congo=t61rcWkgMzE"), "POST /v1/chat/completions", SERVER, {"n": 7})
    attributes = {
        "text": 'hostile \ud800 surrogate " and \\ quote',  # a lone surrogate (a tool's output read by json)
        "big": 2**70,  # beyond int64: written as text
        "nan": float("nan"),  # not JSON: written as text
        "ratio": 0.5,
        "flag": True,
        "reasons": ("stop", "length"),
        "mixed": [1, "a"],
    }
    chat = Span((trace, server.span_id, ""), "chat \udcff model", CLIENT, attributes)
    chat.fail("upstream said no", "upstream_error")
    chat.record_exception(ValueError("bad \ud800 thing"))
    chat.end = server.end = time.time_ns()
    encode = exporter.encoder.span  # spans are encoded as they end: their JSON joins the export queue
    exporter.encoded.append(encode(chat))
    # a span whose name, kind and attributes are the same every time: its JSON written at once, its tail made once
    step = tail("before allow_list", INTERNAL, '{"key":"k","value":{"stringValue":"v"}}')
    exporter.encoded.append(
        f'{{"traceId":"{trace}","parentSpanId":"{server.span_id}","spanId":"{span_id()}",'
        f'"startTimeUnixNano":"1","endTimeUnixNano":"2",{step}'
    )
    exporter.encoded.append(encode(server))
    await exporter.stop()
    spans = {s.name: s for s in wait_for(lambda: otlp.trace(trace), lambda got: len(got) == 3)}
    assert set(spans) == {"POST /v1/chat/completions", "chat ? model", "before allow_list"}
    got = spans["chat ? model"]
    assert (got.kind, got.parent_id, got.status) == ("client", server.span_id, 2)
    assert got.attributes == {
        "text": 'hostile ? surrogate " and \\ quote',
        "big": str(2**70),
        "nan": "nan",
        "ratio": 0.5,
        "flag": True,
        "reasons": ["stop", "length"],
        "mixed": [1, "a"],
        "error.type": "upstream_error",
    }
    step = spans["before allow_list"]
    assert step.kind == "internal" and step.parent_id == server.span_id and len(step.span_id) == 16
    assert spans["POST /v1/chat/completions"].attributes == {"n": 7}
    assert got.resource == {"service.name": "test-otlp"}
    assert any(h.get("x-team") == "ai" and h["content-type"] == "application/json" for h in otlp.headers)
    assert exporter.exported == 3 and exporter.failed == 0


async def test_a_shared_attribute_dict_is_copied_on_change(receiver):
    otlp, endpoint = receiver
    exporter = _exporter(endpoint)
    trace, shared = trace_id(), {"gateway.policy.name": "budget"}
    spans = [
        Span((trace, "", ""), f"s{n}", INTERNAL, shared, '{"key":"x","value":{"stringValue":"y"}}') for n in range(3)
    ]
    spans[0].fail("boom", "policy_error")  # its own copy, with error.type; the others keep the shared encoding
    assert shared == {"gateway.policy.name": "budget"} and spans[0].attributes["error.type"] == "policy_error"
    for span in spans:
        span.end = time.time_ns()
        exporter.encoded.append(exporter.encoder.span(span))
    assert exporter.queued == 3
    await exporter.start()
    await exporter.stop()
    got = {s.name: s for s in wait_for(lambda: otlp.trace(trace), lambda got: len(got) == 3)}
    assert got["s0"].attributes == {"gateway.policy.name": "budget", "error.type": "policy_error"}
    assert got["s1"].attributes == {"x": "y"}


def test_a_full_queue_leaves_new_requests_unrecorded():
    # a request's spans go straight into the queue as they end, so the bound is kept when a request starts
    exporter = _exporter("http://127.0.0.1:9/v1/traces", max_queue=2048)
    assert exporter.room() and exporter.unrecorded == 0
    exporter.encoded.extend(["{}"] * 2048)
    assert not exporter.room() and not exporter.room() and exporter.unrecorded == 2
    del exporter.encoded[:1]
    assert exporter.room() and exporter.unrecorded == 2


async def test_a_collector_that_is_away_costs_failed_exports_only():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exporter = _exporter(f"http://127.0.0.1:{port}/v1/traces")
    await exporter.start()
    for n in range(5):
        exporter.encoded.append(exporter.encoder.span(Span((trace_id(), "", ""), f"s{n}", INTERNAL, {})))
    await asyncio.sleep(0.1)  # a batch or two tried meanwhile
    await exporter.stop()
    assert exporter.failed == 5 and exporter.exported == 0 and exporter.queued == 0
