"""allow_list: default deny. Only the space's allowed models can be used; no ``model`` means the space default."""

from typing import Any, NoReturn

from gateway import InvalidRequest, PermissionDenied, Policy, Reply, RequestContext, StoreStep


class AllowList(Policy):
    """Resolves ``ctx.model`` from the request's alias (or the space default) and refuses anything not allowed.

    The check reads the space's allowed models in the store, as a step of the chain's one round trip. The
    refusal is a 403 listing the allowed aliases; the upstream is never called.
    """

    name = "allow_list"

    async def before(self, ctx: RequestContext) -> Reply | StoreStep | None:
        alias = ctx.body.get("model")
        if alias is None:
            alias = ctx.space.default_model
            if alias is None:
                raise InvalidRequest("'model' is required: this space has no default model.", param="model")
        if not isinstance(alias, str):  # before the catalogue lookup: a list or object there would crash it
            raise InvalidRequest("'model' must be a string.", param="model", kind="type_error")
        model = ctx.catalog.tenant_model(ctx.principal.tenant, alias)
        if model is None:
            await self.refuse(ctx, alias)
        ctx.model = model  # later policies (budgets) price the request with it; the step below may still refuse
        script, keys, args = ctx.catalog.allowed_call(ctx.space_id, model)
        return StoreStep(script, keys, args, then=self.checked)

    async def checked(self, ctx: RequestContext, allowed: Any) -> None:
        if not allowed:
            ctx.model = None
            await self.refuse(ctx, ctx.body.get("model") or ctx.space.default_model)

    async def refuse(self, ctx: RequestContext, alias: Any) -> NoReturn:
        allowed = [a.model.alias for a in await ctx.catalog.allowed_models(ctx.principal.tenant, ctx.space)]
        raise refusal(ctx, alias, allowed)


def refusal(ctx: RequestContext, alias: Any, allowed: list[str]) -> PermissionDenied:
    return PermissionDenied(
        f"Model '{alias}' is not allowed in space '{ctx.space.name or ctx.space.id}'. "
        f"Allowed models: {', '.join(allowed) or '(none)'}.",
        code="model_not_allowed",
        param="model",
    )
