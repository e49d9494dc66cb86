"""The one shape the tool loop runs every tool through: a ``ToolServer``. A request's remote or declared MCP server
(``McpEndpoint``, over the pooled SDK sessions), a declared HTTP tool (``HttpEndpoint``, with the space's address
policy) and the request's skills (``gateway.skills.tools.SkillServer``) are each one; the loop asks none of them
what it is.

A server's calls carry its ``label`` as their ``server_label`` (``http`` for every HTTP tool); ``declared`` says
whether the operator named it (its label may go in a metric) or the request did; ``listed`` whether its tools are
listed to the caller (an ``mcp_list_tools`` item) or declared with their schemas up front.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.tools.http_tool import HttpTool, HttpTools
from gateway.tools.mcp import McpServer
from gateway.tools.results import ToolResult
from gateway.tools.sessions import McpSessions
from gateway.tools.ssrf import AddressPolicy

HTTP_LABEL = "http"  # the server_label of the calls of the catalogue's HTTP tools (no MCP server may take it)


class ToolServer(Protocol):
    @property
    def label(self) -> str: ...

    @property
    def declared(self) -> bool: ...

    @property
    def listed(self) -> bool: ...

    def allows_tool(self, name: str) -> bool: ...

    def needs_approval(self, tool_name: str) -> bool: ...

    async def list_tools(self) -> Sequence[Mapping[str, Any]]:
        """Its tools (``name``, ``description``, ``input_schema``); ``ToolUnavailable`` when it cannot say."""
        ...

    async def call(
        self, name: str, arguments: dict[str, Any], timeout: float | None, call_id: str | None
    ) -> ToolResult:
        """Run one call; a tool's own failure is the result's ``error`` (for the model), never raised."""
        ...


@dataclass(frozen=True, slots=True)
class McpEndpoint:
    server: McpServer
    sessions: McpSessions
    listed: bool = True

    @property
    def label(self) -> str:
        return self.server.label

    @property
    def declared(self) -> bool:
        return self.server.declared

    def allows_tool(self, name: str) -> bool:
        return self.server.allows_tool(name)

    def needs_approval(self, tool_name: str) -> bool:
        return self.server.needs_approval(tool_name)

    async def list_tools(self) -> Sequence[Mapping[str, Any]]:
        return await self.sessions.list_tools(self.server)

    async def call(
        self, name: str, arguments: dict[str, Any], timeout: float | None, call_id: str | None
    ) -> ToolResult:
        return await self.sessions.call_tool(self.server, name, arguments, timeout)


@dataclass(frozen=True, slots=True)
class HttpEndpoint:
    """One declared HTTP tool: run without approval (the operator declared it), its schema offered as is."""

    tool: HttpTool
    http: HttpTools
    policy: AddressPolicy
    label: str = HTTP_LABEL
    declared: bool = True
    listed: bool = False

    def allows_tool(self, name: str) -> bool:
        return name == self.tool.name

    def needs_approval(self, tool_name: str) -> bool:
        return False

    async def list_tools(self) -> Sequence[Mapping[str, Any]]:
        spec = self.tool.spec
        return [{"name": spec.name, "description": spec.description, "input_schema": spec.parameters}]

    async def call(
        self, name: str, arguments: dict[str, Any], timeout: float | None, call_id: str | None
    ) -> ToolResult:
        return await self.http.call(self.tool, arguments, self.policy, timeout)
