"""Which skills each space may run (the catalogue's manifests and the versions published through the API, by
slug, every version), their API shape, and the checks on an execution's inputs and outputs (``jsonschema``,
every failing path reported)."""

from typing import Any

import orjson

from config import Catalogue
from config.skills import PLACEHOLDER, SkillManifest
from gateway.skills.published import CHANGED, IN_SPACE, PublishedSkills, manifest_json
from gateway.store import Store

MAX_ERRORS = 20  # failing paths reported for one document
_MAX_SHOWN = 200  # characters of a caller's value repeated in an error


class Skills:
    """The skills of every space, the catalogue's and those published through the API (``PublishedSkills``):
    ``versions(space_id, slug)`` newest first."""

    def __init__(self, catalogue: Catalogue, store: Store) -> None:
        self.published = PublishedSkills(store)
        self._spaces: dict[str, dict[str, list[SkillManifest]]] = {}
        self._declared: dict[str, dict[tuple[str, str], SkillManifest]] = {}  # tenant id -> the YAML's versions
        for tenant in catalogue.tenants:
            self._declared[str(tenant.id)] = {(s.slug, s.version): s for s in tenant.skills}
            for space in tenant.spaces:
                self._spaces[str(space.id)] = {
                    slug: [s for s in tenant.skills if s.slug == slug] for slug in space.skills
                }

    async def in_space(self, space_id: str) -> dict[str, list[SkillManifest]]:
        """The space's skills by slug, each newest first (one round trip for the published ones)."""
        merged = {slug: list(versions) for slug, versions in self._spaces.get(space_id, {}).items()}
        for skill in await self.published.in_space(space_id):
            merged.setdefault(skill.slug, []).append(skill)
        for versions in merged.values():
            versions.sort(key=lambda s: s.version_key, reverse=True)
        return merged

    async def slugs(self, space_id: str) -> list[str]:
        return sorted(await self.in_space(space_id))

    async def versions(self, space_id: str, slug: str) -> list[SkillManifest]:
        """The space's versions of ``slug``, newest first (empty: the space has no such skill)."""
        return (await self.in_space(space_id)).get(slug, [])

    async def find(self, space_id: str, slug: str, version: str | None = None) -> SkillManifest | None:
        """The newest version (or the one named) of a skill the space may run."""
        versions = await self.versions(space_id, slug)
        if version is None:
            return versions[0] if versions else None
        return next((s for s in versions if s.version == version), None)

    async def publish(self, tenant_id: str, space_id: str, skill: SkillManifest) -> int:
        """Publish a version into the space: ``published.PUBLISHED`` or why not (``IN_SPACE``, ``CHANGED``,
        ``FULL``). A version the catalogue declares may be published only as it is declared."""
        declared = self._declared.get(tenant_id, {}).get((skill.slug, skill.version))
        if declared is not None:
            if manifest_json(declared) != manifest_json(skill):
                return CHANGED
            if declared in self._spaces.get(space_id, {}).get(skill.slug, []):
                return IN_SPACE
        return await self.published.publish(tenant_id, space_id, skill)

    def problems(self, skill: SkillManifest, part: str, document: Any) -> list[dict[str, Any]]:
        """How ``document`` fails the skill's ``inputs`` or ``outputs`` schema: one entry per failing path
        (``loc`` the path into the document, ``msg``, ``type``), at most ``MAX_ERRORS``; empty when it is valid."""
        out = []
        for error in sorted(skill.validator(part).iter_errors(document), key=lambda e: list(map(str, e.absolute_path))):
            out.append(
                {
                    "loc": list(error.absolute_path),
                    "msg": _bounded(error.message),
                    "type": f"jsonschema.{error.validator}",
                    "input": _shown(error.instance),
                }
            )
            if len(out) == MAX_ERRORS:
                break
        return out


def skill_data(skill: SkillManifest) -> dict[str, Any]:
    """A skill version as the API shows it."""
    return {
        "slug": skill.slug,
        "version": skill.version,
        "title": skill.title,
        "description": skill.description,
        "inputs_schema": skill.inputs,
        "outputs_schema": skill.outputs,
        "model": skill.model,
        "tools": [
            *({"type": "mcp", "server_label": label} for label in skill.mcp_labels),
            *({"type": "http_tool", "name": name} for name in skill.http_names),
            *({"type": "skill", "slug": slug} for slug in skill.skill_slugs),
        ],
        "limits": {
            "max_rounds": skill.limits.max_rounds,
            "timeout_seconds": skill.limits.timeout_seconds,
            "max_cost_usd": None if skill.limits.max_cost_usd is None else str(skill.limits.max_cost_usd),
            "max_artifacts": skill.limits.max_artifacts,
        },
    }


def render_instructions(template: str, inputs: dict[str, Any]) -> str:
    """The instructions with each ``{{ name }}`` replaced by that input: a string as it is, anything else as
    JSON, a missing one as nothing. Nothing else in the template is interpreted."""

    def value(match: Any) -> str:
        found = inputs.get(match.group(1))
        if found is None:
            return ""
        return found if isinstance(found, str) else orjson.dumps(found).decode()

    return PLACEHOLDER.sub(value, template)


def _bounded(text: str) -> str:
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "…"


def _shown(value: Any) -> Any:
    """A caller's value as an error may repeat it: small scalars as they are, anything larger cut."""
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, str):
        return _bounded(value)
    text = orjson.dumps(value).decode()
    return value if len(text) <= _MAX_SHOWN else _bounded(text)
