"""Prometheus metrics of one app: every metric declared once, in ``Metrics``, on the app's own registry.

The runtime (``Gateway``) owns one ``Metrics`` (or None when ``GATEWAY_METRICS_ENABLED=false``); nothing here is
module state, so tests build as many apps as they like. Names follow the OpenTelemetry GenAI semantic conventions
where one exists (``gen_ai_*``; the unit, seconds or tokens, is in the help text), Prometheus naming elsewhere.

Label values are bounded by the catalogue or by code: ``route`` (the gateway's own route names), ``space`` (a
catalogue space id), ``model`` (a tenant model alias of the catalogue; any other name is ``other``),
``deployment`` (``<tenant model id>:<index>`` of the catalogue), ``status`` (an HTTP status code), ``outcome``
and ``policy`` (code-defined names). Nothing a caller types reaches a label.

The hot path pays a dict lookup per request to find its pre-bound label children (cached on first use), and one
increment or observation per metric it moves, on the lock-free values of ``gateway.meters`` (prometheus_client's
own metric objects cost 8% of a chat request's instructions; prometheus_client does the exposition). Everything
derived from the request (tokens, cost, time to first token, policy decisions) is computed once at its end, from
its context (``finish``).

Several worker processes: when ``PROMETHEUS_MULTIPROC_DIR`` is set (the process manager sets it), each process
copies its values into its files there every second (``flush``; also before it renders and at stop), and
``render`` collects every process's with ``MultiProcessCollector``; gauges then sum (in-flight, open streams) or
take the maximum (breaker state) over live processes.
"""

import asyncio
import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from starlette.types import Scope

from gateway.context import RequestContext
from gateway.meters import Buckets, Collector, Counter, Gauge, Histogram, ProcessFiles, Reading, Value

if TYPE_CHECKING:
    from gateway.policy import PolicyChain

# OpenTelemetry's advised bucket boundaries (GenAI metrics), with finer steps below 10 ms for the gateway's own
# fast answers (a replay, a refusal, a fake model).
DURATION_BUCKETS = (0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

OTHER = "other"  # the one label value of anything unknown
NONE = "none"  # space and model of a request refused before either was known
CIRCUIT_CLOSED, CIRCUIT_OPEN, CIRCUIT_HALF_OPEN = 0, 1, 2
TOKEN_TYPES = ("input", "output", "cached_input", "reasoning")
FLUSH_SECONDS = 1.0  # multiprocess mode: how often a process copies its values into its files
_TOOL_NAMES_PER_SERVER = 200  # past this many distinct tool names on one server, more fold into "other"
# the routes whose refusals (before a request context exists) are named as their chained requests are
ROUTE_NAMES = {"/v1/chat/completions": "chat.completions", "/v1/responses": "responses.create"}


_REQUEST = ("route", "space", "model")
_DEPLOYMENT = ("deployment", "model")
# Every metric: (attribute, type, name, help, labels, options). Counters get ``_total`` from the client.
METRICS: tuple[tuple[str, type[Counter | Gauge | Histogram], str, str, tuple[str, ...], dict[str, Any]], ...] = (
    ("requests", Counter, "gateway_requests", "Requests answered, by route, space, model, HTTP status and outcome.",
     (*_REQUEST, "status", "outcome"), {}),
    ("request_duration", Histogram, "gen_ai_server_request_duration",
     "Seconds from a request's arrival to the end of its answer (the last byte of a stream).",
     (*_REQUEST, "status"), {"buckets": DURATION_BUCKETS}),
    ("time_to_first_token", Histogram, "gen_ai_server_time_to_first_token",
     "Seconds from a streamed request's arrival to the upstream's first chunk.", _REQUEST, {"buckets": TTFT_BUCKETS}),
    ("time_per_output_token", Histogram, "gen_ai_server_time_per_output_token",
     "Seconds per output token after the first, of streamed requests (the stream's time after its first chunk "
     "over its output tokens less one).", _REQUEST, {"buckets": TPOT_BUCKETS}),
    ("token_usage", Histogram, "gen_ai_client_token_usage",
     "Tokens per request as the upstream reported them, by type: input, output, and the parts of those that were "
     "cached_input and reasoning. Its _sum is the token total.",
     ("space", "model", "token_type"), {"buckets": TOKEN_BUCKETS}),
    ("cost", Counter, "gateway_cost_usd", "What requests cost, in US dollars.", ("space", "model"), {}),
    ("inflight", Gauge, "gateway_inflight_requests", "Requests running their policy chain and model call now.",
     (), {"multiprocess_mode": "livesum"}),
    ("open_streams", Gauge, "gateway_open_streams", "Streamed requests running now.",
     (), {"multiprocess_mode": "livesum"}),
    ("store_duration", Histogram, "gateway_store_duration_seconds",
     "Seconds per store operation (a batch is one).", ("op",), {"buckets": STORE_BUCKETS}),
    ("store_errors", Counter, "gateway_store_errors", "Store operations that failed to reach the store.",
     ("op",), {}),
    ("upstream_duration", Histogram, "gateway_upstream_request_duration_seconds",
     "Seconds per upstream attempt: to the whole answer, or to a stream's first chunk.",
     _DEPLOYMENT, {"buckets": DURATION_BUCKETS}),
    ("upstream_errors", Counter, "gateway_upstream_errors",
     "Upstream attempts that failed, by the HTTP status the gateway maps the failure to.",
     (*_DEPLOYMENT, "status"), {}),
    ("upstream_retries", Counter, "gateway_upstream_retries", "Attempts made again on the same deployment.",
     _DEPLOYMENT, {}),
    ("fallbacks", Counter, "gateway_fallbacks",
     "Attempts on a deployment other than the first in the model's order.", ("model",), {}),
    ("circuit_state", Gauge, "gateway_circuit_breaker_state",
     "A deployment's circuit as this process last saw it: 0 closed, 1 open, 2 half-open (probing).",
     ("deployment",), {"multiprocess_mode": "livemax"}),
    ("policy_decisions", Counter, "gateway_policy_decisions",
     "Policy verdicts: allowed, denied, answered (a replay), error (5xx).", ("space", "policy", "decision"), {}),
    ("idempotency", Counter, "gateway_idempotency",
     "Requests with an Idempotency-Key: new, replayed, conflict (the same key in progress or with another body), "
     "rejected (another refusal), error.", ("space", "result"), {}),
    ("rate_limit_refusals", Counter, "gateway_rate_limit_refusals", "Requests refused by a rate limit.",
     ("space",), {}),
    ("tool_rounds", Counter, "gateway_tool_rounds", "Rounds of the server-side tool loop (filled by the tool loop).",
     ("space", "model"), {}),
    ("tool_calls", Counter, "gateway_tool_calls",
     "Tool calls the gateway ran (filled by the tool loop), by MCP server, tool and outcome (ok, error).",
     ("server", "tool", "outcome"), {}),
)  # fmt: skip


def status_label(status: int | None) -> str:
    """An HTTP status code as a label value (bounded: anything outside 100-599 is ``other``)."""
    return str(status) if status is not None and 100 <= status <= 599 else OTHER


class _RequestMeters:
    """The children one kind of request moves, for (route, space, model, status, outcome): pre-bound, so that a
    request looks up one dict entry and moves plain numbers (``finish``)."""

    __slots__ = ("requests", "duration", "tokens", "cost", "ttft", "tpot", "applied", "allowed", "new")

    def __init__(self, m: "Metrics", route: str, space: str, model: str, status: int | None, outcome: str) -> None:
        code = status_label(status)
        self.requests: Value = m.requests.labels(route, space, model, code, outcome)
        self.duration: Buckets = m.request_duration.labels(route, space, model, code)
        self.tokens: tuple[Buckets, ...] = tuple(m.token_usage.labels(space, model, kind) for kind in TOKEN_TYPES)
        self.cost: Value = m.cost.labels(space, model)
        self.ttft: Buckets = m.time_to_first_token.labels(route, space, model)
        self.tpot: Buckets = m.time_per_output_token.labels(route, space, model)
        # the policies that let the last such request through, their "allowed" children and, when idempotency is
        # one of them, its "new" child (never set for a replayed or rejected request, whose verdicts differ: see
        # ``Metrics._governance``)
        self.applied: list[str] | None = None
        self.allowed: tuple[Value, ...] = ()
        self.new: Value | None = None


@dataclass(slots=True)
class DeploymentMeter:
    """The upstream children of one deployment, for the dispatcher."""

    duration: Buckets
    retries: Value
    errors: Counter  # the family, with a status label left to bind
    errors_by_status: dict[int, Value]
    deployment: str
    model: str

    def failed(self, status: int, seconds: float) -> None:
        """An attempt that ended in an upstream error (``status``: the error's HTTP status)."""
        self.duration.observe(seconds)
        child = self.errors_by_status.get(status)
        if child is None:
            labels = (self.deployment, self.model, status_label(status))
            child = self.errors_by_status[status] = self.errors.labels(*labels)
        child.inc()


class Metrics:
    """Every metric of one app (``METRICS``), on its own registry (``registry``), and the methods that move them."""

    requests: Counter
    request_duration: Histogram
    time_to_first_token: Histogram
    time_per_output_token: Histogram
    token_usage: Histogram
    cost: Counter
    inflight: Gauge
    open_streams: Gauge
    store_duration: Histogram
    store_errors: Counter
    upstream_duration: Histogram
    upstream_errors: Counter
    upstream_retries: Counter
    fallbacks: Counter
    circuit_state: Gauge
    policy_decisions: Counter
    idempotency: Counter
    rate_limit_refusals: Counter
    tool_rounds: Counter
    tool_calls: Counter

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = registry or CollectorRegistry(auto_describe=True)
        families = []
        for attr, kind, name, doc, labels, options in METRICS:
            family = kind(name, doc, labels, **options)
            setattr(self, attr, family)
            families.append(family)
        self.families = families
        registry.register(Collector(families))
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self.files = None if not directory else ProcessFiles(directory)
        self._requests: dict[tuple[str, str, str, int | None, str], _RequestMeters] = {}
        self._refused: dict[tuple[str, int], Value] = {}
        self._decisions: dict[tuple[str, str, str], Value] = {}
        self._deployments: dict[str, DeploymentMeter] = {}
        self._store_ops: dict[str, tuple[Buckets, Value]] = {}
        self._tool_names: dict[str, set[str]] = {}
        self.streams_now = self.open_streams.labels()
        self._flusher: asyncio.Task[None] | None = None
        self.flush()  # (multiprocess mode: this process's files exist from the start, its gauges at zero)

    # ------------------------------------------------------------------------------------------- requests

    def started(self, ctx: RequestContext) -> None:
        """A request enters its chain (the in-flight gauge reads the app's ``InFlight``: see ``count_inflight``)."""
        if ctx.stream:
            self.streams_now.inc()

    def finish(self, ctx: RequestContext, chain: "PolicyChain", status: int | None) -> None:
        """A request's chain ended (``status``: its HTTP status). Moves every metric its context speaks for (the
        hottest lines of the metrics: one lookup, then the children's numbers)."""
        now = perf_counter()
        if ctx.stream:
            self.streams_now.value -= 1
        key = (ctx.route, ctx.space_id, ctx.alias if ctx.model is not None else OTHER, status, ctx.outcome)
        meters = self._requests.get(key) or self._bind(key)
        meters.requests.value += 1
        meters.duration.observe(now - ctx.started_at)
        usage = ctx.usage
        if usage is not None:
            tokens = meters.tokens
            tokens[0].observe(usage.input_tokens)
            tokens[1].observe(usage.output_tokens)
            if usage.cached_input_tokens:
                tokens[2].observe(usage.cached_input_tokens)
            if usage.reasoning_tokens:
                tokens[3].observe(usage.reasoning_tokens)
        if ctx.cost_micros:
            meters.cost.value += ctx.cost_micros / 1_000_000
        if ctx.first_token_at:  # a stream's
            _streamed(meters, ctx, now)
        if meters.applied != ctx.governance_applied and not self._let_through(ctx, meters):
            self._governance(ctx, chain, status)  # a replayed or rejected request
            return
        # every policy that ran let the request through (most requests: the policies of the last one of its kind)
        for child in meters.allowed:
            child.value += 1
        if meters.new is not None and b"idempotency-key" in ctx.headers:  # through idempotency: a new key
            meters.new.value += 1

    def count_inflight(self, read: Callable[[], int]) -> None:
        """The in-flight gauge reads ``read()`` (the number of requests the app tracks) when it is exported, so a
        request moves no gauge of its own."""
        self.inflight.children[()] = Reading(read)

    def refused(self, route: str, status: int) -> None:
        """A request refused before it had a context (no key, a bad body, an unknown route, ...): counted with
        space and model ``none``."""
        child = self._refused.get((route, status))
        if child is None:
            labels = (route, NONE, NONE, status_label(status), "rejected")
            child = self._refused[(route, status)] = self.requests.labels(*labels)
        child.inc()

    def _bind(self, key: tuple[str, str, str, int | None, str]) -> _RequestMeters:
        meters = self._requests[key] = _RequestMeters(self, *key)
        return meters

    def _let_through(self, ctx: RequestContext, meters: _RequestMeters) -> bool:
        """Whether every policy that ran let the request through; if so, its kind's children for that are bound
        (``finish`` moves them). Never for a replayed or rejected request, whose verdicts differ (``_governance``)."""
        if ctx.outcome == "replayed" or ctx.outcome == "rejected":
            return False
        space, applied = ctx.space_id, ctx.governance_applied
        meters.applied = list(applied)
        meters.allowed = tuple(self._decision(space, name, "allowed") for name in applied)
        meters.new = self.idempotency.labels(space, "new") if "idempotency" in applied else None
        return True

    def _governance(self, ctx: RequestContext, chain: "PolicyChain", status: int | None) -> None:
        """Policy decisions, idempotency results and rate-limit refusals of a replayed or rejected request, read
        from what the chain left on the context: ``governance_applied`` holds the policies that ran and let the
        request through (a replaying one last), so on a refusal the policy after them in the chain is the one
        that said no."""
        applied = ctx.governance_applied
        denier = self._verdicts(ctx, chain, status)
        if b"idempotency-key" in ctx.headers and ("idempotency" in applied or denier == "idempotency"):
            self.idempotency.labels(ctx.space_id, _idempotency_result(ctx, denier, status)).inc()

    def _verdicts(self, ctx: RequestContext, chain: "PolicyChain", status: int | None) -> str:
        """The decisions of a replayed or rejected request; returns the policy that refused it ("" for none)."""
        space, applied, decisions = ctx.space_id, ctx.governance_applied, self._decision
        answered = ctx.outcome == "replayed" and bool(applied)
        for name in applied[:-1] if answered else applied:
            decisions(space, name, "allowed").inc()
        denier = ""
        if answered:
            decisions(space, applied[-1], "answered").inc()
        elif ctx.outcome == "rejected" and len(applied) < len(chain.policies):
            denier = chain.policies[len(applied)].name
            verdict = "error" if status is not None and status >= 500 else "denied"
            decisions(space, denier, verdict).inc()
            if denier == "rate_limit" and verdict == "denied":
                self.rate_limit_refusals.labels(space).inc()
        return denier

    def _decision(self, space: str, policy: str, verdict: str) -> Value:
        key = (space, policy, verdict)
        child = self._decisions.get(key)
        if child is None:
            child = self._decisions[key] = self.policy_decisions.labels(*key)
        return child

    # ------------------------------------------------------------------------------------------- upstream

    def deployment(self, key: str, model: str) -> DeploymentMeter:
        """The pre-bound upstream children of deployment ``key`` (``<tenant model id>:<index>``) of tenant model
        ``model`` (bound on first use)."""
        meter = self._deployments.get(key)
        if meter is None:
            meter = self._deployments[key] = DeploymentMeter(
                self.upstream_duration.labels(key, model),
                self.upstream_retries.labels(key, model),
                self.upstream_errors,
                {},
                key,
                model,
            )
        return meter

    def fallback(self, model: str) -> None:
        """An attempt on a deployment of tenant model ``model`` other than the first in its order."""
        self.fallbacks.labels(model).inc()

    def circuit(self, key: str, state: int) -> None:
        """A deployment's circuit changed state as this process saw it (``CIRCUIT_*``)."""
        self.circuit_state.labels(key).set(state)

    # ------------------------------------------------------------------------------------------- store

    def store_op(self, op: str) -> tuple[Buckets, Value]:
        """The duration and error children of one store operation name (code-defined)."""
        pair = self._store_ops.get(op)
        if pair is None:
            pair = self._store_ops[op] = (self.store_duration.labels(op), self.store_errors.labels(op))
        return pair

    # ------------------------------------------------------------------------------------------- tool loop

    def tool_round(self, ctx: RequestContext) -> None:
        """The tool loop ran one more round (a model call whose answer asked for tools) for this request."""
        model = ctx.alias if ctx.model is not None else OTHER
        self.tool_rounds.labels(ctx.space_id, model).inc()

    def tool_call(self, server: str, tool: str, ok: bool) -> None:
        """The tool loop called ``tool`` on MCP ``server`` (a catalogue name). Tool names come from the server,
        so they are bounded here: at most 200 distinct names per server, 64 characters each; more fold into
        ``other``."""
        names = self._tool_names.setdefault(server, set())
        tool = tool[:64]
        if tool not in names:
            if len(names) >= _TOOL_NAMES_PER_SERVER:
                tool = OTHER
            else:
                names.add(tool)
        self.tool_calls.labels(server, tool, "ok" if ok else "error").inc()

    # ------------------------------------------------------------------------------------------- processes

    def flush(self) -> None:
        """Multiprocess mode: this process's values into its files, where any process's /metrics sums them."""
        if self.files is not None:
            self.files.write(self.families)

    def start(self) -> None:
        """Multiprocess mode: flush every second (another process's scrape is at most that far behind)."""
        if self.files is not None and self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush_every(FLUSH_SECONDS))

    async def stop(self) -> None:
        """The last flush, and the files closed (their values stay for the other processes' scrapes)."""
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        if self.files is not None:
            self.flush()
            self.files.close()

    async def _flush_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            self.flush()

    # ------------------------------------------------------------------------------------------- exposition

    def render(self) -> bytes:
        """The Prometheus text exposition: this app's registry, or every process's values in multiprocess mode."""
        if self.files is None:
            return generate_latest(self.registry)
        self.flush()
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def names(self) -> Sequence[str]:
        """Every sample name this app can export (``_total``, ``_bucket``, ``_count``, ``_sum`` included)."""
        out = []
        for family in self.registry.collect():
            kinds = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
            out += [family.name + suffix for suffix in kinds.get(family.type, ("",))]
        return out


def _streamed(meters: _RequestMeters, ctx: RequestContext, now: float) -> None:
    """A stream's time to its first token, and per output token after it."""
    meters.ttft.observe(ctx.first_token_at - ctx.started_at)
    usage = ctx.usage
    if usage is not None and usage.output_tokens > 1:
        meters.tpot.observe((now - ctx.first_token_at) / (usage.output_tokens - 1))


def answered_status(ctx: RequestContext, error: BaseException | None) -> int | None:
    """The HTTP status a request's chain ended with: its answer's, else 499 when the client went away before an
    answer started, else the error's (500 when it has none)."""
    if error is None or ctx.status_code:
        return ctx.status_code
    if isinstance(error, asyncio.CancelledError):
        return 499
    return getattr(error, "status_code", 500)


def _idempotency_result(ctx: RequestContext, denier: str, status: int | None) -> str:
    if ctx.outcome == "replayed" and ctx.governance_applied[-1] == "idempotency":
        return "replayed"
    if denier == "idempotency":
        if status is not None and status >= 500:
            return "error"
        return "conflict" if status in (409, 422) else "rejected"
    return "new"


def count_refusal(metrics: Metrics | None, scope: Scope, status: int) -> None:
    """An error answered by the app's handlers (before any request context: no key, a bad body, an unknown
    route), counted under its route: the chained route's name, else the route's path template (``unmatched``
    when none matched)."""
    if metrics is not None:
        route = scope.get("route")
        path = getattr(route, "path", None)
        metrics.refused(ROUTE_NAMES.get(path, path) if isinstance(path, str) else "unmatched", status)


def process_ended(pid: int) -> None:
    """Multiprocess mode: a worker process ended (the process manager calls this with its PID), so its values
    leave the live gauges (``livesum``, ``livemax``); its counters and histograms still count."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        mark_process_dead(pid)  # type: ignore[no-untyped-call]
