"""OpenTelemetry traces over OTLP/HTTP, on span records of the gateway's own (``gateway.otlp``: no SDK).

Each app owns a ``Tracing`` (its exporter, its sampler; nothing process-wide is set), built only when the
``traces`` setting is on. ``TraceRequests`` (pure ASGI, installed only then) opens a SERVER span per request, a
child of the caller's W3C ``traceparent`` when it is valid (anything else starts a trace of its own), answers
with the trace id in ``x-trace-id`` and keeps a ``RequestTrace`` in a context variable for the rest of the
request. The code on the request's path reaches it as ``ctx.trace`` (``None`` with traces off: the hooks then
cost one attribute check):

- the policy chain: one span per policy hook that runs (a policy's own, not the base class's no-ops) and per
  store round trip on a remote store (``step``);
- the dispatcher: one GenAI client span per model call (``chat <model>``, opened at its first attempt, ended
  when the call is settled), which stands for its first attempt; an attempt that fails, and every later one,
  is a span of its own inside it (``attempt``). The context of the call, or of the later attempt, is what the
  OpenAI-compatible provider sends upstream (``upstream_headers``);
- the tool loop: one ``execute_tool <name>`` span per MCP call (``tool``).

Sampling is parent-based: a caller's sampled flag decides, else the trace id's ratio (``traces_sample_ratio``),
as OpenTelemetry's ``ParentBased(TraceIdRatioBased)``. Prompts, completions and tool arguments and results are
recorded only with ``traces_content``, cut at ``traces_content_max_chars``. Nothing is recorded for requests the
sampler leaves out, but their trace context still travels upstream.
"""

import contextlib
import weakref
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from opentelemetry import propagate as otel_propagate
from starlette.types import ASGIApp, Receive, Scope, Send

from config import Settings
from config.settings import parse_headers
from gateway.otlp import (
    CLIENT,
    INTERNAL,
    SERVER,
    Exporter,
    Span,
    encode_attributes,
    opening,
    span_id,
    tail,
    trace_id,
)
from gateway.request_trace import CallShape, RequestTrace, ServerShape, call_span_attributes, server_span

if TYPE_CHECKING:
    from config.deployments import Deployment
    from gateway.context import RequestContext

T = TypeVar("T")

_UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})  # probes and scrapes: noise in every trace view


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
        self.servers: dict[ServerShape, str] = {}
        self._calls: dict[tuple[str, int], tuple[object, str, dict[str, Any], int]] = {}
        self._bases = 0
        self.calls: dict[CallShape, str] = {}

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
            request.ctx = weakref.ref(ctx)
            ctx.trace = request

    @contextlib.contextmanager
    def job(self, name: str, attributes: dict[str, Any]) -> Iterator["RequestTrace"]:
        """The trace of work the gateway runs with no request of its own (an execution in a worker): a root
        INTERNAL span ``name`` whose children are the work's spans (its model turns' steps, calls and tools),
        sampled like a new request's trace."""
        trace = trace_id()
        sampled = self.sampled(trace)
        recording = sampled and self.exporter.room()
        span = Span((trace, "", ""), name, INTERNAL, attributes) if recording else None
        ids = (trace, span.span_id if span is not None else span_id(), "")
        job = RequestTrace(self, span, ids, sampled, recording)  # its spans go to the export queue as they end
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
        call = request.call
        parent = self.active.get() or (call.span_id if call is not None else request.ids[1])
        carrier = {**headers, "traceparent": f"00-{request.ids[0]}-{parent}-{request.flags}"}
        if request.ids[2]:
            carrier["tracestate"] = request.ids[2]
        return carrier

    def step_attributes(self, hook: str, name: str) -> tuple[str, str, dict[str, Any], str]:
        """A policy step span's name, the JSON that ends it (``tail``) and its attributes (and their JSON), the
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

    def server_block(self, shape: "ServerShape", route: object) -> str:
        """The JSON of a successful request's server span but its ids, times and request id (and the closing
        of its attributes), the same for every request of that shape: made once (up to 4096 shapes)."""
        if len(self.servers) >= 4096:  # paths with ids in them (a response's): the old ones go
            self.servers.clear()
        name, attributes = server_span(shape, route)
        block = self.servers[shape] = opening(name, SERVER, encode_attributes(attributes))
        return block

    def call_base(self, alias: str, dep: "Deployment") -> tuple[str, dict[str, Any], int]:
        """A model call span's name, the attributes every call of ``alias`` on ``dep`` has (the operation, the
        model, the deployment, the provider) and a number of their own (``call_block``'s key): made once per model
        and deployment object."""
        key = (alias, id(dep))
        found = self._calls.get(key)
        if found is None or found[0] is not dep:
            if len(self._calls) >= 1024:  # catalogue reloads: the old deployments go
                self._calls.clear()
            provider = dep.type if dep.type != "litellm" else dep.model.partition("/")[0]
            attributes = {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": alias,
                **self.target_attributes(dep)[2],
                "gen_ai.provider.name": provider,
                "gen_ai.system": provider,
            }
            self._bases += 1  # never reused: a block made for another model and deployment is never found
            found = self._calls[key] = (dep, f"chat {alias}", attributes, self._bases)
        return found[1], found[2], found[3]

    def call_block(self, shape: "CallShape", name: str, base: dict[str, Any]) -> str:
        """The JSON of a successful model call's span but its ids, times and volatile attributes (and the closing
        of its attributes), the same for every call of that shape: made once (up to 4096 shapes)."""
        if len(self.calls) >= 4096:
            self.calls.clear()
        _, extra, model, reasons = shape
        encoded = encode_attributes(call_span_attributes(base, extra, model, reasons))
        block = self.calls[shape] = opening(name, CLIENT, encoded)
        return block

    def target_attributes(self, dep: "Deployment") -> tuple[str, str, dict[str, Any], str]:
        """An attempt span's name, the JSON that ends it (``tail``) and its attributes (and their JSON), made
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
        tracing = self.tracing
        request = RequestTrace.start(tracing, scope)
        token = tracing.request.set(request)
        request.send = send
        try:
            await self.app(scope, receive, request.traced_send)
        except BaseException as exc:
            if request.recording:
                request.server().record_exception(exc)
            request.status = request.status or 500
            raise
        finally:
            request.finish(scope)
            tracing.request.reset(token)


def inject_context(meta: dict[str, Any]) -> None:
    """The current OpenTelemetry context (a tool call's span while ``RequestTrace.tool`` runs it) into a JSON-RPC
    request's ``_meta`` as W3C ``traceparent``/``tracestate``: what the MCP SDK's client sends."""
    otel_propagate.inject(meta)


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
