"""The declarative catalogue (``config/gateway.yaml``): tenants, their models, spaces and API keys.

Validated once at start. A wrong file fails the start with a message naming the field, e.g.
``tenants[0].models[1].deployment.type: Input tag 'foo' found using 'type' does not match …``.
Secrets never live here: upstream credentials are names of environment variables, API keys are sha256 hashes.
"""

import re
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from config.agents import Agent
from config.deployments import Deployment, Routing
from config.skills import SkillManifest, check_skills, read_skill, read_yaml
from config.tools import HttpToolSpec, McpServerSpec, SpaceMcp

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Pricing(_Strict):
    """USD per million tokens, kept exact as decimals."""

    input_per_mtok: Decimal = Decimal(0)
    cached_input_per_mtok: Decimal | None = None
    output_per_mtok: Decimal = Decimal(0)
    reasoning_per_mtok: Decimal | None = None


class TenantModel(_Strict):
    id: UUID
    alias: str = Field(min_length=1, max_length=256)
    deployments: list[Deployment] = Field(min_length=1, description="Tried in order (or by weight).")
    routing: Routing = Routing()
    context_window: int | None = Field(None, gt=0)
    capabilities: list[str] = Field(default_factory=lambda: ["chat"])
    reasoning: bool = False
    logo_url: str | None = None
    logo_url_dark: str | None = None
    pricing: Pricing | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_deployment_shorthand(cls, data: Any) -> Any:
        """``deployment: {...}`` is shorthand for a one-item ``deployments`` list."""
        if isinstance(data, dict) and "deployment" in data:
            if "deployments" in data:
                raise ValueError("give either 'deployment' or 'deployments', not both")
            data = {**data, "deployments": [data["deployment"]]}
            del data["deployment"]
        return data


class PolicySpec(_Strict):
    """One entry of a policy chain: ``{use: <alias or module:Class>, ...params}``."""

    model_config = ConfigDict(extra="allow", frozen=True)
    use: str = Field(min_length=1)

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ToolLoop(_Strict):
    """Limits of the server-side tool loop (``tool_mode: auto_resolve``) in a space."""

    max_rounds: int = Field(8, ge=1, le=64, description="Model calls per response; more ends it incomplete.")
    max_seconds: float = Field(300.0, gt=0, le=3600, description="Wall time of a response's loop.")
    call_timeout_seconds: float = Field(60.0, gt=0, le=600, description="One tool call's longest wait.")


class Space(_Strict):
    id: UUID
    name: str = ""
    models: list[str] = Field(default_factory=list, description="Aliases (or ids) of allowed tenant models.")
    default_model: str | None = None
    policies: list[PolicySpec] | None = Field(None, description="Overrides the tenant's default chain.")
    tool_loop: ToolLoop = ToolLoop()
    mcp: SpaceMcp = SpaceMcp()
    tools: list[str] = Field(
        default_factory=list, description="Labels of the tenant's MCP servers and names of its HTTP tools it may use."
    )
    agents: list[str] = Field(default_factory=list, description="Keys of the tenant's agents callable here.")
    skills: list[str] = Field(default_factory=list, description="Slugs of the tenant's skills it may run.")


class ApiKey(_Strict):
    name: str = Field(min_length=1)
    sha256: str = Field(description="sha256 hex digest of the key; the key itself is never stored.")
    principal: str = Field(min_length=1)
    role: Literal["admin", "member"] = "member"
    spaces: list[str] = Field(default_factory=lambda: ["*"], description='Space ids, or "*" for all.')
    default_space: UUID | None = None

    @model_validator(mode="after")
    def _check_hash(self) -> "ApiKey":
        if not _SHA256.match(self.sha256):
            raise ValueError("sha256 must be 64 lowercase hex characters (python -m gateway hash-key KEY)")
        return self


class Tenant(_Strict):
    id: UUID
    name: str = Field(min_length=1)
    policies: list[PolicySpec] = Field(default_factory=lambda: [PolicySpec(use="allow_list")])
    models: list[TenantModel] = Field(default_factory=list)
    spaces: list[Space] = Field(default_factory=list)
    api_keys: list[ApiKey] = Field(default_factory=list)
    mcp_servers: list[McpServerSpec] = Field(default_factory=list, description="MCP servers its spaces may use.")
    http_tools: list[HttpToolSpec] = Field(default_factory=list, description="HTTP tools its spaces may use.")
    agents: list[Agent] = Field(default_factory=list, description="Seeded into the store once (docs/agents.md).")

    @model_validator(mode="after")
    def _check_agents(self) -> "Tenant":
        _unique([a.key for a in self.agents], "agents: duplicate key")
        aliases = {m.alias for m in self.models}
        servers = {m.label for m in self.mcp_servers}
        http = {t.name for t in self.http_tools}
        for i, agent in enumerate(self.agents):
            if agent.key in aliases:
                raise ValueError(f"agents[{i}].key: {agent.key!r} is also a model alias of this tenant")
            for version in agent.versions:
                where = f"agents[{i}] ({agent.key}) version {version.version}"
                if version.model not in aliases:
                    raise ValueError(f"{where}: model {version.model!r} is not a model alias of this tenant")
                for tool in version.tools:
                    if tool not in servers and tool not in http:
                        raise ValueError(f"{where}: tool {tool!r} is not an MCP server or HTTP tool of this tenant")
        return self

    @model_validator(mode="after")
    def _check_space_agents(self) -> "Tenant":
        by_key = {a.key: a for a in self.agents}
        for s in self.spaces:
            for key in s.agents:
                if key not in by_key:
                    raise ValueError(f"space {s.id}: agent {key!r} is not an agent of this tenant")
                missing = {t for v in by_key[key].versions for t in v.tools} - set(s.tools)
                if missing:
                    raise ValueError(f"space {s.id}: agent {key!r} uses tools it does not list: {sorted(missing)}")
        return self

    skills: list[SkillManifest] = Field(default_factory=list, description="Skill directories (or inline manifests).")

    @field_validator("skills", mode="before")
    @classmethod
    def _read_skills(cls, value: Any, info: ValidationInfo) -> Any:
        base = (info.context or {}).get("base_dir")
        return [read_skill(ref, base) for ref in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _check_skills(self) -> "Tenant":
        check_skills(self)
        return self

    @model_validator(mode="after")
    def _check_tools(self) -> "Tenant":
        names = [m.label for m in self.mcp_servers] + [t.name for t in self.http_tools]
        _unique(names, "tools: the same name twice among mcp_servers labels and http_tools names")
        for s in self.spaces:
            for ref in s.tools:
                if ref not in names:
                    raise ValueError(f"space {s.id}: tool {ref!r} is not an MCP server or HTTP tool of this tenant")
        return self

    @model_validator(mode="after")
    def _check_references(self) -> "Tenant":
        _unique([m.alias for m in self.models], "models: duplicate alias")
        _unique([str(m.id) for m in self.models], "models: duplicate id")
        _unique([str(s.id) for s in self.spaces], "spaces: duplicate id")
        known = {m.alias for m in self.models} | {str(m.id) for m in self.models}
        space_ids = {str(s.id) for s in self.spaces}
        for s in self.spaces:
            for ref in s.models:
                if ref not in known:
                    raise ValueError(f"space {s.id}: model {ref!r} is not a model of tenant {self.name!r}")
            if s.default_model is not None and s.default_model not in s.models:
                raise ValueError(f"space {s.id}: default_model {s.default_model!r} is not in its models")
        for k in self.api_keys:
            for ref in k.spaces:
                if ref != "*" and ref not in space_ids:
                    raise ValueError(f"api key {k.name!r}: space {ref} is not a space of tenant {self.name!r}")
            if k.default_space is not None and str(k.default_space) not in space_ids:
                raise ValueError(f"api key {k.name!r}: default_space {k.default_space} is not a space here")
        return self


class Catalogue(_Strict):
    tenants: list[Tenant] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_global_uniqueness(self) -> "Catalogue":
        _unique([str(t.id) for t in self.tenants], "tenants: duplicate id")
        _unique([str(s.id) for t in self.tenants for s in t.spaces], "spaces: id used by two tenants")
        _unique([m.id for t in self.tenants for m in t.models], "models: id used by two tenants")
        _unique([k.sha256 for t in self.tenants for k in t.api_keys], "api_keys: the same key hash twice")
        return self


class CatalogueError(Exception):
    """The catalogue file cannot be read or is invalid; the message names the file and the field."""


def _unique(values: list[Any], what: str) -> None:
    seen: set[Any] = set()
    for v in values:
        if v in seen:
            raise ValueError(f"{what}: {v}")
        seen.add(v)


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def load_catalogue(path: Path) -> Catalogue:
    """Read and validate the YAML catalogue at ``path``."""
    raw = read_yaml(path, str(path), CatalogueError) or {}
    if not isinstance(raw, dict):
        raise CatalogueError(f"{path}: the top level must be a mapping with a 'tenants' list")
    try:
        return Catalogue.model_validate(raw, context={"base_dir": path.parent})
    except ValidationError as exc:
        lines = [f"{_loc(e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)]
        raise CatalogueError(f"{path}: invalid catalogue:\n  " + "\n  ".join(lines)) from None
