"""allow_list: default deny. Only the space's allowed models can be used; no ``model`` means the space default."""

from gateway import InvalidRequest, PermissionDenied, Policy, Reply, RequestContext


class AllowList(Policy):
    """Resolves ``ctx.model`` from the request's alias (or the space default) and refuses anything not allowed.

    The refusal is a 403 listing the allowed aliases; the upstream is never called.
    """

    name = "allow_list"

    async def before(self, ctx: RequestContext) -> Reply | None:
        alias = ctx.body.get("model")
        if alias is None:
            alias = ctx.space.default_model
            if alias is None:
                raise InvalidRequest("'model' is required: this space has no default model.", param="model")
        model = ctx.catalog.tenant_model(ctx.principal.tenant, alias)
        if model is None or not await ctx.catalog.is_allowed(ctx.space, model):
            allowed = [a.model.alias for a in await ctx.catalog.allowed_models(ctx.principal.tenant, ctx.space)]
            raise PermissionDenied(
                f"Model '{alias}' is not allowed in space '{ctx.space.name or ctx.space.id}'. "
                f"Allowed models: {', '.join(allowed) or '(none)'}.",
                code="model_not_allowed",
                param="model",
            )
        ctx.model = model
        return None
