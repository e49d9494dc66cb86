"""Agents in the catalogue (seed 004): versioned presets of a tenant (a model, instructions, parameters, tools
and policies of their own), invoked through the Responses API with ``model: "<key>"`` or ``"<key>@<version>"``.

The YAML seeds a tenant's agents into the store once; from then on the store is the truth (the native agents
API changes it on every replica at once). The same models validate what the API is sent.
"""

import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from config.tools import NAME

AGENT_KEY = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # no '@' (the version separator) and no ':' (store keys)
AGENT_KEY_RE = re.compile(AGENT_KEY)
MAX_VERSION = 1_000_000
MAX_INSTRUCTIONS = 100_000
MAX_TOOLS = 16
MAX_POLICIES = 16
Status = Literal["active", "inactive", "draft"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AgentPolicy(BaseModel):
    """One policy of a version's own chain: ``{use: <alias or module:Class>, ...params}`` (as ``PolicySpec``)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    use: str = Field(min_length=1, max_length=200)


class AgentSettings(_Strict):
    """What a version holds (and what the API's "add a version" takes)."""

    model: str = Field(min_length=1, max_length=256, description="Alias of a tenant model.")
    instructions: str | None = Field(None, max_length=MAX_INSTRUCTIONS, description="The system prompt.")
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_output_tokens: int | None = Field(None, ge=1, le=1_000_000)
    tools: list[str] = Field(
        default_factory=list, max_length=MAX_TOOLS, description="The tenant's MCP server labels and HTTP tool names."
    )
    policies: list[AgentPolicy] = Field(default_factory=list, max_length=MAX_POLICIES)

    @field_validator("tools")
    @classmethod
    def _tool_names(cls, tools: list[str]) -> list[str]:
        for name in tools:
            if not re.match(NAME, name):
                raise ValueError(f"tool {name[:64]!r} is not a valid tool name")
        if len(set(tools)) != len(tools):
            raise ValueError("the same tool twice")
        return tools


class AgentVersion(AgentSettings):
    version: int = Field(ge=1, le=MAX_VERSION)
    published: bool = Field(True, description="Only published versions can be invoked; they never change.")
    published_at: str | None = None  # ISO-8601 UTC, set when published (the store's)


class AgentHead(_Strict):
    """An agent's own fields (the API's "create an agent" takes these)."""

    key: str = Field(pattern=AGENT_KEY, description="Unique per tenant; what ``model`` names.")
    name: str = Field(min_length=1, max_length=256)
    description: str = Field("", max_length=2000)
    status: Status = "draft"


class Agent(AgentHead):
    status: Status = "active"
    created_at: datetime | None = None
    versions: list[AgentVersion] = Field(default_factory=list, max_length=1000)

    @field_validator("versions")
    @classmethod
    def _unique_versions(cls, versions: list[AgentVersion]) -> list[AgentVersion]:
        numbers = [v.version for v in versions]
        if len(set(numbers)) != len(numbers):
            raise ValueError("the same version number twice")
        return versions

    def version(self, number: int) -> AgentVersion | None:
        return next((v for v in self.versions if v.version == number), None)

    def latest_published(self) -> AgentVersion | None:
        published = [v for v in self.versions if v.published]
        return max(published, key=lambda v: v.version) if published else None
