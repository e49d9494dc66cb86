"""The policy contract (the hookspec) and the chain that runs it.

A policy is a class with a ``Params`` pydantic model (validated at start, ``extra="forbid"``) and two hooks:

``async before(ctx) -> Reply | None``
    Runs in chain order before the upstream call. May change ``ctx.body``/``ctx.model``; raise a
    ``GatewayError`` to reject (undo its own partial work first: its ``after`` will not run); or return a
    ``Reply`` to answer without calling the upstream (later policies' ``before`` then do not run).

``async after(ctx) -> None``
    Runs in reverse order for every policy whose ``before`` returned, on every exit path: success,
    rejection by a later policy, upstream error, client disconnect, cancellation. ``ctx.outcome``,
    ``ctx.status_code``, ``ctx.error``, ``ctx.usage`` and ``ctx.cost_micros`` say what happened; for
    streams it runs after the last byte, with the final usage. Reservations and claims are released here.
    Its errors are logged, never raised over the request's own outcome.

``wrap_send(ctx, send) -> send`` (optional)
    Sees every ASGI message of the answer on its way out (status and headers, then body chunks: whole SSE
    events for streams), and may change them: capture them for replay, mask text. Wrapped only for policies
    whose ``before`` returned; the last policy in the chain sees the messages first. Error answers raised
    inside the chain pass through it too, rendered in the caller's shape.

Policies are named in the catalogue by a short alias (``policies.ALIASES``) or ``"module:Class"``; the
built-ins go through the same loader as third-party ones. The names of the policies whose ``before``
returned are recorded in ``ctx.governance_applied``.
"""

import asyncio
import importlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.types import Send

from config.catalog import PolicySpec
from gateway.context import Reply, RequestContext
from gateway.errors import GatewayError, UpstreamError, render_error
from gateway.importer import ImportFromStringError, import_from_string

log = logging.getLogger("gateway.policy")


class PolicyParams(BaseModel):
    """Base of every policy's ``Params``: unknown keys are an error at start."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Policy:
    """Base class with no-op hooks; subclass it and override what the policy needs."""

    name: ClassVar[str] = "policy"
    Params: ClassVar[type[PolicyParams]] = PolicyParams

    def __init__(self, params: PolicyParams) -> None:
        self.params = params

    async def before(self, ctx: RequestContext) -> Reply | None:
        """Check or change the request; raise to reject; return a Reply to answer without the upstream."""
        return None

    async def after(self, ctx: RequestContext) -> None:
        """Record or release; runs on every exit path for every policy whose ``before`` returned."""
        return None

    def wrap_send(self, ctx: RequestContext, send: Send) -> Send:
        """Return a ``send`` that sees (and may change) the answer's messages; the default adds nothing."""
        return send


class PolicyConfigError(Exception):
    """A policy named in the catalogue cannot be loaded or its params are invalid."""


class PolicyChain:
    """The ordered policies of one space."""

    def __init__(self, policies: Sequence[Policy]) -> None:
        self.policies = tuple(policies)
        # only policies that override wrap_send cost anything per message
        self.wrapping = frozenset(id(p) for p in self.policies if type(p).wrap_send is not Policy.wrap_send)

    async def run(self, ctx: RequestContext, send: Send, call: Callable[[Send], Awaitable[None]]) -> None:
        """Run ``before`` hooks, then ``call(send)`` (which answers the client), then ``after`` hooks.

        A Reply from a ``before`` hook is sent as the answer. A GatewayError raised before the answer started
        is rendered here (through the policies' ``wrap_send``), in the shape of the caller's surface.
        """
        ran: list[Policy] = []
        sends = [send]  # the send as wrapped by each policy that ran so far: sends[-1] is the outermost
        try:
            await self._before(ctx, sends, ran)
            if ctx.outcome != "replayed":
                await call(sends[-1])
                if ctx.outcome == "pending":
                    ctx.outcome = "ok"
        except GatewayError as exc:
            started = ctx.status_code is not None  # before _record_failure sets it
            _record_failure(ctx, exc)
            if started:  # the answer had started: nothing more can be said
                raise
            status, headers, body = render_error(exc, ctx.native)
            ctx.status_code = status
            await sends[-1]({"type": "http.response.start", "status": status, "headers": headers})
            await sends[-1]({"type": "http.response.body", "body": body})
        except asyncio.CancelledError as exc:
            ctx.outcome, ctx.error = ("disconnected" if ctx.outcome == "pending" else ctx.outcome), exc
            raise
        except BaseException as exc:
            _record_failure(ctx, exc)
            raise
        finally:
            for policy in reversed(ran):
                try:
                    await policy.after(ctx)
                except Exception:
                    log.exception("policy %s failed in after()", policy.name)

    async def _before(self, ctx: RequestContext, sends: list[Send], ran: list[Policy]) -> None:
        """The ``before`` hooks in order, wrapping the send as they go. A Reply is sent here, unwrapped."""
        for policy in self.policies:
            reply = await policy.before(ctx)
            ran.append(policy)
            ctx.governance_applied.append(policy.name)
            if id(policy) in self.wrapping:
                sends.append(policy.wrap_send(ctx, sends[-1]))
            if reply is not None:
                ctx.outcome, ctx.status_code = "replayed", reply.status
                await sends[0]({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
                await sends[0]({"type": "http.response.body", "body": reply.body})
                return


def _record_failure(ctx: RequestContext, exc: BaseException) -> None:
    ctx.error = exc
    if ctx.outcome == "pending":
        if isinstance(exc, UpstreamError):
            ctx.outcome = "upstream_error"
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
