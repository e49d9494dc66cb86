"""What one request carries through auth, the policy chain, the provider and back."""

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from config.catalog import Space, TenantModel
from gateway.catalog import Catalog, Principal
from gateway.store import Store

if TYPE_CHECKING:
    from gateway.pricing import PriceBook


@dataclass(slots=True)
class Usage:
    """Token counts as the upstream reported them (``usage`` of Chat Completions)."""

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


class Surface(Enum):
    """What the caller speaks, set by its route: the API its answers follow (``api``) and whether they come in the
    native shapes (``{"data": …}`` envelopes, FastAPI-style errors) or OpenAI's (``native``). Rendering and
    policies read it; nothing learns it from the answer's bytes or the request's path."""

    CHAT = ("chat", False)  # POST /v1/chat/completions
    RESPONSES = ("responses", False)  # /v1/responses
    MODELS = ("models", False)  # /v1/models
    NATIVE = ("admin", True)  # the native /v1/spaces/{id}/… routes but responses
    NATIVE_RESPONSES = ("responses", True)  # /v1/spaces/{id}/responses

    def __init__(self, api: str, native: bool) -> None:
        self.api = api
        self.native = native


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


@dataclass(slots=True)
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
    stream: bool = False
    surface: Surface = Surface.CHAT  # what the caller speaks (its route says)
    alias: str = ""  # the model name the request runs on: the body's, or the space default (gateway.targets)
    model: TenantModel | None = None  # the tenant's model of that name (None: the tenant has none)
    usage: Usage | None = None
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
    started_at: float = field(default_factory=time.perf_counter)  # when the context was made (perf_counter)
    first_token_at: float = 0.0  # when a stream's first upstream chunk arrived (``mark_first_token``); 0: none

    tenant_id: str = field(init=False)  # the ids as strings, formatted once: every store key holds them
    space_id: str = field(init=False)

    def __post_init__(self) -> None:
        self.tenant_id = self.principal.tenant_id
        self.space_id = self.catalog.space_ids.get(id(self.space)) or str(self.space.id)

    def mark_first_token(self) -> None:
        """A stream's first upstream chunk arrived (time to first token, in the metrics)."""
        self.first_token_at = time.perf_counter()

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
