"""cost: the request's price as a response header, and spend counters per tenant, space, key and model per day.

The core prices every request (``ctx.cost_micros``, integer micro-dollars, set with ``ctx.usage``). This
policy shows it and counts it:

* ``x-gateway-cost-usd: 0.000043`` on non-streaming answers of the OpenAI routes (usage is known before the
  answer starts). A stream's cost is only known after its last byte, too late for a header: it is in the
  counters and, on the native Responses route, in the stored response's ``usage.cost_usd``.
* In ``after``, one script (a step of the chain's store round trip) adds the request to the tenant's and the
  space's counters of the UTC day (cost, input and output tokens, one request; the same per model, per API
  key, and per agent and agent version when the request invokes one), read back through
  ``GET /v1/spaces/{space_id}/usage``. Rejected and replayed requests are not counted.

Counting is best effort: when the store is unreachable the counters miss that request (logged); the answer is
never changed for it.
"""

import logging
from typing import Any

from pydantic import Field
from starlette.types import Message, Send

from gateway import Policy, PolicyParams, RequestContext, SpendCounters, StoreStep, StoreUnavailable, usd

log = logging.getLogger("policies.cost")
_HEADER = b"x-gateway-cost-usd"


class Cost(Policy):
    name = "cost"

    class Params(PolicyParams):
        header: bool = Field(True, description="Add x-gateway-cost-usd to non-streaming OpenAI-route answers.")
        retention_days: int = Field(40, ge=1, le=3660, description="How long a day's counters are kept.")

    params: Params

    def __init__(self, params: PolicyParams) -> None:
        super().__init__(params)
        self.counters = SpendCounters(ttl_seconds=self.params.retention_days * 86400)

    def wrap_send(self, ctx: RequestContext, send: Send) -> Send:
        if ctx.native or ctx.stream or not self.params.header:
            return send

        async def with_cost(message: Message) -> None:
            if message["type"] == "http.response.start" and ctx.usage is not None:
                headers: list[Any] = list(message.get("headers") or [])
                headers.append((_HEADER, usd(ctx.cost_micros).encode()))
                message = {**message, "headers": headers}
            await send(message)

        return with_cost

    async def after(self, ctx: RequestContext) -> StoreStep | None:
        if ctx.outcome in ("rejected", "replayed") and ctx.usage is None:
            return None
        usage = ctx.usage
        script, keys, args = self.counters.record_call(
            ctx.store,
            tenant_id=ctx.tenant_id,
            space_id=ctx.space_id,
            model_id=str(ctx.model.id) if ctx.model is not None else None,
            key_name=ctx.principal.key.name,
            cost_micros=ctx.cost_micros,
            input_tokens=usage.input_tokens if usage else 0,
            output_tokens=usage.output_tokens if usage else 0,
            agent=ctx.agent_ref,
        )
        return StoreStep(script, keys, args, unavailable=_not_counted)


def _not_counted(ctx: RequestContext, error: StoreUnavailable) -> None:
    log.warning("spend counters not updated for request %s: the store is unreachable", ctx.request_id)
