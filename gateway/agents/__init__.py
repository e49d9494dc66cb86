"""Agents (seed 004): versioned presets of a tenant invoked through the Responses API (docs/agents.md)."""

from gateway.agents.invoke import Agents, apply_version, builtin_policies, load_agent_policies
from gateway.agents.registry import AgentRegistry
from gateway.agents.store import StoredAgent

__all__ = ["AgentRegistry", "Agents", "StoredAgent", "apply_version", "builtin_policies", "load_agent_policies"]
