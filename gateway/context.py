"""What one request carries through auth, the policy chain, the provider and back."""

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from config.agents import Agent, AgentVersion
from config.catalog import Space, TenantModel
from gateway.catalog import Catalog, Principal
from gateway.store import Store

if TYPE_CHECKING:
    from gateway.pricing import PriceBook
    from gateway.request_trace import RequestTrace


@dataclass(slots=True)
class Usage:
    """Token counts as the upstream reported them (``usage`` of Chat Completions or of a Response)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0

    @classmethod
    def from_chat(cls, usage: dict[str, Any] | None) -> "Usage | None":
        if not isinstance(usage, dict):
            return None
        prompt_details = usage.get("prompt_tokens_details") or {}
        completion_details = usage.get("completion_tokens_details") or {}
        return cls(
            input_tokens=int(usage.get("prompt_tokens") or 0),
            output_tokens=int(usage.get("completion_tokens") or 0),
            cached_input_tokens=int(prompt_details.get("cached_tokens") or 0),
            reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
        )

    @classmethod
    def from_response(cls, response: dict[str, Any] | None) -> "Usage | None":
        """A Responses object's ``usage`` (``input_tokens``, ``output_tokens`` and their details)."""
        usage = response.get("usage") if isinstance(response, dict) else None
        if not isinstance(usage, dict):
            return None
        return cls(
            input_tokens=int(usage.get("input_tokens") or 0),
            output_tokens=int(usage.get("output_tokens") or 0),
            cached_input_tokens=int((usage.get("input_tokens_details") or {}).get("cached_tokens") or 0),
            reasoning_tokens=int((usage.get("output_tokens_details") or {}).get("reasoning_tokens") or 0),
        )

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )


@dataclass(slots=True)
class ModelCall:
    """One upstream model call of a request: a request makes one; the tool loop one per round. The policies'
    per-call hooks (``before_call``, ``after_call``) read it: what the call sends, then what it used and cost.

    ``body`` is what the call sends, in the caller's API (Chat Completions ``messages``, or a Responses request);
    an input guardrail may change it in place. The first call's is the request body itself; a later round's
    carries in ``input`` only the items added since the previous call (tool outputs fed back), with the request's
    parameters, and ``continues`` says the upstream also receives the conversation before them.
    """

    body: dict[str, Any]
    round: int = 1
    continues: bool = False
    usage: Usage | None = None
    cost_micros: int = 0


class Surface(Enum):
    """What the caller speaks, set by its route: the API its answers follow (``api``) and the shape of its answers
    and errors (``errors``): OpenAI's (``{"error": {…}}``), the native ones (``{"data": …}`` envelopes,
    FastAPI-style errors; ``native``) or the client API's (seed 004: ``{"error": "…"}``). Rendering and policies
    read it; nothing learns it from the answer's bytes or the request's path."""

    CHAT = ("chat", "openai")  # POST /v1/chat/completions
    RESPONSES = ("responses", "openai")  # /v1/responses
    MODELS = ("models", "openai")  # /v1/models
    NATIVE = ("admin", "native")  # the native /v1/spaces/{id}/… routes but responses
    NATIVE_RESPONSES = ("responses", "native")  # /v1/spaces/{id}/responses
    CLIENT = ("responses", "client")  # /api/client/v1/… (agents, seed 004)

    def __init__(self, api: str, errors: str) -> None:
        self.api = api
        self.errors = errors
        self.native = errors == "native"


@dataclass(slots=True)
class Reply:
    """An answer a policy can return from ``before`` to skip the upstream call (e.g. a replay): ``body`` whole,
    or, with ``stream``, the body chunks as they come (following an answer still being written elsewhere)."""

    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    stream: AsyncIterator[bytes] | None = None


@dataclass(slots=True)
class AnswerLog:
    """Where a streamed answer can be followed while it is written (a Responses stream: its event log, which
    another replica reads from the store). Set by the routes that keep one."""

    id: str  # this request's own log (its response id), named before the answer starts
    # the SSE frames of another request's log after sequence number N, following it live to its end;
    # None when no such log is there (not started yet, or not kept where this replica can read it)
    follow: Callable[[str, int], Awaitable[AsyncIterator[bytes] | None]]


@dataclass(slots=True, weakref_slot=True)  # weakly referred to by its trace (gateway.tracing): no cycle
class RequestContext:
    """One request. Policies read and change it; the resolver sets ``alias`` and ``model`` before the policy
    chain runs (``gateway.targets``), the call fills ``usage`` and ``outcome``.

    ``outcome`` is ``pending`` until the end, then one of ``ok``, ``replayed``, ``rejected`` (a policy or
    validation said no), ``upstream_error``, ``disconnected`` (the client went away), ``interrupted`` (the
    gateway's shutdown stopped it), ``cancelled`` (a background response cancelled through the API) or ``error``.
    """

    request_id: str
    route: str
    principal: Principal
    space: Space
    catalog: Catalog
    store: Store
    body: dict[str, Any]
    headers: dict[bytes, bytes]
    # the body as the caller sent it, kept when the resolver rewrote ``body`` (an agent version's settings):
    # what identifies the request (the idempotency fingerprint) is what the caller sent, not what it became
    received: dict[str, Any] | None = None
    stream: bool = False
    surface: Surface = Surface.CHAT  # what the caller speaks (its route says)
    alias: str = ""  # the model name the request runs on: the body's, or the space default (gateway.targets)
    model: TenantModel | None = None  # the tenant's model of that name (None: the tenant has none)
    # the agent the request invokes and its version (``model: "<key>"``), set by the resolver; then ``alias`` and
    # ``model`` are the version's model, so allow-list, budgets and pricing act on the model
    agent: Agent | None = None
    agent_version: AgentVersion | None = None
    resolved: bool = False  # the resolver ran (it runs once)
    usage: Usage | None = None  # the request's usage: the sum over its model calls (``count``)
    cost_micros: int = 0  # what ``usage`` cost, in micro-dollars (set with usage)
    prices: "PriceBook | None" = None  # the runtime's price book (to price estimates, e.g. budgets)
    status_code: int | None = None
    outcome: str = "pending"
    error: BaseException | None = None
    governance_applied: list[str] = field(default_factory=list)
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # policies' extra headers
    # text filters for what the gateway keeps of the answer (output guardrails' masks): a stored response's
    # output text passes through them, and its event log is not kept (its frames were not filtered)
    redactors: list[Callable[[str], str]] = field(default_factory=list)
    answer_log: AnswerLog | None = None
    # a policy's store work must be done before the client can see the end of the answer (an idempotent
    # answer is recorded before a retry can follow it): the chain then runs ``after`` just before the last message
    settle_before_end: bool = False
    extras: dict[str, Any] = field(default_factory=dict)
    # the model call in progress, set by the policy chain as the first one starts; later ones (the tool loop's
    # rounds) start with ``next_call``, which runs the policies' per-call hooks between them (``begin_call``)
    call: ModelCall | None = None
    begin_call: "Callable[[ModelCall], Awaitable[None]] | None" = None
    earlier: tuple[Usage | None, int] = (None, 0)  # usage and cost of the calls before ``call``
    tools: list[Any] = field(default_factory=list)  # the servers of the tools the gateway runs for this request
    # the tool calls the gateway ran (the loop): server, tool, arguments (bounded), ms, outcome; audit records them
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    started_at: float = field(default_factory=time.perf_counter)  # when the context was made (perf_counter)
    first_token_at: float = 0.0  # when a stream's first upstream chunk arrived (``mark_first_token``); 0: none
    trace: "RequestTrace | None" = None  # the request's trace (gateway.tracing), when traces are on

    tenant_id: str = field(init=False)  # the ids as strings, formatted once: every store key holds them
    space_id: str = field(init=False)

    def __post_init__(self) -> None:
        self.tenant_id = self.principal.tenant_id
        self.space_id = self.catalog.space_ids.get(id(self.space)) or str(self.space.id)

    def count(self, usage: Usage | None) -> None:
        """The current model call's usage (again as a stream's grows): the call's cost, and the request's totals
        (``usage``, ``cost_micros``) over every call so far."""
        cost = self.prices.cost(self.model, usage) if self.prices is not None and self.model is not None else 0
        call = self.call
        if call is not None:
            call.usage, call.cost_micros = usage, cost
        before, spent = self.earlier
        if before is None:
            self.usage, self.cost_micros = usage, spent + cost
        else:
            self.usage, self.cost_micros = (before if usage is None else before + usage), spent + cost

    async def next_call(self, body: dict[str, Any]) -> ModelCall:
        """Start the request's next model call (a tool loop's round): the previous call's ``after_call`` hooks,
        then this one's ``before_call`` (which may refuse it: a budget's ``BudgetExceeded``, say)."""
        previous = self.call
        self.earlier = (self.usage, self.cost_micros)
        call = ModelCall(body, round=(previous.round + 1) if previous is not None else 1, continues=True)
        if self.begin_call is not None:
            await self.begin_call(call)
        else:
            self.call = call
        return call

    def mark_first_token(self) -> None:
        """A stream's first upstream chunk arrived (time to first token, in the metrics)."""
        self.first_token_at = time.perf_counter()

    @property
    def agent_ref(self) -> dict[str, Any] | None:
        """``{"key", "version"}`` of the agent the request invokes (what records, audit and spend carry)."""
        if self.agent is None or self.agent_version is None:
            return None
        return {"key": self.agent.key, "version": self.agent_version.version}

    def answer_headers(self, base: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The headers of this request's answer: ``base``, the request id, and what policies added."""
        return [*base, (b"x-request-id", self.request_id.encode("latin-1")), *self.response_headers]

    @property
    def native(self) -> bool:
        """Whether answers and errors take the native shapes (``surface.native``)."""
        return self.surface.native

    @property
    def alias_shown(self) -> str:
        """``alias`` as an error message may repeat it: a caller's text, so bounded."""
        alias = self.alias
        return alias if len(alias) <= 100 else alias[:100] + "…"

    def header(self, name: str) -> str | None:
        """A request header by lower-case name, decoded as latin-1 (HTTP's own charset)."""
        value = self.headers.get(name.encode())
        return None if value is None else value.decode("latin-1")
