"""audit: records every request a policy (or validation inside the chain) refused in the space's audit log,
and every tool call the gateway ran for a request (the tool loop: server, tool, duration, outcome; the arguments
only with ``include_prompts``).

Who (principal and key name), when, what (route, space, model alias, status, error code and message); never
the prompt or a secret unless ``include_prompts: true``. Put it first in the chain: its ``after`` runs only if
its ``before`` did, so it sees the refusals of every policy after it. Entries are read through
``GET /v1/spaces/{space_id}/audit``.
"""

import logging
from typing import Any

from pydantic import Field

from gateway import AuditLog, GatewayError, Policy, PolicyParams, RequestContext, StoreUnavailable

log = logging.getLogger("gateway.policy.audit")
PROMPT_FIELDS = ("messages", "input", "instructions")


class Audit(Policy):
    name = "audit"

    class Params(PolicyParams):
        include_prompts: bool = False
        ttl_days: int = Field(400, ge=1)

    def __init__(self, params: PolicyParams) -> None:
        super().__init__(params)
        assert isinstance(params, Audit.Params)
        self.include_prompts = params.include_prompts
        self.ttl_seconds = params.ttl_days * 24 * 3600
        self._logs: dict[int, AuditLog] = {}

    def _log(self, ctx: RequestContext) -> AuditLog:
        audit = self._logs.get(id(ctx.store))
        if audit is None:
            audit = AuditLog(ctx.store, self.ttl_seconds)
            self._logs = {id(ctx.store): audit}
        return audit

    async def after(self, ctx: RequestContext) -> None:
        try:
            if ctx.tool_calls:
                await self._log(ctx).record_request(ctx, "tool_call", "tools.executed", self._tool_fields(ctx))
            if ctx.outcome == "rejected":
                await self._log(ctx).record_request(ctx, "policy_denial", "request.rejected", self._fields(ctx))
        except StoreUnavailable:
            log.error("audit entry lost (store unreachable): %s on %s", ctx.route, ctx.space_id)

    def _tool_fields(self, ctx: RequestContext) -> dict[str, Any]:
        keep = self.include_prompts
        calls = [{k: v for k, v in call.items() if keep or k != "arguments"} for call in ctx.tool_calls]
        return {"model": ctx.alias[:200] or None, "status": ctx.status_code, "calls": calls}

    def _fields(self, ctx: RequestContext) -> dict[str, Any]:
        error = ctx.error
        fields: dict[str, Any] = {
            "model": ctx.alias[:200] or None,  # the name asked for (or the space default), as resolved
            "status": ctx.status_code,
            "error": {
                "code": error.code if isinstance(error, GatewayError) else None,
                "message": error.message if isinstance(error, GatewayError) else type(error).__name__,
            },
            "policies": list(ctx.governance_applied),
        }
        if self.include_prompts:
            fields["request"] = {k: ctx.body[k] for k in PROMPT_FIELDS if k in ctx.body}
        return fields
