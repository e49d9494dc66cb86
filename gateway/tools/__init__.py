"""The tools the gateway executes for a request: remote MCP servers and the catalogue's HTTP tools.

One ``Tools`` per app (``Gateway.tools``), built at start (the declared tools' secret headers are read from the
environment then: a missing variable fails the start), closed at shutdown. It does not run a loop; the loop
uses it like this::

    resolved = await gw.tools.resolve(ctx.space_id, body.get("tools") or [])   # 400/424 for bad tools
    for server in gw.tools.servers(resolved):                                # ToolServer (gateway.tools.servers)
        listing = await server.list_tools()                                  # ToolUnavailable (424)
        ...                                                                  # -> mcp_list_tools item (if listed)
    ...                                                                      # the model asks for a call
    if server.needs_approval(name): ...                                      # -> mcp_approval_request
    result = await server.call(name, arguments, timeout, call_id)            # ToolResult(output, error)

Request shapes: OpenAI's ``{"type": "mcp", "server_label", "server_url", "allowed_tools", "require_approval",
"headers", "server_description"}``, where a ``server_url`` must match the space's ``mcp.allowed_servers``;
``{"type": "mcp", "server_label": "<declared>"}`` (no ``server_url``) for a server the tenant declares and the
space lists in ``tools``; ``{"type": "http_tool", "name": "<declared>"}`` for a declared HTTP tool the space lists.
Every other tool (``function`` first of all) is left alone in ``resolved.client``: the caller runs those.
See docs/tools.md for the address rules (``gateway.tools.ssrf``) and the limits.
"""

import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from config import Catalogue, CatalogueError, Settings
from config.catalog import Space, Tenant
from gateway.errors import InvalidRequest
from gateway.tools.http_tool import HttpTool, HttpTools
from gateway.tools.mcp import McpServer, resolve_mcp_tool
from gateway.tools.results import ToolResult, ToolUnavailable, parse_arguments
from gateway.tools.servers import HTTP_LABEL, HttpEndpoint, McpEndpoint, ToolServer
from gateway.tools.sessions import McpSessions, McpTool
from gateway.tools.ssrf import AddressPolicy, Refused, Unresolvable, check_url, shown

__all__ = [
    "HTTP_LABEL",
    "HttpTool",
    "McpServer",
    "McpTool",
    "ResolvedTools",
    "ToolResult",
    "ToolServer",
    "ToolUnavailable",
    "Tools",
]
MAX_SERVERS = 16  # MCP servers in one request


@dataclass(frozen=True)
class ResolvedTools:
    """A request's tools sorted by who runs them: ``mcp`` and ``http`` the gateway, ``client`` (function tools
    and any other type, untouched, in order) the caller."""

    space_id: str
    mcp: tuple[McpServer, ...] = ()
    http: tuple[HttpTool, ...] = ()
    client: tuple[Any, ...] = ()

    def mcp_server(self, label: str) -> McpServer | None:
        return next((s for s in self.mcp if s.label == label), None)

    def http_tool(self, name: str) -> HttpTool | None:
        """The declared HTTP tool a model's function call of ``name`` means, or None (a client function)."""
        return next((t for t in self.http if t.name == name), None)


@dataclass(frozen=True)
class _SpaceTools:
    space: Space
    tenant: Tenant
    policy: AddressPolicy
    http: Mapping[str, HttpTool]


def _secret_headers(headers_env: Mapping[str, str], where: str, environ: Mapping[str, str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for header, env in headers_env.items():
        value = environ.get(env)
        if value is None:
            raise CatalogueError(f"{where}.headers_env.{header}: environment variable {env} is not set")
        headers[header] = value
    return headers


class Tools:
    """The executable tools of one app: the MCP session pool, the HTTP tools' clients, each space's allowances.
    ``skill_servers(ctx, tools)`` (set by the runtime) turns a request's skill tools into a server of its own.

    - ``await resolve(space_id, tools) -> ResolvedTools``: the request's executable tools, or ``InvalidRequest``
      (400: a malformed mcp tool, a server_url the space does not allow or whose host is private, an unknown
      reference) or ``ToolUnavailable`` (424: a request's server whose host does not resolve).
    - ``servers(resolved) -> list[ToolServer]``: the resolved tools as the loop runs them (one shape for all).
    - ``await list_tools(server) -> list[McpTool]``: an MCP server's tools, filtered by ``allowed_tools`` and
      bounded; ``ToolUnavailable`` when the server cannot be reached.
    - ``await call_mcp(server, tool_name, arguments, timeout=None) -> ToolResult`` and
      ``await call_http(space_id, tool, arguments, timeout=None) -> ToolResult``: never raise for a tool's own
      failure (the result's ``error`` says what happened, for the model).
    - ``await aclose()``: closes every session and client (the app's shutdown).
    """

    def __init__(self, catalogue: Catalogue, settings: Settings, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.dns_timeout = settings.tool_dns_timeout_seconds
        self.sessions = McpSessions(
            self.dns_timeout,
            settings.tool_output_max_bytes,
            settings.mcp_max_sessions,
            settings.mcp_listing_ttl_seconds,
        )
        self.http = HttpTools(self.dns_timeout, settings.tool_output_max_bytes)
        self._secrets: dict[str, dict[str, dict[str, str]]] = {}  # tenant id -> server label -> headers
        self._spaces: dict[str, _SpaceTools] = {}
        self.skill_servers: Callable[[Any, list[dict[str, Any]]], Awaitable[list[Any]]] | None = None
        for t, tenant in enumerate(catalogue.tenants):
            where = f"tenants[{t}]"
            self._secrets[str(tenant.id)] = {
                s.label: _secret_headers(s.headers_env, f"{where}.mcp_servers[{i}]", env)
                for i, s in enumerate(tenant.mcp_servers)
            }
            http = {
                spec.name: HttpTool(
                    spec, tuple(_secret_headers(spec.headers_env, f"{where}.http_tools[{i}]", env).items())
                )
                for i, spec in enumerate(tenant.http_tools)
            }
            for space in tenant.spaces:
                policy = AddressPolicy.from_entries(space.mcp.allow_private)
                listed = {name: tool for name, tool in http.items() if name in space.tools}
                self._spaces[str(space.id)] = _SpaceTools(space, tenant, policy, listed)

    def _space(self, space_id: str) -> _SpaceTools:
        found = self._spaces.get(space_id)
        if found is None:
            raise InvalidRequest("tools: this space has no executable tools", param="tools")
        return found

    async def resolve(self, space_id: str, tools: Sequence[Any]) -> ResolvedTools:
        """Sort the request's ``tools`` (the body's list) into the gateway's and the caller's; see the class."""
        space = self._space(space_id)
        if sum(1 for t in tools if isinstance(t, dict) and t.get("type") == "mcp") > MAX_SERVERS:
            raise InvalidRequest(f"tools: at most {MAX_SERVERS} MCP servers in one request", param="tools")
        mcp: list[McpServer] = []
        http: list[HttpTool] = []
        client: list[Any] = []
        for i, tool in enumerate(tools):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind == "mcp":
                server = await self._mcp(space, tool, f"tools[{i}]")
                if any(s.label == server.label for s in mcp):
                    raise InvalidRequest(
                        f"tools[{i}].server_label: {shown(server.label)} is given twice",
                        param=f"tools[{i}].server_label",
                    )
                mcp.append(server)
            elif kind == "http_tool":
                http.append(self._http(space, tool, f"tools[{i}]"))
            else:
                client.append(tool)
        names = {t.name for t in http}
        for i, tool in enumerate(tools):
            if isinstance(tool, dict) and tool.get("type") == "function" and tool.get("name") in names:
                raise InvalidRequest(
                    f"tools[{i}].name: {shown(str(tool['name']))} is also an HTTP tool of this request",
                    param=f"tools[{i}].name",
                )
        return ResolvedTools(space_id, tuple(mcp), tuple(http), tuple(client))

    async def _mcp(self, space: _SpaceTools, tool: dict[str, Any], param: str) -> McpServer:
        secrets = self._secrets.get(str(space.tenant.id), {})
        server = resolve_mcp_tool(space.space, space.tenant, tool, param=param, secrets=secrets, policy=space.policy)
        if server.declared:
            return server  # the operator's server: checked at every connection, failures are the listing's
        try:
            await check_url(server.url, server.policy, self.dns_timeout)
        except Refused as exc:
            raise InvalidRequest(f"{param}.server_url: {exc}", param=f"{param}.server_url") from None
        except Unresolvable as exc:
            raise ToolUnavailable(f"MCP server {shown(server.label)} is not reachable: {exc}") from None
        return server

    @staticmethod
    def _http(space: _SpaceTools, tool: dict[str, Any], param: str) -> HttpTool:
        name = tool.get("name")
        found = space.http.get(name) if isinstance(name, str) else None
        if found is None:
            shown_name = shown(name) if isinstance(name, str) else "(none)"
            raise InvalidRequest(f"{param}.name: {shown_name} is not an HTTP tool of this space", param=f"{param}.name")
        return found

    def servers(self, resolved: ResolvedTools) -> list[ToolServer]:
        """The resolved tools as the loop runs them: each MCP server over the pooled sessions, each HTTP tool
        with its space's address policy."""
        policy = self._space(resolved.space_id).policy
        mcp: list[ToolServer] = [McpEndpoint(server, self.sessions) for server in resolved.mcp]
        return mcp + [HttpEndpoint(tool, self.http, policy) for tool in resolved.http]

    async def list_tools(self, server: McpServer) -> list[McpTool]:
        """The server's tools the request allows; ``ToolUnavailable`` (424) when it cannot be listed."""
        return await self.sessions.list_tools(server)

    async def call_mcp(
        self, server: McpServer, tool_name: str, arguments: str | Mapping[str, Any] | None, timeout: float | None = None
    ) -> ToolResult:
        """Run one tool call of an MCP server (``arguments``: the model's JSON string or an object)."""
        parsed = parse_arguments(arguments)
        if isinstance(parsed, str):
            return ToolResult.failed(parsed)
        return await self.sessions.call_tool(server, tool_name, parsed, timeout)

    async def call_http(
        self, space_id: str, tool: HttpTool, arguments: str | Mapping[str, Any] | None, timeout: float | None = None
    ) -> ToolResult:
        """Run one HTTP tool call, with the space's address policy."""
        return await self.http.call(tool, arguments, self._space(space_id).policy, timeout)

    async def aclose(self) -> None:
        """Close every MCP session and HTTP client."""
        await self.sessions.aclose()
        await self.http.aclose()
