"""Which skills each space may run (the catalogue's manifests, by slug, every version), their API shape, and the
checks on an execution's inputs and outputs (``jsonschema``, every failing path reported)."""

from typing import Any

import orjson
from jsonschema import Draft202012Validator

from config import Catalogue
from config.skills import PLACEHOLDER, SkillManifest

MAX_ERRORS = 20  # failing paths reported for one document
_MAX_SHOWN = 200  # characters of a caller's value repeated in an error


class Skills:
    """The skills of every space: ``versions(space_id, slug)`` newest first; validators built once."""

    def __init__(self, catalogue: Catalogue) -> None:
        self._spaces: dict[str, dict[str, list[SkillManifest]]] = {}
        self._validators: dict[tuple[str, str, str], Draft202012Validator] = {}
        for tenant in catalogue.tenants:
            for space in tenant.spaces:
                slugs: dict[str, list[SkillManifest]] = {}
                for slug in space.skills:
                    versions = [s for s in tenant.skills if s.slug == slug]
                    slugs[slug] = sorted(versions, key=lambda s: s.version_key, reverse=True)
                self._spaces[str(space.id)] = slugs
            for skill in tenant.skills:
                for part in ("inputs", "outputs"):
                    schema = getattr(skill, part)
                    self._validators[(skill.slug, skill.version, part)] = Draft202012Validator(schema)

    def slugs(self, space_id: str) -> list[str]:
        return sorted(self._spaces.get(space_id, {}))

    def versions(self, space_id: str, slug: str) -> list[SkillManifest]:
        """The space's versions of ``slug``, newest first (empty: the space has no such skill)."""
        return self._spaces.get(space_id, {}).get(slug, [])

    def find(self, space_id: str, slug: str, version: str | None = None) -> SkillManifest | None:
        """The newest version (or the one named) of a skill the space may run."""
        versions = self.versions(space_id, slug)
        if version is None:
            return versions[0] if versions else None
        return next((s for s in versions if s.version == version), None)

    def problems(self, skill: SkillManifest, part: str, document: Any) -> list[dict[str, Any]]:
        """How ``document`` fails the skill's ``inputs`` or ``outputs`` schema: one entry per failing path
        (``loc`` the path into the document, ``msg``, ``type``), at most ``MAX_ERRORS``; empty when it is valid."""
        validator = self._validators[(skill.slug, skill.version, part)]
        out = []
        for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path))):
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
        "tools": [{"type": "mcp", "server_label": label} for label in skill.mcp_labels],
        "limits": {
            "max_rounds": skill.limits.max_rounds,
            "timeout_seconds": skill.limits.timeout_seconds,
            "max_cost_usd": None if skill.limits.max_cost_usd is None else str(skill.limits.max_cost_usd),
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
