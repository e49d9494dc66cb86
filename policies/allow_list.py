"""allow_list: default deny. Only the space's allowed models can be used; no ``model`` means the space default."""

import logging
from typing import Any, Literal, NoReturn

from gateway import (
    PermissionDenied,
    Policy,
    PolicyParams,
    Reply,
    RequestContext,
    StoreStep,
    StoreUnavailable,
)

log = logging.getLogger(__name__)


class AllowList(Policy):
    """Refuses the request's model (``ctx.model``, resolved before the chain from the body's name or the space
    default) unless it is allowed in the space; a name the tenant does not know is refused the same way.

    The check reads the space's allowed models in the store, as a step of the chain's one round trip. The
    refusal is a 403 listing the allowed aliases; the upstream is never called.

    When the store cannot be reached the allow-list never lets every model through: failing open, it decides
    from the catalogue's own list for the space (the YAML the process loaded), which misses only the changes
    made since through the allowed-models API.
    """

    name = "allow_list"

    class Params(PolicyParams):
        # None: follow the chain (open when a policy in it fails open and none fails closed)
        on_store_error: Literal["closed", "open"] | None = None

    params: Params

    async def before(self, ctx: RequestContext) -> Reply | StoreStep | None:
        model = ctx.model  # resolved before the chain (gateway.targets): the name, or the space default
        if model is None:
            await self.refuse(ctx)
        script, keys, args = ctx.catalog.allowed_call(ctx.space_id, model)
        mode = self.params.on_store_error
        unavailable = None if mode == "closed" else self.from_catalogue
        return StoreStep(script, keys, args, then=self.checked, unavailable=unavailable, follows_chain=mode is None)

    async def checked(self, ctx: RequestContext, allowed: Any) -> None:
        if not allowed:
            ctx.model = None
            await self.refuse(ctx)

    def from_catalogue(self, ctx: RequestContext, error: StoreUnavailable) -> None:
        """The store is unreachable and the chain fails open: the catalogue's list for the space decides."""
        assert ctx.model is not None  # set in before
        if not ctx.catalog.in_catalogue(ctx.space_id, ctx.model):
            ctx.model = None
            raise refusal(ctx, ctx.catalog.catalogue_aliases(ctx.space_id))
        log.warning("allow_list decided from the catalogue for request %s: the store is unreachable", ctx.request_id)

    async def refuse(self, ctx: RequestContext) -> NoReturn:
        try:
            allowed = [a.model.alias for a in await ctx.catalog.allowed_models(ctx.principal.tenant, ctx.space)]
        except StoreUnavailable:  # the refusal stands without the store; only its list comes from the YAML
            allowed = ctx.catalog.catalogue_aliases(ctx.space_id)
        raise refusal(ctx, allowed)


def refusal(ctx: RequestContext, allowed: list[str]) -> PermissionDenied:
    return PermissionDenied(
        f"Model '{ctx.alias_shown}' is not allowed in space '{ctx.space.name or ctx.space.id}'. "
        f"Allowed models: {', '.join(allowed) or '(none)'}.",
        code="model_not_allowed",
        param="model",
    )
