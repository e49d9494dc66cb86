"""OpenTelemetry traces over OTLP/HTTP, on span records of the gateway's own (``gateway.otlp``: no SDK).

Each app owns a ``Tracing`` (its exporter, its sampler; nothing process-wide is set), built only when the
``traces`` setting is on. ``TraceRequests`` (pure ASGI, installed only then) opens a SERVER span per request, a
child of the caller's W3C ``traceparent`` when it is valid (anything else starts a trace of its own), answers
with the trace id in ``x-trace-id`` and keeps a ``RequestTrace`` in a context variable for the rest of the
request. The code on the request's path reaches it as ``ctx.trace`` (``None`` with traces off: the hooks then
cost one attribute check):

- the policy chain: one span per policy hook and per store round trip (``step``);
- the dispatcher: one GenAI client span per model call (``chat <model>``, opened at its first attempt, ended
  when the call is settled) and one span per deployment attempt inside it (``attempt``), whose context the
  OpenAI-compatible provider sends upstream (``upstream_headers``);
- the tool loop: one ``execute_tool <name>`` span per MCP call (``tool``).

Sampling is parent-based: a caller's sampled flag decides, else the trace id's ratio (``traces_sample_ratio``),
as OpenTelemetry's ``ParentBased(TraceIdRatioBased)``. Prompts, completions and tool arguments and results are
recorded only with ``traces_content``, cut at ``traces_content_max_chars``. Nothing is recorded for requests the
sampler leaves out, but their trace context still travels upstream.
"""

import contextlib
import re
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import propagate as otel_propagate
from opentelemetry import trace as otel_trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from config import Settings
from config.settings import parse_headers
from gateway.genai import answer_attributes, call_attributes, content, usage_attributes
from gateway.otlp import CLIENT, INTERNAL, SERVER, Exporter, Record, Span, encode_attributes, span_id, tail, trace_id
from gateway.tracecontext import caller_context

if TYPE_CHECKING:
    from config.deployments import Deployment
    from gateway.context import RequestContext

T = TypeVar("T")

_UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})  # probes and scrapes: noise in every trace view
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
# what a relayed Chat Completions stream says of itself (its events are passed through, not parsed)
_STREAM_FINISH = re.compile(rb'"finish_reason"\s*:\s*"([A-Za-z_]{1,40})"')
_STREAM_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')


class Tracing:
    """The app's exporter, sampler and what every request's trace shares."""

    def __init__(self, settings: Settings) -> None:
        headers = settings.traces_headers
        resource = {"service.name": settings.traces_service_name, "telemetry.sdk.language": "python"}
        self.exporter = Exporter(
            settings.traces_endpoint,
            parse_headers(headers.get_secret_value()) if headers is not None else {},
            resource,
            settings.traces_export_delay_seconds,
        )
        # parent-based, trace id ratio: a new trace is recorded when its id's low 64 bits fall under the bound
        self.sample_bound = round(settings.traces_sample_ratio * 2**64)
        self.sample_all = self.sample_bound >= 2**64
        self.content_chars = settings.traces_content_max_chars if settings.traces_content else 0
        self.request: ContextVar[RequestTrace | None] = ContextVar("gateway.request_trace", default=None)
        self.active: ContextVar[str | None] = ContextVar("gateway.active_span", default=None)  # sent upstream
        self.steps: dict[tuple[str, str], tuple[str, str, dict[str, Any], str]] = {}
        self._targets: dict[int, tuple[object, str, str, dict[str, Any], str]] = {}

    def middleware(self, app: ASGIApp) -> "TraceRequests":
        return TraceRequests(app, self)

    async def start(self) -> None:
        await self.exporter.start()

    async def shutdown(self) -> None:
        """Export what is left and stop (bounded by the exporter's timeout)."""
        await self.exporter.stop()

    def sampled(self, trace: str) -> bool:
        return self.sample_all or int(trace[16:], 16) < self.sample_bound

    def bind(self, ctx: "RequestContext") -> None:
        """Attach a new request context to its request's trace (``ctx.trace``), if the request is recorded: for
        one the sampler left out, ``ctx.trace`` stays None and the hooks cost one attribute check (its context
        still travels upstream, from the context variable)."""
        request = self.request.get()
        if request is not None and request.recording:
            request.bind(ctx)
            ctx.trace = request

    @contextlib.contextmanager
    def job(self, name: str, attributes: dict[str, Any]) -> Iterator["RequestTrace"]:
        """The trace of work the gateway runs with no request of its own (an execution in a worker): a root
        INTERNAL span ``name`` whose children are the work's spans (its model turns' steps, calls and tools),
        sampled like a new request's trace."""
        trace = trace_id()
        span = Span((trace, "", ""), name, INTERNAL, attributes) if self.sampled(trace) else None
        job = RequestTrace(self, span, (trace, span.span_id if span is not None else span_id(), ""), "JOB")
        job.finished = _Late(self.exporter)  # long work: its spans go as they end
        token = self.request.set(job)
        try:
            yield job
        except BaseException as exc:
            if span is not None:
                span.record_exception(exc)
            raise
        finally:
            self.request.reset(token)
            job.end_call()
            if span is not None:
                job.end(span)

    def current(self) -> "RequestTrace | None":
        """The trace of the request running here (the dispatcher has no request context of its own)."""
        return self.request.get()

    def upstream_headers(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        """``headers`` with the current trace context (``traceparent``, ``tracestate``), when there is one: the
        attempt's span as parent, or the server span's (a request the sampler left out)."""
        request = self.request.get()
        if request is None:
            return headers
        parent = self.active.get() or request.span_id
        carrier = {**headers, "traceparent": f"00-{request.ids[0]}-{parent}-{request.flags}"}
        if request.ids[2]:
            carrier["tracestate"] = request.ids[2]
        return carrier

    def step_attributes(self, hook: str, name: str) -> tuple[str, str, dict[str, Any], str]:
        """A policy step span's name, the JSON that ends its ``Record`` and its attributes (and their JSON), the
        same for every request: made once."""
        key = (hook, name)
        found = self.steps.get(key)
        if found is None:
            if hook == "store":
                attributes = {"gateway.store.phase": name}
            else:
                attributes = {"gateway.policy.name": name, "gateway.policy.hook": hook}
            title, encoded = f"{hook} {name}", encode_attributes(attributes)
            found = self.steps[key] = (title, tail(title, INTERNAL, encoded), attributes, encoded)
        return found

    def target_attributes(self, dep: "Deployment") -> tuple[str, str, dict[str, Any], str]:
        """An attempt span's name, the JSON that ends its ``Record`` and its attributes (and their JSON), made
        once per deployment object."""
        found = self._targets.get(id(dep))
        if found is None or found[0] is not dep:
            if len(self._targets) >= 1024:  # catalogue reloads: the old deployments go
                self._targets.clear()
            name = "POST" if dep.type == "openai" else dep.type
            attributes = _attempt_attributes(dep)
            encoded = encode_attributes(attributes)
            found = self._targets[id(dep)] = (dep, name, tail(name, CLIENT, encoded), attributes, encoded)
        return found[1:]


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
        token = self.tracing.request.set(request)

        def traced_send(message: Message) -> Awaitable[None]:  # no coroutine of its own: send's, passed on
            if message["type"] == "http.response.start":
                request.status = message["status"]
                if request.trace_id is not None:
                    extra = (b"x-trace-id", request.trace_id.encode())
                    message = {**message, "headers": [*message.get("headers", ()), extra]}
            return send(message)

        try:
            await self.app(scope, receive, traced_send)
        except BaseException as exc:
            if request.span is not None:
                request.span.record_exception(exc)
            request.status = request.status or 500
            raise
        finally:
            request.finish(scope)
            self.tracing.request.reset(token)


class RequestTrace:
    """One request's trace: its server span, the model call span in progress, the hooks' helpers."""

    __slots__ = (
        "tracing",
        "span",
        "method",
        "ids",
        "span_id",
        "flags",
        "recording",
        "trace_id",
        "status",
        "_ctx",
        "call",
        "call_span",
        "call_error",
        "finished",
    )

    def __init__(self, tracing: Tracing, span: Span | None, ids: tuple[str, str, str], method: str) -> None:
        self.tracing = tracing
        self.span = span  # None for a request the sampler left out
        self.method = method
        self.recording = span is not None
        self.ids = ids  # (trace id, server span id, trace state): what the request's spans are children of
        self.span_id = ids[1]
        self.flags = "01" if span is not None else "00"
        # the id callers see (x-trace-id, aimable.langfuse_trace_id): only of a trace that is exported
        self.trace_id = ids[0] if span is not None else None
        self.status: int | None = None
        # the request's context, weakly: it refers to this trace (``ctx.trace``), and a cycle would leave both,
        # and all the context holds, to the cyclic collector
        self._ctx: Callable[[], RequestContext | None] = _nothing
        self.call: object = None  # the ModelCall that ``call_span`` stands for
        self.call_span: Span | None = None
        self.call_error: tuple[str, str] | None = None  # the error type and message of the call's last attempt
        # the request's ended spans, handed to the exporter at once when it ends (``close``); after that, one by one
        self.finished: list[Span | Record] | _Late = []

    @classmethod
    def start(cls, tracing: Tracing, scope: Scope) -> "RequestTrace":
        caller = caller_context(scope)
        if caller is not None:  # the caller's trace, and its sampling decision
            trace, parent, sampled, state = caller
        else:
            trace, parent, state = trace_id(), "", ""
            sampled = tracing.sampled(trace)
        method = scope["method"] if scope["method"] in _METHODS else "_OTHER"
        if not sampled:
            return cls(tracing, None, (trace, span_id(), state), method)
        attributes = {"http.request.method": method, "url.path": scope["path"][:256], "url.scheme": scope["scheme"]}
        span = Span((trace, parent, state), method, SERVER, attributes)
        return cls(tracing, span, (trace, span.span_id, state), method)

    def bind(self, ctx: "RequestContext") -> None:
        self._ctx = weakref.ref(ctx)
        if self.span is not None:
            principal, attributes = ctx.principal, self.span.attributes
            attributes["gateway.route"] = ctx.route
            attributes["gateway.request.id"] = ctx.request_id
            attributes["gateway.tenant.id"] = ctx.tenant_id
            attributes["gateway.space.id"] = ctx.space_id
            attributes["gateway.api_key.name"] = principal.key.name
            attributes["user.id"] = principal.id

    def finish(self, scope: Scope) -> None:
        self.end_call()
        span, status = self.span, self.status or 500
        if span is None:
            return
        attributes = span.attributes
        attributes["http.response.status_code"] = status
        path = getattr(scope.get("route"), "path", None)
        if isinstance(path, str):
            span.name = f"{self.method} {path}"
            attributes["http.route"] = path
        ctx = self._ctx()
        if ctx is not None:
            attributes["gateway.outcome"] = ctx.outcome
            if ctx.model is not None:
                attributes["gateway.model"] = ctx.model.alias
        if status >= 500:
            span.fail("", str(status))
        self.end(span)
        self.close()

    def end(self, span: Span) -> None:
        span.end = time.time_ns()
        self.finished.append(span)

    def close(self) -> None:
        """The request is over: its ended spans go to the exporter in one go; spans of work that outlives it (a
        background response) go one by one as they end."""
        finished = self.finished
        if isinstance(finished, list):
            self.finished = _Late(self.tracing.exporter)
            self.tracing.exporter.add_all(finished)

    async def step(self, hook: str, name: str, work: Awaitable[T]) -> T:
        """A policy's hook (``before budget``), or the chain's store round trip of a phase (``store before``),
        as a span of its own (a ``Record``, but for one that raised)."""
        tracing = self.tracing
        title, end_json, attributes, encoded = tracing.steps.get((hook, name)) or tracing.step_attributes(hook, name)
        start = time.time_ns()
        try:
            result = await work
        except BaseException as exc:
            span = Span(self.ids, title, INTERNAL, attributes, encoded)
            span.start = start
            span.record_exception(exc)
            span.fail(str(exc))
            self.end(span)
            raise
        self.finished.append((self.ids, "", end_json, start, time.time_ns()))
        return result

    async def attempt(self, dep: "Deployment", work: Awaitable[T]) -> T:
        """One deployment attempt of the model call in progress (of a recorded request), inside that call's
        span (opened at its first attempt); its context is the one sent upstream."""
        tracing = self.tracing
        trace = (self.ids[0], self._call_span(dep).span_id, self.ids[2])
        own_id, start = span_id(), time.time_ns()
        token = tracing.active.set(own_id)
        try:
            result = await work
        except BaseException as exc:
            name, _, attributes, encoded = tracing.target_attributes(dep)
            span = Span(trace, name, CLIENT, attributes, encoded, own_id)
            span.start = start
            kind, message = str(getattr(exc, "code", None) or type(exc).__name__)[:100], str(exc)[:300]
            span.fail(message, kind)
            status = getattr(exc, "status_code", None)
            if isinstance(status, int):
                span.own()["http.response.status_code"] = status
            self.call_error = (kind, message)
            self.end(span)
            raise
        finally:
            tracing.active.reset(token)
        # the attempt answered: a Record (its name and attributes the same every time)
        self.finished.append((trace, own_id, tracing.target_attributes(dep)[1], start, time.time_ns()))
        self.call_error = None  # the call's status is its last attempt's
        return result

    def _call_span(self, dep: "Deployment") -> Span:
        ctx = self._ctx()
        call = ctx.call if ctx is not None else None
        if self.call_span is None or call is not self.call:
            self.end_call()
            alias = ctx.model.alias if ctx is not None and ctx.model is not None else dep.model
            attributes = call_attributes(alias, call, self.tracing.content_chars)
            self.call_span = Span(self.ids, f"chat {alias}", CLIENT, attributes)
            self.call, self.call_error = call, None
        provider = dep.type if dep.type != "litellm" else dep.model.partition("/")[0]
        attributes = self.call_span.attributes
        attributes["gen_ai.provider.name"] = attributes["gen_ai.system"] = provider
        return self.call_span

    def answered(self, answer: Mapping[str, Any]) -> None:
        """The model call in progress answered (a Chat Completion or a Response): its model, finish reasons, id
        and (with ``traces_content``) output on its span."""
        if self.call_span is not None:
            attributes = answer_attributes(answer, self.tracing.content_chars)
            output = attributes.get("gen_ai.output.messages")
            ctx = self._ctx()
            if output is not None and ctx is not None:  # masked as what the gateway keeps of the answer
                for redact in ctx.redactors:
                    output = redact(output)
                attributes["gen_ai.output.messages"] = output
            self.call_span.attributes.update(attributes)

    def watch_stream(self, send: Send) -> Send:
        """``send`` of a relayed Chat Completions stream, noting its model and finish reasons for the call's span."""
        if self.span is None:
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
                    self.call_span.attributes["gen_ai.response.finish_reasons"] = tuple(reasons)
                    if model:
                        self.call_span.attributes["gen_ai.response.model"] = model[0]
            await send(message)

        return watching

    def end_call(self) -> None:
        """The model call in progress is settled: its usage on its span, which ends."""
        span = self.call_span
        if span is None:
            return
        self.call_span = None
        usage = getattr(self.call, "usage", None)
        if usage is not None:
            span.attributes.update(usage_attributes(usage))
        if self.call_error is not None:
            kind, message = self.call_error
            span.fail(message, kind)
        self.end(span)

    async def tool(self, item: dict[str, Any], work: Awaitable[None]) -> None:
        """One MCP call of the tool loop (an ``mcp_call`` item, updated by ``work`` with its output or error).
        Its context is current for OpenTelemetry's API while it runs: the MCP SDK sends it on in ``_meta``."""
        if self.span is None:
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
        span = Span(self.ids, f"execute_tool {name}", INTERNAL, attributes)
        token = otel_context.attach(otel_trace.set_span_in_context(_api_span(span)))
        try:
            await work
            if item.get("error"):
                span.fail(str(item["error"]), "tool_error")
            elif chars:
                attributes["gen_ai.tool.call.result"] = content(item.get("output") or "", chars)
        except BaseException as exc:
            span.record_exception(exc)
            span.fail(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            otel_context.detach(token)
            self.end(span)


def _nothing() -> None:
    return None


class _Late:
    """A closed request's ``finished``: what still ends goes to the exporter at once."""

    __slots__ = ("append",)

    def __init__(self, exporter: Exporter) -> None:
        self.append = exporter.add


def inject_context(meta: dict[str, Any]) -> None:
    """The current OpenTelemetry context (a tool call's span while ``RequestTrace.tool`` runs it) into a JSON-RPC
    request's ``_meta`` as W3C ``traceparent``/``tracestate``: what the MCP SDK's client sends."""
    otel_propagate.inject(meta)


def _api_span(span: Span) -> otel_trace.Span:
    """A span of ours as OpenTelemetry's API sees one (the context of a sampled span, nothing recorded)."""
    context = otel_trace.SpanContext(
        int(span.trace_id, 16), int(span.span_id, 16), False, otel_trace.TraceFlags(otel_trace.TraceFlags.SAMPLED)
    )
    return otel_trace.NonRecordingSpan(context)


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
