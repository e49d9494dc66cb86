"""Invoking an agent: which version a request runs (``resolve``, the resolver's agent half), what the version
puts into the request (``apply_version``), and the policy chain its calls run through (``chain``).

Where the caller's request and the agent's version meet (docs/agents.md):

- ``instructions``: the agent's come first; the caller's, if any, follow after a blank line (an array of items
  follows the agent's instructions as a system message). The caller adds context; it cannot drop the agent's.
- ``temperature`` / ``top_p``: a value the version sets is fixed; the caller may send the same value or none
  (another is a 400 ``agent_parameter_fixed``). Unset in the version, the caller's own is used.
- ``max_output_tokens``: the version's is a ceiling; the caller may ask for less, never more.
- ``tools``: the version's MCP servers (references to the tenant's declared servers, their approval rules the
  operator's) come first, the caller's own tools after them, under the space's tool rules.
"""

import importlib
from collections.abc import Sequence
from typing import Any

from config.agents import AGENT_KEY_RE, MAX_VERSION, AgentPolicy, AgentVersion
from config.catalog import PolicySpec
from config.tools import HttpToolSpec
from gateway.agents.registry import AgentRegistry
from gateway.agents.store import StoredAgent
from gateway.context import RequestContext, Surface
from gateway.errors import BadRequest, InvalidRequest, NotFound, PermissionDenied, StoreUnavailable
from gateway.policy import Policy, PolicyChain, load_policy
from gateway.responses.records import ResponseRecords

JSON = dict[str, Any]
_MAX_CHAINS = 1024  # agent chains kept per app (space x agent version); a full cache starts over


def shown(name: str) -> str:
    """A caller's name as an error message may repeat it: bounded."""
    return name if len(name) <= 100 else name[:100] + "…"


def builtin_policies() -> frozenset[str]:
    """The built-in policies' names: what the agents API may put in a version (code is named in YAML only)."""
    return frozenset(getattr(importlib.import_module("policies"), "ALIASES", {}))


def load_agent_policies(policies: list[AgentPolicy]) -> list[Policy]:
    """The policies of a version, built (PolicyConfigError when one is wrong)."""
    return [load_policy(PolicySpec.model_validate(p.model_dump())) for p in policies]


def _split(name: str) -> tuple[str, int | None]:
    """``key`` or ``key@version``; the version -1 when it is not a positive integer in range."""
    key, at, raw = name.rpartition("@")
    if not at:
        return name, None
    number = int(raw) if raw.isdigit() and len(raw) <= 7 else -1
    return key, number if 1 <= number <= MAX_VERSION else -1


def apply_version(body: JSON, version: AgentVersion, http_tools: Sequence[HttpToolSpec] = ()) -> JSON:
    """The request as the agent's version makes it (see the module's docstring); ``body`` is left unchanged.
    ``http_tools``: the tenant's (a version's tool is one of them or an MCP server's label; the catalogue keeps
    the two sets of names apart)."""
    out = dict(body)
    mine, theirs = version.instructions, body.get("instructions")
    if mine:
        if isinstance(theirs, list):
            out["instructions"] = [{"type": "message", "role": "system", "content": mine}, *theirs]
        else:
            out["instructions"] = f"{mine}\n\n{theirs}" if theirs else mine
    for field in ("temperature", "top_p"):
        fixed = getattr(version, field)
        if fixed is not None:
            if body.get(field) is not None and body[field] != fixed:
                raise InvalidRequest(
                    f"'{field}' is fixed by the agent's version ({fixed:g}); send {fixed:g} or leave it out.",
                    param=field,
                    code="agent_parameter_fixed",
                    input=body[field],
                )
            out[field] = fixed
    ceiling = version.max_output_tokens
    if ceiling is not None:
        asked = body.get("max_output_tokens")
        out["max_output_tokens"] = min(asked, ceiling) if isinstance(asked, int) else ceiling
    if version.tools:
        http = {t.name for t in http_tools}
        mine_tools = [
            {"type": "http_tool", "name": name} if name in http else {"type": "mcp", "server_label": name}
            for name in version.tools
        ]
        out["tools"] = mine_tools + list(body.get("tools") or [])
    return out


class Agents:
    """The agents of one app: the registry (the store's agents), and the policy chains of their versions."""

    def __init__(self, registry: AgentRegistry, records: ResponseRecords) -> None:
        self.registry = registry
        self.records = records
        self._policies: dict[tuple[str, str, int], list[Policy]] = {}  # (tenant, key, version): built once
        self._chains: dict[tuple[str, str, int], PolicyChain] = {}  # (space, key, version)

    def preload(self, tenant_id: str, key: str, version: int, policies: list[Policy]) -> None:
        """The YAML's policies of a version, built (and so validated) at start."""
        self._policies[(tenant_id, key, version)] = policies

    async def resolve(self, ctx: RequestContext, name: str | None) -> bool:
        """Whether the request invokes an agent: the body's ``model`` naming one (``key`` or ``key@version``), or,
        with ``previous_response_id`` and no version named, the agent version the conversation started on. When
        it does, ``ctx.agent``, ``ctx.agent_version``, ``ctx.alias``, ``ctx.model`` are set and ``ctx.body`` is the
        request as the version makes it. A tenant model's name is never an agent's (the catalogue forbids it)."""
        if name is not None and ctx.catalog.tenant_model(ctx.principal.tenant, name) is not None:
            return _not_agent(ctx, name)
        key, pinned = _split(name) if name is not None else (None, None)
        if key is not None and not AGENT_KEY_RE.match(key):
            return _not_agent(ctx, name or key)
        previous = ctx.body.get("previous_response_id")
        if pinned is None and isinstance(previous, str) and previous:
            started = await self._started_on(ctx, previous)
            if started is not None and (key is None or key == started[0]):
                key, pinned = started
        if key is None:
            return False
        try:
            stored = await self.registry.get(ctx.tenant_id, key)
        except StoreUnavailable:
            if ctx.surface is Surface.CLIENT or self.registry.declares(ctx.tenant_id, key):
                raise
            return False  # a model name as far as anyone can tell: the allow-list decides (it may fail open)
        if stored is None:
            return _not_agent(ctx, name or key)
        version = _version(ctx, stored, pinned)
        ctx.agent, ctx.agent_version = stored.agent, version
        ctx.alias = version.model
        ctx.model = ctx.catalog.tenant_model(ctx.principal.tenant, version.model)
        ctx.received = ctx.body
        ctx.body = apply_version(ctx.body, version, ctx.principal.tenant.http_tools)
        return True

    async def _started_on(self, ctx: RequestContext, previous: str) -> tuple[str, int] | None:
        record = await self.records.load(previous, ctx.tenant_id, ctx.space_id)
        agent = record.agent if record is not None else None
        return (str(agent["key"]), int(agent["version"])) if agent else None

    def chain(self, ctx: RequestContext, base: PolicyChain) -> PolicyChain:
        """The chain a request runs through: the space's, followed by its agent version's own policies."""
        agent, version = ctx.agent, ctx.agent_version
        if agent is None or version is None or not version.policies:
            return base
        cache = (ctx.space_id, agent.key, version.version)
        chain = self._chains.get(cache)
        if chain is None:
            owned = (ctx.tenant_id, agent.key, version.version)
            policies = self._policies.get(owned)
            if policies is None:  # a version added through the API (validated then; published: immutable)
                policies = self._policies[owned] = load_agent_policies(version.policies)
            if len(self._chains) >= _MAX_CHAINS:
                self._chains.clear()
            chain = self._chains[cache] = PolicyChain([*base.policies, *policies])
        return chain

    def own_policies(self) -> list[Policy]:
        """Every agent version's own policies built so far (the app's shutdown closes those holding clients)."""
        return [p for policies in self._policies.values() for p in policies]


def _not_agent(ctx: RequestContext, name: str) -> bool:
    """No agent by that name: the client API's 404 (its ``model`` is an agent key), elsewhere a model name."""
    if ctx.surface is Surface.CLIENT:
        raise NotFound(f"Agent '{shown(name)}' not found.", code="agent_not_found", param="model")
    return False


def _version(ctx: RequestContext, stored: StoredAgent, pinned: int | None) -> AgentVersion:
    """The version to run: the one pinned, else the latest published; refusals in the caller's terms."""
    agent = stored.agent
    if ctx.space_id not in stored.spaces:
        if ctx.surface is Surface.CLIENT:
            raise NotFound(f"Agent '{agent.key}' not found.", code="agent_not_found", param="model")
        raise PermissionDenied(f"Agent '{agent.key}' is not available in this space.", code="agent_not_allowed")
    if agent.status != "active":
        raise BadRequest(f"Agent '{agent.key}' is not active (status: {agent.status}).", code="agent_not_active")
    if pinned == -1:
        raise BadRequest("An agent's version must be a positive integer: 'key@3'.", code="invalid_agent_version")
    if pinned is None:
        latest = agent.latest_published()
        if latest is None:
            raise BadRequest(f"Agent '{agent.key}' has no published version.", code="agent_not_published")
        return latest
    version = agent.version(pinned)
    if version is None:
        raise NotFound(f"Agent '{agent.key}' has no version {pinned}.", code="agent_version_not_found")
    if not version.published:
        raise BadRequest(f"Version {pinned} of agent '{agent.key}' is not published.", code="version_not_published")
    return version
