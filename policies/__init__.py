"""Built-in policies. They import only the extension API exported by ``gateway`` and are loaded by name,
through the same door as any third-party policy (``use: "package.module:Class"`` in the catalogue)."""

ALIASES: dict[str, str] = {
    "allow_list": "policies.allow_list:AllowList",
    "idempotency": "policies.idempotency:Idempotency",
    "cost": "policies.cost:Cost",
    "budget": "policies.budget:Budget",
    "rate_limit": "policies.rate_limit:RateLimit",
    "guardrails": "policies.guardrails:Guardrails",
    "audit": "policies.audit:Audit",
}
