"""A real OTLP/HTTP traces receiver for tests: ``POST /v1/traces`` with an ``ExportTraceServiceRequest``, in
protobuf (decoded by opentelemetry-proto) or in OTLP/JSON (per its Content-Type), its spans kept flat with their
resource, each export's headers and content type."""

import base64
import gzip
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

KINDS = {
    ProtoSpan.SPAN_KIND_INTERNAL: "internal",
    ProtoSpan.SPAN_KIND_SERVER: "server",
    ProtoSpan.SPAN_KIND_CLIENT: "client",
}


@dataclass
class Span:
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    status: int  # 0 unset, 1 ok, 2 error
    resource: dict[str, Any] = field(default_factory=dict)


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, which) if which else None


def _attributes(pairs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        assert isinstance(pair, KeyValue)
        out[pair.key] = _value(pair.value)
    return out


class OtlpReceiver:
    """The ASGI app of the receiver; thread-safe reads of what arrived."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        if scope["path"] != "/v1/traces" or scope["method"] != "POST":
            await _answer(send, 404, b"")
            return
        if headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        if headers.get("content-type") == "application/json":
            spans = _json_spans(body)
            answer = b"{}"
        else:
            spans = _protobuf_spans(body)
            answer = ExportTraceServiceResponse().SerializeToString()
        with self.lock:
            self.headers.append(headers)
            self.spans.extend(spans)
        await _answer(send, 200, answer, headers.get("content-type", "application/x-protobuf"))

    def trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def all(self) -> list[Span]:
        with self.lock:
            return list(self.spans)


def _protobuf_spans(body: bytes) -> list[Span]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                spans.append(
                    Span(
                        name=s.name,
                        kind=KINDS.get(s.kind, str(s.kind)),
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(),
                        attributes=_attributes(s.attributes),
                        status=s.status.code,
                        resource=resource,
                    )
                )
    return spans


def _json_spans(body: bytes) -> list[Span]:
    """The spans of an OTLP/JSON export, read through the protobuf schema (json_format: unknown fields, wrong
    types or enums are errors). OTLP/JSON writes ids as hex where the protobuf JSON mapping has base64."""
    request = json.loads(body)
    for resource_spans in request.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
                assert int(span["endTimeUnixNano"]) >= int(span["startTimeUnixNano"]) > 0
    message = json_format.ParseDict(request, ExportTraceServiceRequest())
    return _protobuf_spans(message.SerializeToString())


async def _answer(send: Any, status: int, body: bytes, content_type: str = "application/x-protobuf") -> None:
    headers = [(b"content-type", content_type.encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
