"""The tenants' agents, kept in the store (``gateway.agents.store``): seeded from the YAML once, then changed
through the native agents API, so every replica sees a change at once.

A store can lose what it holds (a Redis restarted without persistence, a flush): the seed marker tells. Reading
an agent the YAML declares that the store does not have, or listing a tenant's agents, seeds the tenant again
first (atomically: one replica seeds it; an agent the store still has is left as it is).
"""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from config.agents import Agent, AgentHead, AgentSettings
from config.catalog import Catalogue
from gateway.agents.store import (
    AgentScripts,
    StoredAgent,
    agent_fields,
    agent_key,
    index_key,
    parse_agent,
    seeded_key,
    settings_json,
)
from gateway.catalog import now_iso
from gateway.store import MemoryData, Store

_READ = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HGETALL', key) end
return out
"""


def _read_fallback(data: MemoryData, keys: Sequence[str], args: Sequence[Any]) -> list[list[Any]]:
    out: list[list[Any]] = []
    for key in keys:
        found = data.get(key) or {}
        out.append([x for pair in found.items() for x in pair])
    return out


def _pairs(flat: Sequence[Any]) -> dict[str, bytes]:
    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    return {text(flat[i]): flat[i + 1] for i in range(0, len(flat) - 1, 2)}


class AgentRegistry:
    """Read and change agents; every change is one atomic script (``AgentScripts``)."""

    def __init__(self, catalogue: Catalogue, store: Store) -> None:
        self.store = store
        self.scripts = AgentScripts(store)
        self._read = store.script(_READ, _read_fallback)
        self._yaml: dict[str, dict[str, tuple[Agent, list[str]]]] = {}  # tenant id -> key -> agent, its spaces
        for tenant in catalogue.tenants:
            self._yaml[str(tenant.id)] = {
                a.key: (a, [str(s.id) for s in tenant.spaces if a.key in s.agents]) for a in tenant.agents
            }

    async def seed(self) -> int:
        """Seed every tenant the store does not know; how many were seeded."""
        seeded = 0
        for tenant_id, agents in self._yaml.items():
            if agents:
                seeded += await self._seed(tenant_id)
        return seeded

    async def _seed(self, tenant_id: str) -> int:
        agents = self._yaml.get(tenant_id) or {}
        keys = [seeded_key(tenant_id), index_key(tenant_id)]
        args: list[Any] = []
        stamp = now_iso()
        for key, (agent, spaces) in agents.items():
            created = agent.created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if agent.created_at else stamp
            fields = agent_fields(agent, created, spaces, stamp)
            keys.append(agent_key(tenant_id, key))
            args += [key, created, len(fields) // 2, *fields]
        return int(await self.scripts.seed(keys, args))

    def declares(self, tenant_id: str, key: str) -> bool:
        """Whether the YAML declares that agent (what is known of it without the store)."""
        return key in (self._yaml.get(tenant_id) or {})

    async def get(self, tenant_id: str, key: str) -> StoredAgent | None:
        """The agent of that key, or None (one round trip; a YAML agent the store lost is seeded again)."""
        raw = await self.store.hgetall(agent_key(tenant_id, key))
        if not raw and key in (self._yaml.get(tenant_id) or {}) and await self._seed(tenant_id):
            raw = await self.store.hgetall(agent_key(tenant_id, key))
        return parse_agent(key, raw)

    async def list(self, tenant_id: str) -> list[StoredAgent]:
        """Every agent of the tenant, oldest first (two round trips, three when the tenant is seeded again)."""
        if self._yaml.get(tenant_id):
            await self._seed(tenant_id)
        index = await self.store.hgetall(index_key(tenant_id))
        order = sorted(index, key=lambda k: (index[k], k))
        if not order:
            return []
        raw = await self._read([agent_key(tenant_id, k) for k in order], [])
        found = (parse_agent(k, _pairs(flat or [])) for k, flat in zip(order, raw, strict=True))
        return [a for a in found if a is not None]

    async def create(self, tenant_id: str, head: AgentHead, space_id: str) -> StoredAgent | None:
        """A new agent (no versions yet), listed in ``space_id``; None when the key is taken."""
        if self._yaml.get(tenant_id):
            await self._seed(tenant_id)  # or a lost YAML agent's seed would not see it taken
        stamp = now_iso()
        agent = Agent(**head.model_dump(), created_at=datetime.now(UTC))
        fields = agent_fields(agent, stamp, [space_id], stamp)
        keys = [index_key(tenant_id), agent_key(tenant_id, head.key)]
        if not await self.scripts.create(keys, [head.key, stamp, *fields]):
            return None
        return await self.get(tenant_id, head.key)

    async def update(self, tenant_id: str, key: str, fields: dict[str, str]) -> bool:
        """Change an agent's own fields (name, description, status); False when there is no such agent."""
        flat = [x for pair in fields.items() for x in pair]
        return bool(await self.scripts.update([agent_key(tenant_id, key)], flat))

    async def list_in(self, tenant_id: str, key: str, space_id: str) -> bool:
        """List the agent in one more space; False when there is no such agent."""
        return await self.update(tenant_id, key, {f"s:{space_id}": now_iso()})

    async def unlist(self, tenant_id: str, key: str, space_id: str) -> bool:
        """Take the agent out of a space's list; False when it was not listed there (or does not exist)."""
        return int(await self.scripts.unlist([agent_key(tenant_id, key)], [f"s:{space_id}"])) == 2

    async def add_version(self, tenant_id: str, key: str, settings: AgentSettings) -> int:
        """The new (draft) version's number; 0 when there is no such agent, -1 when it has too many versions."""
        return int(await self.scripts.add_version([agent_key(tenant_id, key)], [settings_json(settings)]))

    async def edit_draft(self, tenant_id: str, key: str, version: int, settings: AgentSettings) -> int:
        """1 when changed; 0 when there is no such version, -1 when it is published (immutable)."""
        keys = [agent_key(tenant_id, key)]
        return int(await self.scripts.edit_draft(keys, [version, settings_json(settings)]))

    async def publish(self, tenant_id: str, key: str, version: int) -> int:
        """1 when published now; 0 when there is no such version, -1 when it was published already."""
        return int(await self.scripts.publish([agent_key(tenant_id, key)], [version, now_iso()]))
