"""OpenTelemetry traces over OTLP/HTTP: the one module that speaks to OpenTelemetry (its SDK imported only when
traces are on).

Each app owns a ``Tracing`` (its own ``TracerProvider``, exporter and batch processor; nothing global is set),
built only when the ``traces`` setting is on. ``TraceRequests`` (pure ASGI, installed only then) opens a SERVER
span per request, a child of the caller's W3C ``traceparent`` when there is one, answers with the trace id in
``x-trace-id`` and keeps a ``RequestTrace`` in the OpenTelemetry context for the rest of the request. The code on
the request's path reaches it as ``ctx.trace`` (``None`` with traces off: the hooks then cost one attribute check):

- the policy chain: one span per policy hook and per store round trip (``step``);
- the dispatcher: one GenAI client span per model call (``chat <model>``, opened at its first attempt, ended
  when the call is settled) and one span per deployment attempt inside it (``attempt``), whose context the
  OpenAI-compatible provider sends upstream (``upstream_headers``);
- the tool loop: one ``execute_tool <name>`` span per MCP call (``tool``).

Prompts, completions and tool arguments and results are recorded only with ``traces_content``, cut at
``traces_content_max_chars``. Nothing is recorded for requests the sampler leaves out, but their trace context
still travels upstream.
"""

import re
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from config import Settings
from config.settings import parse_headers
from gateway.genai import answer_attributes, call_attributes, content, usage_attributes

if TYPE_CHECKING:
    from config.deployments import Deployment
    from gateway.context import RequestContext

T = TypeVar("T")

_REQUEST = otel_context.create_key("gateway.request_trace")
_UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})  # probes and scrapes: noise in every trace view
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_PROPAGATED = (b"traceparent", b"tracestate")
# what a relayed Chat Completions stream says of itself (its events are passed through, not parsed)
_STREAM_FINISH = re.compile(rb'"finish_reason"\s*:\s*"([A-Za-z_]{1,40})"')
_STREAM_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')


class Tracing:
    """The app's tracer provider and what every request's trace shares."""

    def __init__(self, settings: Settings) -> None:
        # the SDK and its exporter (protobuf, requests: ~30 ms of imports) only for an app that traces
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        headers = settings.traces_headers
        exporter = OTLPSpanExporter(
            endpoint=settings.traces_endpoint,
            headers=parse_headers(headers.get_secret_value()) if headers is not None else None,
            timeout=5,  # a collector that is away delays nothing but the last export at shutdown
        )
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": settings.traces_service_name}),
            sampler=ParentBased(TraceIdRatioBased(settings.traces_sample_ratio)),
        )
        delay = int(settings.traces_export_delay_seconds * 1000)
        self.provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=delay))
        self.tracer = self.provider.get_tracer("gateway")
        self.propagator = TraceContextTextMapPropagator()
        self.content_chars = settings.traces_content_max_chars if settings.traces_content else 0

    def middleware(self, app: ASGIApp) -> "TraceRequests":
        return TraceRequests(app, self)

    def bind(self, ctx: "RequestContext") -> None:
        """Attach a new request context to its request's trace (``ctx.trace``), if the request has one."""
        request = self.current()
        if request is not None:
            request.bind(ctx)
            ctx.trace = request

    def current(self) -> "RequestTrace | None":
        """The trace of the request running here (the dispatcher has no request context of its own)."""
        request = otel_context.get_value(_REQUEST)
        return request if isinstance(request, RequestTrace) else None

    def upstream_headers(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        """``headers`` with the current trace context (``traceparent``, ``tracestate``), when there is one."""
        carrier = dict(headers)
        self.propagator.inject(carrier)
        return carrier

    def shutdown(self) -> None:
        """Export what is left and stop (blocking: run it in a thread)."""
        self.provider.shutdown()


class TraceRequests:
    """Pure ASGI: the SERVER span of each HTTP request (but probes), ``x-trace-id`` on its answer."""

    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _UNTRACED:
            await self.app(scope, receive, send)
            return
        request = RequestTrace.start(self.tracing, scope)
        token = otel_context.attach(request.context)

        async def traced_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                request.status = message["status"]
                if request.trace_id is not None:
                    extra = (b"x-trace-id", request.trace_id.encode())
                    message = {**message, "headers": [*message.get("headers", ()), extra]}
            await send(message)

        try:
            await self.app(scope, receive, traced_send)
        except BaseException as exc:
            request.span.record_exception(exc)
            request.status = request.status or 500
            raise
        finally:
            request.finish(scope)
            otel_context.detach(token)


class RequestTrace:
    """One request's trace: its server span, the model call span in progress, the hooks' helpers."""

    __slots__ = (
        "tracing",
        "span",
        "method",
        "context",
        "recording",
        "trace_id",
        "status",
        "ctx",
        "call",
        "call_span",
        "call_error",
    )

    def __init__(self, tracing: Tracing, span: Span, method: str, parent: otel_context.Context) -> None:
        self.tracing = tracing
        self.span = span
        self.method = method
        self.recording = span.is_recording()
        # the id callers see (x-trace-id, aimable.langfuse_trace_id): only of a trace that is exported
        self.trace_id = format(span.get_span_context().trace_id, "032x") if self.recording else None
        self.context = otel_context.set_value(_REQUEST, self, trace.set_span_in_context(span, parent))
        self.status: int | None = None
        self.ctx: RequestContext | None = None
        self.call: object = None  # the ModelCall that ``call_span`` stands for
        self.call_span: Span | None = None
        self.call_error: tuple[str, str] | None = None  # the error type and message of the call's last attempt

    @classmethod
    def start(cls, tracing: Tracing, scope: Scope) -> "RequestTrace":
        carrier = {k.decode("latin-1"): v.decode("latin-1")[:512] for k, v in scope["headers"] if k in _PROPAGATED}
        parent = tracing.propagator.extract(carrier, context=otel_context.Context())
        method = scope["method"] if scope["method"] in _METHODS else "_OTHER"
        attributes = {"http.request.method": method, "url.path": scope["path"][:256], "url.scheme": scope["scheme"]}
        span = tracing.tracer.start_span(method, parent, SpanKind.SERVER, attributes)
        return cls(tracing, span, method, parent)

    def bind(self, ctx: "RequestContext") -> None:
        self.ctx = ctx
        if self.recording:
            principal = ctx.principal
            self.span.set_attributes(
                {
                    "gateway.route": ctx.route,
                    "gateway.request.id": ctx.request_id,
                    "gateway.tenant.id": ctx.tenant_id,
                    "gateway.space.id": ctx.space_id,
                    "gateway.api_key.name": principal.key.name,
                    "user.id": principal.id,
                }
            )

    def finish(self, scope: Scope) -> None:
        self.end_call()
        span, status = self.span, self.status or 500
        if self.recording:
            attributes: dict[str, Any] = {"http.response.status_code": status}
            path = getattr(scope.get("route"), "path", None)
            if isinstance(path, str):
                span.update_name(f"{self.method} {path}")
                attributes["http.route"] = path
            ctx = self.ctx
            if ctx is not None:
                attributes["gateway.outcome"] = ctx.outcome
                if ctx.model is not None:
                    attributes["gateway.model"] = ctx.model.alias
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
                attributes["error.type"] = str(status)
            span.set_attributes(attributes)
        span.end()

    async def step(self, hook: str, name: str, work: Awaitable[T]) -> T:
        """A policy's hook (``before budget``), or the chain's store round trip of a phase (``store before``),
        as a span of its own."""
        if not self.recording:
            return await work
        if hook == "store":
            attributes = {"gateway.store.phase": name}
        else:
            attributes = {"gateway.policy.name": name, "gateway.policy.hook": hook}
        # not made current (nothing runs inside a hook's span): a span without a context switch is cheaper
        span = self.tracing.tracer.start_span(f"{hook} {name}", self.context, attributes=attributes)
        try:
            return await work
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, str(exc)[:300]))
            raise
        finally:
            span.end()

    async def attempt(self, dep: "Deployment", work: Awaitable[T]) -> T:
        """One deployment attempt of the model call in progress, inside that call's span (opened at its first
        attempt); its context is the one sent upstream. A request left out by the sampler gets no span of it:
        its server span's context (current) travels instead."""
        if not self.recording:
            return await work
        call_span = self._call_span(dep)
        span = self.tracing.tracer.start_span(
            "POST" if dep.type == "openai" else dep.type,
            trace.set_span_in_context(call_span),
            SpanKind.CLIENT,
            _attempt_attributes(dep),
        )
        with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
            try:
                result = await work
            except BaseException as exc:
                kind, message = str(getattr(exc, "code", None) or type(exc).__name__)[:100], str(exc)[:300]
                span.set_status(Status(StatusCode.ERROR, message))
                span.set_attribute("error.type", kind)
                status = getattr(exc, "status_code", None)
                if isinstance(status, int):
                    span.set_attribute("http.response.status_code", status)
                self.call_error = (kind, message)
                raise
            self.call_error = None  # the call's status is its last attempt's
            return result

    def _call_span(self, dep: "Deployment") -> Span:
        ctx = self.ctx
        call = ctx.call if ctx is not None else None
        if self.call_span is None or call is not self.call:
            self.end_call()
            alias = ctx.model.alias if ctx is not None and ctx.model is not None else dep.model
            attributes = call_attributes(alias, call, self.tracing.content_chars)
            self.call_span = self.tracing.tracer.start_span(f"chat {alias}", self.context, SpanKind.CLIENT, attributes)
            self.call, self.call_error = call, None
        provider = dep.type if dep.type != "litellm" else dep.model.partition("/")[0]
        self.call_span.set_attributes({"gen_ai.provider.name": provider, "gen_ai.system": provider})
        return self.call_span

    def answered(self, answer: Mapping[str, Any]) -> None:
        """The model call in progress answered (a Chat Completion or a Response): its model, finish reasons, id
        and (with ``traces_content``) output on its span."""
        if self.call_span is not None and self.recording:
            attributes = answer_attributes(answer, self.tracing.content_chars)
            output = attributes.get("gen_ai.output.messages")
            if output is not None and self.ctx is not None:  # masked as what the gateway keeps of the answer
                for redact in self.ctx.redactors:
                    output = redact(output)
                attributes["gen_ai.output.messages"] = output
            self.call_span.set_attributes(attributes)

    def watch_stream(self, send: Send) -> Send:
        """``send`` of a relayed Chat Completions stream, noting its model and finish reasons for the call's span."""
        if not self.recording:
            return send
        reasons: list[str] = []
        model: list[str] = []

        async def watching(message: Message) -> None:
            if message["type"] == "http.response.body":
                body = message.get("body", b"")
                if not model and (found := _STREAM_MODEL.search(body)) is not None:
                    model.append(found.group(1).decode("utf-8", "replace"))
                reasons.extend(r.decode() for r in _STREAM_FINISH.findall(body))
                if not message.get("more_body", False) and self.call_span is not None:
                    self.call_span.set_attribute("gen_ai.response.finish_reasons", reasons)
                    if model:
                        self.call_span.set_attribute("gen_ai.response.model", model[0])
            await send(message)

        return watching

    def end_call(self) -> None:
        """The model call in progress is settled: its usage on its span, which ends."""
        span = self.call_span
        if span is None:
            return
        self.call_span = None
        usage = getattr(self.call, "usage", None)
        if usage is not None and self.recording:
            span.set_attributes(usage_attributes(usage))
        if self.call_error is not None:
            kind, message = self.call_error
            span.set_status(Status(StatusCode.ERROR, message))
            span.set_attribute("error.type", kind)
        span.end()

    async def tool(self, item: dict[str, Any], work: Awaitable[None]) -> None:
        """One MCP call of the tool loop (an ``mcp_call`` item, updated by ``work`` with its output or error)."""
        if not self.recording:
            await work
            return
        name = str(item.get("name", ""))[:100]
        attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name,
            "gen_ai.tool.type": "extension",
            "gen_ai.tool.call.id": str(item.get("id", ""))[:100],
            "gateway.mcp.server_label": str(item.get("server_label", ""))[:100],
        }
        chars = self.tracing.content_chars
        if chars:
            attributes["gen_ai.tool.call.arguments"] = content(item.get("arguments") or "", chars)
        with self.tracing.tracer.start_as_current_span(f"execute_tool {name}", attributes=attributes) as span:
            await work
            if item.get("error"):
                span.set_status(Status(StatusCode.ERROR, str(item["error"])[:300]))
                span.set_attribute("error.type", "tool_error")
            elif chars:
                span.set_attribute("gen_ai.tool.call.result", content(item.get("output") or "", chars))


def _attempt_attributes(dep: "Deployment") -> dict[str, Any]:
    attributes: dict[str, Any] = {"gateway.deployment.type": dep.type, "gateway.deployment.model": dep.model}
    base_url = getattr(dep, "base_url", None)
    if isinstance(base_url, str):
        parts = urlsplit(base_url)
        attributes["http.request.method"] = "POST"
        attributes["server.address"] = parts.hostname or ""
        if parts.port is not None:
            attributes["server.port"] = parts.port
    return attributes
