"""Agents in the store: one hash per agent, one index per tenant, seeded from the YAML once.

Keys (the tenant id a hash tag, so a tenant's agent keys share a Redis Cluster slot):

- ``agents:{<tenant>}:index``: agent key -> created_at, every agent of the tenant;
- ``agents:{<tenant>}:a:<key>``: the agent: ``name``, ``description``, ``status``, ``created_at``, ``s:<space id>``
  per space listing it, ``v:<n>`` per version (its settings as JSON), ``p:<n>`` when version n is published
  (its time), ``next`` (the last version number given);
- ``agents:{<tenant>}:seeded``: the seed marker.

Every change is one atomic script, so two replicas (or two admins) never interleave: a version number is given
once, a version is published once, and a published version's ``v:<n>`` is never written again.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from config.agents import Agent, AgentSettings, AgentVersion
from gateway.store import MemoryData, Script, Store

MAX_VERSIONS = 1000

_CREATE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
return 1
"""

_SEED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local p = 1
for k = 3, #KEYS do
  local key, created, n = ARGV[p], ARGV[p + 1], tonumber(ARGV[p + 2])
  p = p + 3
  if redis.call('EXISTS', KEYS[k]) == 0 then
    redis.call('HSETNX', KEYS[2], key, created)
    for i = 0, n - 1 do redis.call('HSET', KEYS[k], ARGV[p + 2 * i], ARGV[p + 2 * i + 1]) end
  end
  p = p + 2 * n
end
redis.call('SET', KEYS[1], '1')
return 1
"""

_ADD_VERSION = f"""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = redis.call('HINCRBY', KEYS[1], 'next', 1)
if n > {MAX_VERSIONS} then
  redis.call('HINCRBY', KEYS[1], 'next', -1)
  return -1
end
redis.call('HSET', KEYS[1], 'v:' .. n, ARGV[1])
return n
"""

_PUBLISH = """
if redis.call('HEXISTS', KEYS[1], 'v:' .. ARGV[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], 'p:' .. ARGV[1], ARGV[2]) == 0 then return -1 end
return 1
"""

_EDIT_DRAFT = """
if redis.call('HEXISTS', KEYS[1], 'v:' .. ARGV[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'p:' .. ARGV[1]) == 1 then return -1 end
redis.call('HSET', KEYS[1], 'v:' .. ARGV[1], ARGV[2])
return 1
"""

_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""


# 0: no such agent; 1: it was not listed there; 2: unlisted
_UNLIST = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return 1 + redis.call('HDEL', KEYS[1], ARGV[1])
"""


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _hash(data: MemoryData, key: str) -> dict[str, bytes]:
    found = data.get(key)
    if found is None:
        found = {}
        data.put(key, found)
    return found  # type: ignore[no-any-return]


def _set_pairs(target: dict[str, bytes], args: Sequence[Any]) -> None:
    for i in range(0, len(args) - 1, 2):
        target[str(args[i])] = _bytes(args[i + 1])


def _create_fallback(data: MemoryData, keys: Sequence[str], args: Sequence[Any]) -> int:
    if str(args[0]) in (data.get(keys[0]) or {}) or data.alive(keys[1]):
        return 0
    _hash(data, keys[0])[str(args[0])] = _bytes(args[1])
    _set_pairs(_hash(data, keys[1]), args[2:])
    return 1


def _seed_fallback(data: MemoryData, keys: Sequence[str], args: Sequence[Any]) -> int:
    if data.alive(keys[0]):
        return 0
    p = 0
    for agent_key in keys[2:]:
        key, created, n = str(args[p]), args[p + 1], int(args[p + 2])
        p += 3
        if not data.alive(agent_key):
            _hash(data, keys[1]).setdefault(key, _bytes(created))
            _set_pairs(_hash(data, agent_key), args[p : p + 2 * n])
        p += 2 * n
    data.put(keys[0], b"1")
    return 1


def _add_version_fallback(data: MemoryData, keys: Sequence[str], args: Sequence[Any]) -> int:
    agent = data.get(keys[0])
    if agent is None:
        return 0
    n = int(agent.get("next", b"0")) + 1
    if n > MAX_VERSIONS:
        return -1
    agent["next"], agent[f"v:{n}"] = str(n).encode(), _bytes(args[0])
    return n


def _unpublished_write(data: MemoryData, keys: Sequence[str], args: Sequence[Any], field: str) -> int:
    """Write ``<field>:<n>`` of a version not yet published: 0 when there is no version n, -1 when published."""
    agent = data.get(keys[0]) or {}
    if f"v:{args[0]}" not in agent:
        return 0
    if f"p:{args[0]}" in agent:
        return -1
    agent[f"{field}:{args[0]}"] = _bytes(args[1])
    return 1


def _publish_fallback(data: MemoryData, keys: Sequence[str], args: Sequence[Any]) -> int:
    return _unpublished_write(data, keys, args, "p")


def _edit_draft_fallback(data: MemoryData, keys: Sequence[str], args: Sequence[Any]) -> int:
    return _unpublished_write(data, keys, args, "v")


def _update_fallback(data: MemoryData, keys: Sequence[str], args: Sequence[Any]) -> int:
    agent = data.get(keys[0])
    if agent is None:
        return 0
    _set_pairs(agent, args)
    return 1


def _unlist_fallback(data: MemoryData, keys: Sequence[str], args: Sequence[Any]) -> int:
    agent = data.get(keys[0])
    if agent is None:
        return 0
    return 1 + (agent.pop(str(args[0]), None) is not None)


@dataclass(frozen=True, slots=True)
class StoredAgent:
    """An agent as the store holds it, with the spaces that list it."""

    agent: Agent
    spaces: frozenset[str]


def agent_fields(agent: Agent, created_at: str, spaces: Sequence[str], stamp: str) -> list[str]:
    """The hash fields of a new agent (its versions included: the YAML's) as a flat field/value list."""
    fields = [
        *("name", agent.name, "description", agent.description, "status", agent.status, "created_at", created_at),
    ]
    for space_id in spaces:
        fields += [f"s:{space_id}", stamp]
    for v in agent.versions:
        fields += [f"v:{v.version}", settings_json(v)]
        if v.published:
            fields += [f"p:{v.version}", v.published_at or stamp]
    if agent.versions:
        fields += ["next", str(max(v.version for v in agent.versions))]
    return fields


def settings_json(settings: AgentSettings) -> str:
    return orjson.dumps(settings.model_dump(mode="json", include=set(AgentSettings.model_fields))).decode()


def parse_agent(key: str, raw: dict[str, bytes]) -> StoredAgent | None:
    """The agent of a hash read from the store; None when the hash is empty."""
    if not raw:
        return None
    text = {name: value.decode() for name, value in raw.items()}
    versions = []
    for name, value in text.items():
        if name.startswith("v:"):
            number = int(name[2:])
            published = text.get(f"p:{number}")
            settings = orjson.loads(value)
            versions.append(
                AgentVersion(version=number, published=published is not None, published_at=published, **settings)
            )
    versions.sort(key=lambda v: v.version)
    agent = Agent(
        key=key,
        name=text.get("name", key),
        description=text.get("description", ""),
        status=text.get("status", "draft"),
        created_at=text.get("created_at") or None,
        versions=versions,
    )
    spaces = frozenset(name[2:] for name in text if name.startswith("s:"))
    return StoredAgent(agent, spaces)


class AgentScripts:
    """The agents' atomic scripts on one store."""

    def __init__(self, store: Store) -> None:
        self.create: Script = store.script(_CREATE, _create_fallback)
        self.seed: Script = store.script(_SEED, _seed_fallback)
        self.add_version: Script = store.script(_ADD_VERSION, _add_version_fallback)
        self.publish: Script = store.script(_PUBLISH, _publish_fallback)
        self.edit_draft: Script = store.script(_EDIT_DRAFT, _edit_draft_fallback)
        self.update: Script = store.script(_UPDATE, _update_fallback)
        self.unlist: Script = store.script(_UNLIST, _unlist_fallback)


def index_key(tenant_id: str) -> str:
    return f"agents:{{{tenant_id}}}:index"


def agent_key(tenant_id: str, key: str) -> str:
    return f"agents:{{{tenant_id}}}:a:{key}"


def seeded_key(tenant_id: str) -> str:
    return f"agents:{{{tenant_id}}}:seeded"
