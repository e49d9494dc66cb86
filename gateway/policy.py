"""The policy contract (the hookspec) and the chain that runs it.

A policy is a class with a ``Params`` pydantic model (validated at start, ``extra="forbid"``) and two hooks:

``async before(ctx) -> Reply | StoreStep | None``
    Runs in chain order before the upstream call. May change ``ctx.body``/``ctx.model``; raise a
    ``GatewayError`` to reject (undo its own partial work first: its ``after`` will not run); or return a
    ``Reply`` to answer without calling the upstream (later policies' ``before`` then do not run).
    A policy whose decision needs the store returns a ``StoreStep`` instead of calling the store itself: the
    chain runs every policy's step together, in chain order, in one store round trip once the last
    ``before`` has returned, and hands each result to the step's ``then``, which decides as ``before``
    would have (raise, return a Reply, or None). A step whose result means "stop" (a rejection or a replay)
    must say so through its script's ``Halt``, so that the later steps do not run; the policies after it
    then count as not having run. If a later ``before`` raises, the pending steps are dropped unrun.

``async after(ctx) -> StoreStep | None``
    Runs in reverse order for every policy whose ``before`` returned, on every exit path: success,
    rejection by a later policy, upstream error, client disconnect, cancellation. ``ctx.outcome``,
    ``ctx.status_code``, ``ctx.error``, ``ctx.usage`` and ``ctx.cost_micros`` say what happened; for
    streams it runs after the last byte, with the final usage, unless a policy set ``ctx.settle_before_end``
    (its stored result must be in place before the client sees the end): then it runs as the answer's last
    message passes, just before it goes out. Reservations and claims are released here.
    The store work it returns as a ``StoreStep`` runs with the other policies' in one round trip.
    Its errors are logged, never raised over the request's own outcome.

``async before_call(ctx, call) -> StoreStep | None`` and ``async after_call(ctx, call) -> StoreStep | None``
    The per-call hooks, around every upstream model call of the request (``ctx.call``, a ``ModelCall``: one for
    a plain request, one per round of the tool loop): ``before_call`` sees what the call sends (``call.body``)
    and may refuse it (raise), ``after_call`` sees what it used (``call.usage``, ``call.cost_micros``). The first
    call's ``before_call`` hooks run in the request's before phase, after every ``before`` (their store steps in
    the same round trip); the last call's ``after_call`` hooks in its after phase, before every ``after``.
    Between two calls (``ctx.next_call``) the finished call's ``after_call`` steps run in one round trip and the
    next call's ``before_call`` steps in another. A request-level concern (a claim, an audit line, the request's
    allow-list decision) stays in ``before``/``after``; what is counted per call (a budget reservation, the tokens
    of a rate limit, the input guardrails) goes in the per-call hooks.

``wrap_send(ctx, send) -> send`` (optional)
    Sees every ASGI message of the answer on its way out (status and headers, then body chunks: whole SSE
    events for streams), and may change them: capture them for replay, mask text. Wrapped, once the
    ``before`` phase is over, only for policies that ran; the last policy in the chain sees the messages
    first. Error answers raised inside the chain pass through it too, rendered in the caller's shape.

Policies are named in the catalogue by a short alias (``policies.ALIASES``) or ``"module:Class"``; the
built-ins go through the same loader as third-party ones. The names of the policies that ran are recorded in
``ctx.governance_applied``.
"""

import asyncio
import importlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.types import Message, Send

from config.catalog import PolicySpec
from gateway.context import ModelCall, Reply, RequestContext
from gateway.errors import GatewayError, ShuttingDown, StoreUnavailable, UpstreamError, render_error
from gateway.http import send_bytes
from gateway.importer import ImportFromStringError, import_from_string
from gateway.store import Script

log = logging.getLogger("gateway.policy")
T = TypeVar("T")


class PolicyParams(BaseModel):
    """Base of every policy's ``Params``: unknown keys are an error at start."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(slots=True)
class StoreStep:
    """A policy's store work, run by the chain together with the other policies' in one round trip.

    ``then(ctx, result)`` receives the script's result (in ``before``: raise to reject, return a Reply to
    answer). ``unavailable(ctx, error)`` is called instead when the store cannot be reached: raise to fail
    closed (or to reject), return to go on without the step (the default fails closed in ``before``; in
    ``after`` the error is logged). With ``follows_chain``, ``unavailable`` is called only when the chain
    fails open (``PolicyChain.fails_open``); otherwise the step fails closed.
    """

    script: Script
    keys: Sequence[str]
    args: Sequence[Any]
    then: "Callable[[RequestContext, Any], Awaitable[Reply | None]] | None" = None
    unavailable: "Callable[[RequestContext, StoreUnavailable], None] | None" = None
    follows_chain: bool = False


class Policy:
    """Base class with no-op hooks; subclass it and override what the policy needs."""

    name: ClassVar[str] = "policy"
    Params: ClassVar[type[PolicyParams]] = PolicyParams

    def __init__(self, params: PolicyParams) -> None:
        self.params = params

    async def before(self, ctx: RequestContext) -> Reply | StoreStep | None:
        """Check or change the request; raise to reject; return a Reply to answer without the upstream."""
        return None

    async def after(self, ctx: RequestContext) -> StoreStep | None:
        """Record or release; runs on every exit path for every policy whose ``before`` returned."""
        return None

    async def before_call(self, ctx: RequestContext, call: ModelCall) -> StoreStep | None:
        """Check or change what one model call sends (``call.body``); raise to refuse the call."""
        return None

    async def after_call(self, ctx: RequestContext, call: ModelCall) -> StoreStep | None:
        """Record or release what one model call used; runs for every call whose ``before_call`` returned."""
        return None

    def wrap_send(self, ctx: RequestContext, send: Send) -> Send:
        """Return a ``send`` that sees (and may change) the answer's messages; the default adds nothing."""
        return send


# What ran of a request's policies, in order: the policies whose ``before`` returned (``REQUEST``), then those
# whose ``before_call`` returned for the call in progress (``CALL``); their ``after``/``after_call`` run for them.
REQUEST, CALL = False, True
Ran = list[tuple[Policy, bool]]


class PolicyConfigError(Exception):
    """A policy named in the catalogue cannot be loaded or its params are invalid."""


class PolicyChain:
    """The ordered policies of one space.

    ``fails_open``: what the chain does when the store cannot be reached, from its policies' own
    ``on_store_error`` params (a policy without one has no say): open when one says ``open`` and none says
    ``closed``. Steps that follow the chain (the allow-list's) go on only then.
    """

    def __init__(self, policies: Sequence[Policy]) -> None:
        self.policies = tuple(policies)
        modes = {getattr(p.params, "on_store_error", None) for p in self.policies}
        self.fails_open = "open" in modes and "closed" not in modes
        # only policies that override wrap_send cost anything per message, only those with per-call hooks per call
        self.wrapping = frozenset(id(p) for p in self.policies if type(p).wrap_send is not Policy.wrap_send)
        self.per_call = tuple(
            p
            for p in self.policies
            if type(p).before_call is not Policy.before_call or type(p).after_call is not Policy.after_call
        )
        # the after phase runs only the hooks a policy overrides: the base class's no-ops cost a coroutine (and,
        # traced, a span) per request for nothing
        self.after_hooks = frozenset(id(p) for p in self.policies if type(p).after is not Policy.after)
        self.after_call_hooks = frozenset(id(p) for p in self.per_call if type(p).after_call is not Policy.after_call)

    async def run(self, ctx: RequestContext, send: Send, call: Callable[[Send], Awaitable[None]]) -> None:
        """Run ``before`` hooks (and their store steps), then ``call(send)`` (which answers the client), then
        ``after`` hooks (and theirs): after the last byte, or just before the last message of the answer when
        the request asks for it (``ctx.settle_before_end``). ``ctx.next_call`` moves the per-call hooks on to
        the request's next model call.

        A Reply from a ``before`` hook is sent as the answer. A GatewayError raised before the answer started
        is rendered here (through the policies' ``wrap_send``), in the shape of the caller's surface.
        """
        ran: Ran = []
        settlement = _Settlement(self, ctx, ran)
        outer: Send | None = None  # ``send`` wrapped by the policies that ran, once the before phase is over
        try:
            reply = await self._before(ctx, ran)
            if reply is not None:
                ctx.outcome, ctx.status_code = "replayed", reply.status
                await send_reply(send, reply)
            else:
                if self.per_call:
                    ctx.begin_call = lambda next_call: self._next_call(ctx, ran, next_call)
                outer = self._wrap(ctx, settlement.before_end(send), ran)
                await call(outer)
                if ctx.outcome == "pending":
                    ctx.outcome = "ok"
        except GatewayError as exc:
            started = ctx.status_code is not None  # before _record_failure sets it
            _record_failure(ctx, exc)
            if started:  # the answer had started: nothing more can be said
                raise
            status, headers, body = render_error(exc, ctx.surface.errors)
            ctx.status_code = status
            outer = outer or self._wrap(ctx, settlement.before_end(send), ran)
            await send_bytes(outer, status, headers, body)
        except asyncio.CancelledError as exc:
            ctx.outcome, ctx.error = ("disconnected" if ctx.outcome == "pending" else ctx.outcome), exc
            raise
        except BaseException as exc:
            _record_failure(ctx, exc)
            raise
        finally:
            await settlement.run()

    async def _before(self, ctx: RequestContext, ran: Ran) -> Reply | None:
        """The ``before`` hooks in order, then the first call's ``before_call``, then their store steps in one
        round trip. Returns the Reply to send, if one answers; ``ran`` ends up holding what counts as having run."""
        steps: list[tuple[int, StoreStep]] = []  # (index in ran of the hook, its step)
        reply: Reply | None = None
        for policy in self.policies:
            result = await _traced(ctx, "before", policy.name, policy.before(ctx))
            ran.append((policy, REQUEST))
            ctx.governance_applied.append(policy.name)
            if isinstance(result, StoreStep):
                steps.append((len(ran) - 1, result))
            elif result is not None:
                reply = result
                break
        if reply is None:
            ctx.call = ModelCall(ctx.body)
            await self._before_call(ctx, ctx.call, ran, steps)
        if steps:
            return await _before_steps(ctx, ran, steps, self.fails_open) or reply
        return reply

    async def _before_call(
        self, ctx: RequestContext, call: ModelCall, ran: Ran, steps: list[tuple[int, StoreStep]]
    ) -> None:
        for policy in self.per_call:
            step = await _traced(ctx, "before_call", policy.name, policy.before_call(ctx, call))
            ran.append((policy, CALL))
            if step is not None:
                steps.append((len(ran) - 1, step))

    async def _next_call(self, ctx: RequestContext, ran: Ran, call: ModelCall) -> None:
        """Between two model calls: the finished call's ``after_call`` hooks (one round trip), then the next
        one's ``before_call`` (another). A refusal raises with the refusing hook and those after it not run."""
        first = next((i for i, (_, per_call) in enumerate(ran) if per_call), len(ran))
        finished = ran[first:]
        del ran[first:]
        await self._after(ctx, finished)
        ctx.call = call
        steps: list[tuple[int, StoreStep]] = []
        await self._before_call(ctx, call, ran, steps)  # a raising hook has not joined ``ran``
        if steps:
            await _before_steps(ctx, ran, steps, self.fails_open)

    def _wrap(self, ctx: RequestContext, send: Send, ran: Ran) -> Send:
        for policy, per_call in ran:
            if not per_call and id(policy) in self.wrapping:
                send = policy.wrap_send(ctx, send)
        return send

    async def _after(self, ctx: RequestContext, ran: Ran) -> None:
        """The ``after_call`` and ``after`` hooks in reverse order, then their store steps in one round trip;
        nothing raises."""
        steps: list[tuple[Policy, StoreStep]] = []
        for policy, per_call in reversed(ran):
            if id(policy) not in (self.after_call_hooks if per_call else self.after_hooks):
                continue
            hook = "after_call" if per_call else "after"
            try:
                work = policy.after_call(ctx, _call_of(ctx)) if per_call else policy.after(ctx)
                step = await _traced(ctx, hook, policy.name, work)
            except Exception:
                log.exception("policy %s failed in %s()", policy.name, hook)
                continue
            if isinstance(step, StoreStep):
                steps.append((policy, step))
        if steps:
            await _after_steps(ctx, steps)


class _Settlement:
    """The after phase of one request, run once: at the end, or, when the request asks for it
    (``ctx.settle_before_end``), as the last message of the answer passes on its way to the client. By then
    the answer is whole (usage known, the outcome decided), and what the policies store is in place before the
    client can see the end: a retry that follows at once finds the idempotent answer recorded."""

    __slots__ = ("chain", "ctx", "ran", "done")

    def __init__(self, chain: PolicyChain, ctx: RequestContext, ran: Ran) -> None:
        self.chain, self.ctx, self.ran, self.done = chain, ctx, ran, False

    async def run(self) -> None:
        if not self.done:
            self.done = True
            self.ctx.begin_call = None  # no call starts once the request is settled
            if self.ctx.trace is not None:  # the last model call is over: its span ends before the after hooks
                self.ctx.trace.end_call()
            await self.chain._after(self.ctx, self.ran)

    def before_end(self, send: Send) -> Send:
        """``send``, running the after phase before the last body message when the request asks for it."""
        if not self.ctx.settle_before_end:
            return send

        async def settling(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False) and not self.done:
                if self.ctx.outcome == "pending":  # the answer is complete: nothing can fail it any more
                    self.ctx.outcome = "ok"
                await self.run()
            await send(message)

        return settling


async def send_reply(send: Send, reply: Reply) -> None:
    """A policy's Reply: its body whole, or its chunks as they come."""
    if reply.stream is None:
        await send_bytes(send, reply.status, reply.headers, reply.body)
        return
    await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
    async for chunk in reply.stream:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _before_steps(
    ctx: RequestContext, ran: Ran, steps: list[tuple[int, StoreStep]], fails_open: bool
) -> Reply | None:
    """Run the before phase's steps in one round trip and hand each result to its ``then`` in chain order."""
    try:
        batch = ctx.store.batch([(step.script, step.keys, step.args) for _, step in steps])
        results = await _round_trip(ctx, "before", batch)
    except StoreUnavailable as exc:
        for index, step in steps:  # each decides: fail closed (raise) or go on without its check
            if step.unavailable is None or (step.follows_chain and not fails_open):
                raise
            try:
                step.unavailable(ctx, exc)
            except GatewayError:
                _forget(ctx, ran, index)  # a rejection, like a raising then
                raise
        return None
    for (index, step), result in zip(steps, results, strict=False):  # shorter when a step halted
        try:
            answer = await step.then(ctx, result) if step.then is not None else None
        except BaseException:
            _forget(ctx, ran, index)  # like a raising before: its after does not run, nor later ones'
            raise
        if answer is not None:
            _forget(ctx, ran, index + 1)
            return answer
    return None


async def _after_steps(ctx: RequestContext, steps: list[tuple[Policy, StoreStep]]) -> None:
    """Run the after phase's steps in one round trip; log what fails."""
    try:
        batch = ctx.store.batch([(step.script, step.keys, step.args) for _, step in steps])
        results = await _round_trip(ctx, "after", batch)
    except StoreUnavailable as exc:
        results = []
        for policy, step in steps:
            try:
                if step.unavailable is None:
                    raise exc
                step.unavailable(ctx, exc)
            except Exception:
                log.exception("policy %s: its store step in after() did not run", policy.name)
    except Exception:
        log.exception("the policies' store steps failed in after()")
        return
    for (policy, step), result in zip(steps, results, strict=False):
        if step.then is not None:
            try:
                await step.then(ctx, result)
            except Exception:
                log.exception("policy %s failed in after()", policy.name)


def _forget(ctx: RequestContext, ran: Ran, keep: int) -> None:
    """Only the first ``keep`` hooks of ``ran`` count as having run (their ``after``/``after_call`` runs)."""
    dropped = sum(not per_call for _, per_call in ran[keep:])
    del ran[keep:]
    if dropped > 0:
        del ctx.governance_applied[-dropped:]


def _traced(ctx: RequestContext, hook: str, name: str, work: Awaitable[T]) -> Awaitable[T]:
    """``work`` (a policy's hook, or a store round trip), as a span when the request is traced."""
    return work if ctx.trace is None else ctx.trace.step(hook, name, work)


def _call_of(ctx: RequestContext) -> ModelCall:
    assert ctx.call is not None  # a per-call hook ran, so a call had started
    return ctx.call


def _record_failure(ctx: RequestContext, exc: BaseException) -> None:
    ctx.error = exc
    if ctx.outcome == "pending":
        if isinstance(exc, UpstreamError):
            ctx.outcome = "upstream_error"
        elif isinstance(exc, ShuttingDown):
            ctx.outcome = "interrupted"
        elif isinstance(exc, GatewayError):
            ctx.outcome = "rejected"
        else:
            ctx.outcome = "error"
    if ctx.status_code is None:
        ctx.status_code = getattr(exc, "status_code", 500)


def load_policy(spec: PolicySpec) -> Policy:
    """Import the class a spec names, validate its params and build it; PolicyConfigError if anything fails."""
    aliases: dict[str, str] = getattr(importlib.import_module("policies"), "ALIASES", {})
    target = aliases.get(spec.use, spec.use)
    if ":" not in target:
        known = ", ".join(sorted(aliases))
        raise PolicyConfigError(f"unknown policy {spec.use!r}: use a built-in ({known}) or 'module:Class'")
    try:
        cls: Any = import_from_string(target)
    except ImportFromStringError as exc:
        raise PolicyConfigError(f"policy {spec.use!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise PolicyConfigError(f"policy {spec.use!r}: {target} is not a gateway.Policy subclass")
    try:
        params = cls.Params.model_validate(spec.params)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
        raise PolicyConfigError(f"policy {spec.use!r}: invalid params: {problems}") from None
    return cls(params)


def _round_trip(ctx: RequestContext, phase: str, batch: Awaitable[T]) -> Awaitable[T]:
    """The store steps of a phase, as a span when the request is traced and the store is remote (the in-memory
    store answers in microseconds: a span of it says nothing)."""
    return _traced(ctx, "store", phase, batch) if ctx.store.remote else batch
