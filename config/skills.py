"""Skill manifests: a skill is a directory holding ``skill.yaml`` (and any files it ships), referenced from a
tenant's ``skills`` in the catalogue by its path (relative to the catalogue file), or written inline.

A manifest names one immutable version of a skill: slug, version, title, description, the JSON Schemas of its
inputs and outputs (checked as JSON Schemas at start), an instructions template the inputs are rendered into
(``{{ name }}`` for a top-level input), an optional model alias (else the space default), the tools it may use
(the tenant's declared MCP servers by label, its HTTP tools by name, other skills by slug) and its limits. A bad
manifest fails the start with the file and the field named, e.g. ``skills/summarize/skill.yaml: outputs: not a
valid JSON Schema: …``.
"""

import re
from collections.abc import Collection
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

SLUG = r"^[a-z0-9][a-z0-9_-]{0,63}$"
VERSION = re.compile(r"^\d{1,6}(\.\d{1,6}){0,2}$")
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]{0,63})\s*\}\}")
MANIFEST = "skill.yaml"
MAX_MANIFEST_BYTES = 256 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SkillTool(_Strict):
    """A tool of the skill: one of the tenant's declared MCP servers (``mcp``: its label), one of its declared
    HTTP tools (``http``: its name), or another skill (``skill``: its slug), called as a sub-execution."""

    mcp: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    http: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    skill: str | None = Field(None, pattern=SLUG)

    @model_validator(mode="after")
    def _one(self) -> "SkillTool":
        if sum(v is not None for v in (self.mcp, self.http, self.skill)) != 1:
            raise ValueError("a tool is either {mcp: <server label>}, {http: <HTTP tool name>} or {skill: <slug>}")
        return self


class SkillLimits(_Strict):
    """What one execution may use; the space's tool-loop limits still apply (the smaller wins)."""

    max_rounds: int = Field(8, ge=1, le=64, description="Model calls of the tool loop per model turn.")
    timeout_seconds: float = Field(300.0, gt=0, le=3600, description="Wall time of one execution.")
    max_cost_usd: Decimal | None = Field(None, gt=0, description="No repair round once the execution cost this.")
    max_artifacts: int = Field(
        0, ge=0, le=64, description="Documents the model may write as artifacts (write_artifact); 0: none offered."
    )


def _object_schema(schema: dict[str, Any], what: str) -> dict[str, Any]:
    if schema.get("type") != "object":
        raise ValueError(f'{what} must be a JSON Schema of an object ("type": "object")')
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(top level)"
        raise ValueError(f"not a valid JSON Schema at {where}: {exc.message[:200]}") from None
    return schema


class SkillManifest(_Strict):
    slug: str = Field(pattern=SLUG)
    version: str = Field(description="1, 1.2 or 1.2.3; immutable once published.")
    title: str = Field("", max_length=256)
    description: str = Field("", max_length=4096)
    inputs: dict[str, Any] = Field(description="JSON Schema of the inputs (an object).")
    outputs: dict[str, Any] = Field(description="JSON Schema of the outputs (an object).")
    instructions: str = Field(min_length=1, max_length=64 * 1024)
    model: str | None = Field(None, min_length=1, max_length=256)
    tools: list[SkillTool] = Field(default_factory=list, max_length=16)
    limits: SkillLimits = SkillLimits()
    source: str = Field("", exclude=True, description="Where it was read from (set by the loader).")
    _validators: dict[str, Draft202012Validator] = PrivateAttr(default_factory=dict)

    @field_validator("slug")
    @classmethod
    def _slug(cls, value: str) -> str:
        if value == "executions":
            raise ValueError("'executions' is reserved (the executions routes live under it)")
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not VERSION.match(value):
            raise ValueError("version must be numbers separated by dots: 1, 1.2 or 1.2.3")
        return value

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, schema: dict[str, Any]) -> dict[str, Any]:
        return _object_schema(schema, "inputs")

    @field_validator("outputs")
    @classmethod
    def _outputs(cls, schema: dict[str, Any]) -> dict[str, Any]:
        return _object_schema(schema, "outputs")

    @model_validator(mode="after")
    def _placeholders(self) -> "SkillManifest":
        known = set((self.inputs.get("properties") or {}).keys())
        for name in PLACEHOLDER.findall(self.instructions):
            if name not in known:
                raise ValueError(f"instructions: {{{{ {name} }}}} is not a property of the inputs schema")
        return self

    def validator(self, part: str) -> Draft202012Validator:
        """The validator of its ``inputs`` or ``outputs`` schema, built once."""
        found = self._validators.get(part)
        if found is None:
            found = self._validators[part] = Draft202012Validator(getattr(self, part))
        return found

    @property
    def version_key(self) -> tuple[int, ...]:
        """The version as numbers, to order versions (1.10 comes after 1.9)."""
        return tuple(int(p) for p in self.version.split("."))

    @property
    def mcp_labels(self) -> list[str]:
        return [t.mcp for t in self.tools if t.mcp is not None]

    @property
    def http_names(self) -> list[str]:
        return [t.http for t in self.tools if t.http is not None]

    @property
    def skill_slugs(self) -> list[str]:
        return [t.skill for t in self.tools if t.skill is not None]


def _loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def read_yaml(path: Path, where: str, error: type[Exception], max_bytes: int | None = None) -> Any:
    """The YAML document in ``path``; ``error`` naming ``where`` when it cannot be read or parsed."""
    try:
        if max_bytes is not None and path.stat().st_size > max_bytes:
            raise error(f"{where}: larger than {max_bytes} bytes")
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"{where}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise error(f"{where}: not valid YAML: {str(exc)[:300]}") from None


def read_skill(ref: Any, base_dir: Path | None) -> Any:
    """A catalogue's skill entry as a manifest mapping: a path is read from ``<path>/skill.yaml`` (relative to
    ``base_dir``, the catalogue's directory); a mapping is an inline manifest. Raises ValueError naming the file
    and the field."""
    if not isinstance(ref, str):
        where = "inline skill"
        raw = ref
    else:
        directory = Path(ref) if base_dir is None or Path(ref).is_absolute() else base_dir / ref
        path = directory / MANIFEST
        where = f"{ref.rstrip('/')}/{MANIFEST}"
        raw = read_yaml(path, where, ValueError, MAX_MANIFEST_BYTES)
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: a skill manifest must be a mapping")
    try:
        manifest = SkillManifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{_loc(e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False))
        raise ValueError(f"{where}: {problems}") from None
    return manifest.model_copy(update={"source": where})


def undeclared_tools(skill: SkillManifest, tenant: Any) -> list[str]:
    """What is wrong with the skill's tools against its tenant: each MCP server or HTTP tool it does not declare."""
    servers = {m.label for m in tenant.mcp_servers}
    http = {t.name for t in tenant.http_tools}
    out = [f"{n!r} is not an MCP server of this tenant" for n in skill.mcp_labels if n not in servers]
    return out + [f"{n!r} is not an HTTP tool of this tenant" for n in skill.http_names if n not in http]


def missing_in_space(skill: SkillManifest, tools: Collection[str], skills: Collection[str]) -> list[str]:
    """The skill's tools a space lacks: MCP servers and HTTP tools not in its ``tools``, skills not in its
    ``skills`` (a skill calling itself needs nothing more)."""
    missing = [name for name in skill.mcp_labels + skill.http_names if name not in tools]
    return missing + [s for s in skill.skill_slugs if s not in skills and s != skill.slug]


def check_skills(tenant: Any) -> None:
    """A tenant's skills against the rest of it: one manifest per slug and version, their tools declared MCP
    servers and HTTP tools of the tenant, and every space's skills the tenant's, with their tools in the space."""
    seen: set[tuple[str, str]] = set()
    for skill in tenant.skills:
        if (skill.slug, skill.version) in seen:
            raise ValueError(f"skills: {skill.slug} {skill.version} is declared twice")
        seen.add((skill.slug, skill.version))
        unknown = undeclared_tools(skill, tenant)
        if unknown:
            raise ValueError(f"{skill.source}: tools: {unknown[0]}")
    for space in tenant.spaces:
        for slug in space.skills:
            versions = [s for s in tenant.skills if s.slug == slug]
            if not versions:
                raise ValueError(f"space {space.id}: skill {slug!r} is not a skill of this tenant")
            for skill in versions:
                missing = missing_in_space(skill, space.tools, space.skills)
                if missing:
                    raise ValueError(f"space {space.id}: skill {slug!r} uses {missing[0]!r}, not in the space")
