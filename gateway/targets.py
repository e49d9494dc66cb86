"""The one resolver: what a request runs on, decided once, before the policy chain.

``resolve_target`` turns (the space, the body's ``model``) into ``ctx.alias`` (the name asked for, or the space's
default model when the body names none) and ``ctx.model`` (the tenant's model of that name, or None when the
tenant has none). On the Responses surfaces the name may be an agent's (``key`` or ``key@version``; a continued
conversation stays on the agent version it started with): then ``ctx.agent`` and ``ctx.agent_version`` are set,
``ctx.alias`` / ``ctx.model`` are the version's model and the body is the request as the version makes it
(``gateway.agents``). It runs whatever policies the space has, so a request routes the same way in every space;
policies and the call read the result from the context and never resolve again. Whether the model may be used in
the space is the ``allow_list`` policy's decision (one store step of the chain's round trip): a name the tenant
does not know is its 403, or, in a space without an allow-list, a 404 ``model_not_found`` when the call needs
the model (``target_model``).

The Responses routes resolve in ``ResponsesService.admit`` (the agent's tools must be known before they are
checked); every other route in ``Gateway.run_chain``. Either way it runs once (``ctx.resolved``).
"""

from typing import TYPE_CHECKING

from config.catalog import TenantModel
from gateway.context import RequestContext
from gateway.errors import InvalidRequest, NotFound

if TYPE_CHECKING:
    from gateway.agents import Agents


async def resolve_target(ctx: RequestContext, agents: "Agents | None" = None) -> None:
    """Set ``ctx.alias`` and ``ctx.model`` (and an agent's fields); 400 when there is no name to resolve or it
    is not a string. Runs once per request: a second call does nothing."""
    if ctx.resolved:
        return
    ctx.resolved = True
    alias = ctx.body.get("model")
    if alias is not None and not isinstance(alias, str):
        raise InvalidRequest("'model' must be a string.", param="model", kind="type_error")
    if agents is not None and ctx.surface.api == "responses" and await agents.resolve(ctx, alias):
        return
    if alias is None:
        alias = ctx.space.default_model
        if alias is None:
            raise InvalidRequest("'model' is required: this space has no default model.", param="model")
    ctx.alias = alias
    ctx.model = ctx.catalog.tenant_model(ctx.principal.tenant, alias)


def target_model(ctx: RequestContext) -> TenantModel:
    """The model the call goes to (a policy may have changed it); 404 when the tenant has none by that name."""
    if ctx.model is None:
        raise NotFound(f"The model '{ctx.alias_shown}' does not exist.", code="model_not_found", param="model")
    return ctx.model
