"""Skill versions published through the native API (``POST /v1/spaces/{id}/skills``), kept in the store so every
replica runs them at once.

A space's published versions are one hash (``skills-space:<space>``: ``<slug>@<version>`` → the manifest as
JSON); the tenant's hash (``skills-tenant:<tenant>``: ``<slug>@<version>`` → the manifest's digest) is what
keeps a version immutable: publishing it again, into any space of the tenant, is refused unless it is the very
same manifest, and never into a space that has it already. One atomic script checks and writes both.

Reading a space's versions costs one round trip; a manifest is parsed and its schemas checked once per process
(cached by its digest), not on every read.
"""

import hashlib
from collections.abc import Sequence
from typing import Any

import orjson

from config.skills import SkillManifest
from gateway.store import MemoryData, Store

MAX_PER_SPACE = 1000  # published versions one space holds
PUBLISHED, IN_SPACE, CHANGED, FULL = 0, 1, 2, 3

_PUBLISH = """
local known = redis.call('HGET', KEYS[1], ARGV[1])
if known and known ~= ARGV[2] then return 2 end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 1 end
if redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[4]) then return 3 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 0
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _publish_fallback(data: MemoryData, keys: Sequence[str], args: Sequence[Any]) -> int:
    tenant, space = data.get(keys[0]) or {}, data.get(keys[1]) or {}
    field, digest = _text(args[0]), _text(args[1]).encode()
    known = tenant.get(field)
    if known is not None and known != digest:
        return CHANGED
    if field in space:
        return IN_SPACE
    if len(space) >= int(args[3]):
        return FULL
    for key, found in ((keys[0], tenant), (keys[1], space)):
        if not found:
            data.put(key, found)
    tenant[field] = digest
    space[field] = args[2] if isinstance(args[2], bytes) else _text(args[2]).encode()
    return PUBLISHED


def manifest_json(skill: SkillManifest) -> bytes:
    """The manifest as stored, in one canonical form (sorted keys): its digest names its content."""
    return orjson.dumps(skill.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)


def digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


class PublishedSkills:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._publish = store.script(_PUBLISH, _publish_fallback)
        self._parsed: dict[str, SkillManifest] = {}  # digest -> manifest (published manifests are immutable)

    async def publish(self, tenant_id: str, space_id: str, skill: SkillManifest) -> int:
        """``PUBLISHED``, or why not: ``IN_SPACE`` (the space has that version), ``CHANGED`` (the tenant has
        another manifest under that version), ``FULL`` (the space holds ``MAX_PER_SPACE``)."""
        raw = manifest_json(skill)
        keys = [f"skills-tenant:{tenant_id}", f"skills-space:{space_id}"]
        return int(await self._publish(keys, [f"{skill.slug}@{skill.version}", digest(raw), raw, MAX_PER_SPACE]))

    async def known(self, tenant_id: str, skill: SkillManifest) -> str | None:
        """The digest the tenant holds for that slug and version (None: never published)."""
        found = await self.store.hget(f"skills-tenant:{tenant_id}", f"{skill.slug}@{skill.version}")
        return found.decode() if found is not None else None

    async def in_space(self, space_id: str) -> list[SkillManifest]:
        """Every version published into the space (one round trip)."""
        out = []
        for raw in (await self.store.hgetall(f"skills-space:{space_id}")).values():
            key = digest(raw)
            skill = self._parsed.get(key)
            if skill is None:
                skill = SkillManifest.model_validate(orjson.loads(raw)).model_copy(update={"source": "published"})
                self._parsed[key] = skill
            out.append(skill)
        return out
