"""One request's trace (``RequestTrace``): its server span, the model call span in progress and the hooks that
the policy chain, the dispatcher and the tool loop call (``ctx.trace``); made by ``gateway.tracing``.

A successful request's server span is never an object: its JSON is made at its end from what the request was
(route, space, key, status, outcome), which is most often what another request was already (``Tracing.server_block``
finds it whole). Only what differs from one span to the next (ids, times, the request id, token counts, content) is
written each time.
"""

import re
import time
from collections.abc import Awaitable, Callable, Mapping
from operator import attrgetter
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from starlette.types import Message, Scope, Send

from gateway.genai import answer_model, answer_output, call_attributes, content, usage_attributes
from gateway.otlp import (
    CLIENT,
    INTERNAL,
    SERVER,
    Span,
    encode_attributes,
    head,
    json_string,
    record,
    span_id,
    string_pair,
    trace_id,
)
from gateway.tracecontext import caller_context

if TYPE_CHECKING:
    from config.deployments import Deployment
    from gateway.context import RequestContext, Usage
    from gateway.tracing import Tracing

T = TypeVar("T")

_REQUEST_ID = '{"key":"gateway.request.id","value":{"stringValue":'  # and the id, as JSON, and two braces
_RESPONSE_ID = ',{"key":"gen_ai.response.id","value":{"stringValue":'
# what the server span says of who asked, and how it ended: read from the request's context in one call
_WHO = attrgetter("route", "tenant_id", "space_id", "principal.key.name", "principal.id", "outcome")
_WHO_KEYS = (
    "gateway.route",
    "gateway.tenant.id",
    "gateway.space.id",
    "gateway.api_key.name",
    "user.id",
    "gateway.outcome",
)
_CONTENT = ("gen_ai.input.messages", "gen_ai.system_instructions")  # a call's input, when content is recorded
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
# what a relayed Chat Completions stream says of itself (its events are passed through, not parsed)
_STREAM_FINISH = re.compile(rb'"finish_reason"\s*:\s*"([A-Za-z_]{1,40})"')
_STREAM_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')


class RequestTrace:
    """One request's trace: its server span, the model call span in progress, the hooks' helpers.

    The server span of a request that succeeds is never an object: its JSON is made at the end from what the
    request was (route, space, key, status, outcome), which is most often what another request was already, and
    found whole (``Tracing.server_block``); a request that fails, or records an exception, gets its ``Span``."""

    __slots__ = (
        "tracing",
        "span",
        "ids",
        "parent",
        "flags",
        "recording",
        "trace_id",
        "status",
        "begun",
        "ctx",
        "head",
        "call",
        "finished",
        "send",
    )
    send: Send  # the request's own ASGI send (set by ``TraceRequests``; ``traced_send`` wraps it)

    def __init__(
        self,
        tracing: "Tracing",
        span: Span | None,
        ids: tuple[str, str, str],
        sampled: bool,
        recording: bool,
        parent: str = "",
    ) -> None:
        self.tracing = tracing
        self.span = span  # a job's root span, a failed request's server span; else None
        self.ids = ids  # (trace id, server span id, trace state): what the request's spans are children of
        self.parent = parent  # the caller's span, of which the server span is a child
        self.flags = "01" if sampled else "00"  # what travels upstream
        # False for a request the sampler left out, or that found the export queue full (``Exporter.room``)
        self.recording = recording
        # the id callers see (x-trace-id, aimable.langfuse_trace_id): only of a trace that is exported
        self.trace_id = ids[0] if recording else None
        self.status: int | None = None
        self.begun = time.time_ns()
        # the request's context, weakly (``Tracing.bind``): it refers to this trace (``ctx.trace``), and a cycle
        # would leave both, and all the context holds, to the cyclic collector
        self.ctx: Callable[[], RequestContext | None] = _nothing
        self.call: _Call | None = None  # the model call in progress
        if recording:
            # the JSON that opens every span that is a child of the server span (its trace, its parent, the state)
            self.head = head(ids[0], ids[1], ids[2])
            # where the request's spans go as they end, as JSON: the export queue itself
            self.finished = tracing.exporter.encoded
        else:
            self.head, self.finished = "", []

    @classmethod
    def start(cls, tracing: "Tracing", scope: Scope) -> "RequestTrace":
        caller = caller_context(scope)
        if caller is None:
            trace, parent, state = trace_id(), "", ""
            sampled = tracing.sampled(trace)
        else:  # the caller's trace, and its sampling decision
            trace, parent, sampled, state = caller
        return cls(tracing, None, (trace, span_id(), state), sampled, sampled and tracing.exporter.room(), parent)

    def traced_send(self, message: Message) -> Awaitable[None]:
        """The ASGI ``send`` of a traced request (``TraceRequests``, which sets ``send``): notes the answer's status
        and adds ``x-trace-id``. No coroutine of its own: ``send``'s, passed on."""
        if self.status is None and message["type"] == "http.response.start":
            self.status = message["status"]
            if self.trace_id is not None:
                extra = (b"x-trace-id", self.trace_id.encode())
                message = {**message, "headers": [*message.get("headers", ()), extra]}
        return self.send(message)

    def server(self) -> Span:
        """The server span as an object (its attributes are set when the request ends)."""
        if self.span is None:
            self.span = Span((self.ids[0], self.parent, self.ids[2]), "", SERVER, {}, own_id=self.ids[1])
            self.span.start = self.begun
        return self.span

    def finish(self, scope: Scope) -> None:
        if self.call is not None:
            self.end_call()
        if not self.recording:
            return
        status = self.status or 500
        ctx = self.ctx()
        who: tuple[str, str, str, str, str, str] | None
        request_id: str | None
        if ctx is not None:
            model = ctx.model
            who, request_id, alias = _WHO(ctx), ctx.request_id, model.alias if model is not None else None
        else:
            who = request_id = alias = None
        # the route by its object's id (one of the app's, found by the router, as long-lived as the app), not its
        # path: the same for every request of it
        route = scope.get("route")
        shape = (scope["method"], id(route), scope["path"][:256], scope["scheme"], who, status, alias)
        if self.span is None and status < 500:  # the common case: text, from the shape's JSON
            block = self.tracing.servers.get(shape) or self.tracing.server_block(shape, route)
            end = f"{block},{_REQUEST_ID}{json_string(request_id)}}}}}]}}" if request_id else f"{block}]}}"
            opened = head(self.ids[0], self.parent, self.ids[2])
            self.finished.append(record(opened, self.ids[1], self.begun, time.time_ns(), end))
            return
        span = self.server()
        span.name, span.attributes = server_span(shape, route)
        if request_id:
            span.add_extra(string_pair("gateway.request.id", request_id))
        if status >= 500:
            span.fail("", str(status))
        self.end(span)

    def end(self, span: Span) -> None:
        """``span`` ends now: its JSON joins the request's (never the request's failure when it cannot be made)."""
        span.end = time.time_ns()
        try:
            self.finished.append(self.tracing.exporter.encoder.span(span))
        except (ValueError, TypeError) as exc:
            self.tracing.exporter.lost(exc)

    async def step(self, hook: str, name: str, work: Awaitable[T]) -> T:
        """A policy's hook (``before budget``), or the chain's store round trip of a phase (``store before``),
        as a span of its own (its JSON made at once, but for one that raised: a ``Span``)."""
        key, start = (hook, name), time.time_ns()
        try:
            result = await work
        except BaseException as exc:
            title, _, attributes, encoded = self.tracing.step_attributes(hook, name)
            span = Span(self.ids, title, INTERNAL, attributes, encoded)
            span.start = start
            span.record_exception(exc)
            span.fail(str(exc))
            self.end(span)
            raise
        end_json = (self.tracing.steps.get(key) or self.tracing.step_attributes(hook, name))[1]
        self.finished.append(record(self.head, span_id(), start, time.time_ns(), end_json))
        return result

    async def attempt(self, dep: "Deployment", work: Awaitable[T]) -> T:
        """One deployment attempt of the model call in progress (of a recorded request). The call's span (opened
        at its first attempt) stands for its first attempt, whose upstream gets the call's context; an attempt
        that fails, and every later one (a retry, a fallback), is a span of its own inside the call's, whose
        context is the one sent upstream."""
        call = self._call(dep)
        call.attempts += 1
        if call.attempts == 1:
            try:
                return await work
            except BaseException as exc:
                self._attempt_failed(dep, call, "", call.start, exc)
                raise
        tracing, own_id, start = self.tracing, span_id(), time.time_ns()
        token = tracing.active.set(own_id)
        try:
            result = await work
        except BaseException as exc:
            self._attempt_failed(dep, call, own_id, start, exc)
            raise
        finally:
            tracing.active.reset(token)
        # a later attempt that answered: its name and attributes are the same every time
        opened = head(self.ids[0], call.span_id, self.ids[2])
        self.finished.append(record(opened, own_id, start, time.time_ns(), tracing.target_attributes(dep)[1]))
        call.error = None  # the call's status is its last attempt's
        return result

    def _attempt_failed(self, dep: "Deployment", call: "_Call", own_id: str, start: int, exc: BaseException) -> None:
        name, _, attributes, encoded = self.tracing.target_attributes(dep)
        span = Span((self.ids[0], call.span_id, self.ids[2]), name, CLIENT, attributes, encoded, own_id)
        span.start = start
        kind, message = str(getattr(exc, "code", None) or type(exc).__name__)[:100], str(exc)[:300]
        span.fail(message, kind)
        status = getattr(exc, "status_code", None)
        if isinstance(status, int):
            span.own()["http.response.status_code"] = status
        call.error = (kind, message)
        self.end(span)

    def _call(self, dep: "Deployment") -> "_Call":
        """The model call in progress (made at its first attempt, ``ctx.call`` telling one call from the next)."""
        ctx = self.ctx()
        model_call = ctx.call if ctx is not None else None
        call = self.call
        if call is None or model_call is not call.ref:
            if call is not None:
                self.end_call()
            alias = ctx.model.alias if ctx is not None and ctx.model is not None else dep.model
            call = self.call = _Call(model_call, alias, dep, time.time_ns())
            extra = call_attributes(model_call, self.tracing.content_chars)
            if extra:
                content_attributes = {k: extra.pop(k) for k in _CONTENT if k in extra}
                if content_attributes:  # the input is seen once: with the span's volatile attributes
                    call.volatile = f",{encode_attributes(content_attributes)}"
                call.extra = tuple(extra.items()) or None
        elif dep is not call.dep:  # a fallback: the span names the deployment of the call's last attempt
            call.dep = dep
        return call

    def answered(self, answer: Mapping[str, Any]) -> None:
        """The model call in progress answered (a Chat Completion or a Response): its model, finish reasons, id
        and (with ``traces_content``) output on its span."""
        call = self.call
        if call is not None:
            call.model, call.reasons = answer_model(answer)
            response_id = answer.get("id")
            if isinstance(response_id, str):
                call.response_id = response_id[:200]
            chars = self.tracing.content_chars
            if chars:
                output, ctx = answer_output(answer, chars), self.ctx()
                if output is not None and ctx is not None:  # masked as what the gateway keeps of the answer
                    for redact in ctx.redactors:
                        output = redact(output)
                    call.volatile += f",{string_pair('gen_ai.output.messages', output)}"

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
                if not message.get("more_body", False) and self.call is not None:
                    self.call.reasons = tuple(reasons)
                    if model:
                        self.call.model = model[0]
            await send(message)

        return watching

    def end_call(self) -> None:
        """The model call in progress is settled: its usage on its span, which ends. The span of a call that
        succeeded is written from its shape's JSON (``Tracing.call_block``); a failed one's is a ``Span``."""
        call = self.call
        if call is None:
            return
        self.call = None
        usage = getattr(call.ref, "usage", None)
        volatile = call.volatile
        if call.response_id is not None:
            volatile = f"{volatile}{_RESPONSE_ID}{json_string(call.response_id)}}}}}"
        if usage is not None:
            volatile = f"{volatile},{_usage_json(usage)}"
        tracing = self.tracing
        name, base, token = tracing.call_base(call.alias, call.dep)
        if call.error is None:
            shape = (token, call.extra, call.model, call.reasons)
            block = tracing.calls.get(shape) or tracing.call_block(shape, name, base)
            self.finished.append(record(self.head, call.span_id, call.start, time.time_ns(), f"{block}{volatile}]}}"))
            return
        span = Span(self.ids, name, CLIENT, call_span_attributes(base, call.extra, call.model, call.reasons))
        span.span_id, span.start, span.extra = call.span_id, call.start, volatile[1:]
        span.fail(call.error[1], call.error[0])
        self.end(span)

    async def tool(self, item: dict[str, Any], work: Awaitable[None]) -> None:
        """One MCP call of the tool loop (an ``mcp_call`` item, updated by ``work`` with its output or error).
        Its context is current for OpenTelemetry's API while it runs: the MCP SDK sends it on in ``_meta``."""
        if not self.recording:
            await work
            return
        name = str(item.get("name", ""))[:100]
        attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name,
            "gen_ai.tool.type": "extension",
            "gateway.mcp.server_label": str(item.get("server_label", ""))[:100],
        }
        span = Span(self.ids, f"execute_tool {name}", INTERNAL, attributes)
        span.add_extra(string_pair("gen_ai.tool.call.id", str(item.get("id", ""))[:100]))
        chars = self.tracing.content_chars
        if chars:
            span.add_extra(string_pair("gen_ai.tool.call.arguments", content(item.get("arguments") or "", chars)))
        token = otel_context.attach(otel_trace.set_span_in_context(_api_span(span)))
        try:
            await work
            if item.get("error"):
                span.fail(str(item["error"]), "tool_error")
            elif chars:
                span.add_extra(string_pair("gen_ai.tool.call.result", content(item.get("output") or "", chars)))
        except BaseException as exc:
            span.record_exception(exc)
            span.fail(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            otel_context.detach(token)
            self.end(span)


# a model call's base (``Tracing.call_base``'s number), its body's parameters, its answer's model and reasons
CallShape = tuple[int, tuple[tuple[str, Any], ...] | None, str | None, tuple[str, ...] | None]
# method, the route's id, path, scheme, (route name, tenant, space, key, principal, outcome), status, model alias
ServerShape = tuple[str, int, str, str, tuple[str, str, str, str, str, str] | None, int, str | None]


def server_span(shape: ServerShape, route: object) -> tuple[str, dict[str, Any]]:
    """A server span's name and attributes (but the request id) from the request's shape and route (the router's
    object, or None)."""
    method, _, path, scheme, who, status, model = shape
    method = method if method in _METHODS else "_OTHER"
    template = getattr(route, "path", None)
    attributes: dict[str, Any] = {"http.request.method": method, "url.path": path, "url.scheme": scheme}
    if isinstance(template, str):
        attributes["http.route"] = template
    if who is not None:
        attributes.update(zip(_WHO_KEYS, who, strict=True))
    attributes["http.response.status_code"] = status
    if model is not None:
        attributes["gateway.model"] = model
    return (f"{method} {template}" if isinstance(template, str) else method), attributes


# a call's token usage (``genai.usage_attributes``), as JSON: four integers, whatever the call
_USAGE = ",".join(
    f'{{"key":"{key}","value":{{"intValue":"%d"}}}}'
    for key in (
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.usage.reasoning.output_tokens",
    )
)


def _usage_json(usage: "Usage") -> str:
    a, b, c, d = usage.input_tokens, usage.output_tokens, usage.cached_input_tokens, usage.reasoning_tokens
    if (a | b | c | d) >> 63 == 0:  # all in int64 and none negative
        return _USAGE % (a, b, c, d)
    return encode_attributes(usage_attributes(usage))  # an upstream's nonsense: as OTLP can carry it


class _Call:
    """The model call in progress: what its span will say, as plain fields until it ends. (No ``__slots__``: the
    fields most calls leave alone are class attributes, which a call sets only when it has its own.)"""

    attempts = 0
    error: tuple[str, str] | None = None  # the error type and message of its last attempt
    extra: tuple[tuple[str, Any], ...] | None = None  # its body's parameters, its round
    model: str | None = None  # what the upstream answered
    reasons: tuple[str, ...] | None = None
    response_id: str | None = None
    volatile = ""  # JSON of the attributes seen once (its input, its output), each after a comma

    def __init__(self, ref: object, alias: str, dep: "Deployment", start: int) -> None:
        self.ref = ref  # the ModelCall
        self.alias, self.dep, self.start = alias, dep, start  # dep: the deployment of its last attempt
        self.span_id = span_id()


def call_span_attributes(
    base: dict[str, Any], extra: tuple[tuple[str, Any], ...] | None, model: str | None, reasons: tuple[str, ...] | None
) -> dict[str, Any]:
    """A model call span's attributes but the volatile ones: its model's and deployment's, its body's, its answer's."""
    attributes = dict(base)
    if extra:
        attributes.update(extra)
    if model is not None:
        attributes["gen_ai.response.model"] = model
    if reasons is not None:
        attributes["gen_ai.response.finish_reasons"] = reasons
    return attributes


def _nothing() -> None:
    return None


def _api_span(span: Span) -> otel_trace.Span:
    """A span of ours as OpenTelemetry's API sees one (the context of a sampled span, nothing recorded)."""
    context = otel_trace.SpanContext(
        int(span.trace_id, 16), int(span.span_id, 16), False, otel_trace.TraceFlags(otel_trace.TraceFlags.SAMPLED)
    )
    return otel_trace.NonRecordingSpan(context)
