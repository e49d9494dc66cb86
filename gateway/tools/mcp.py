"""The MCP servers of a request: OpenAI's ``{"type": "mcp", ...}`` tool validated, and resolved either to a server
the request names (its ``server_url`` must be one the space allows) or to one the tenant declares (a reference
without ``server_url``, to a server the space lists in its ``tools``).

The connections themselves are ``gateway.tools.sessions``'s.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from config.catalog import Space, Tenant
from config.tools import MAX_URL, NAME, Approval, ApprovalFilter, McpServerSpec, ToolNames, header_problem
from gateway.errors import InvalidRequest
from gateway.tools.ssrf import AddressPolicy, shown

_ToolName = Annotated[str, Field(min_length=1, max_length=128)]
_HeaderValue = Annotated[str, Field(max_length=8192)]
MAX_HEADERS = 32


class _McpTool(BaseModel):
    """The request's tool, OpenAI's shape; newer fields it may carry are ignored, ``connector_id`` is refused."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    type: Literal["mcp"]
    server_label: str = Field(pattern=NAME)
    server_url: str | None = Field(None, min_length=1, max_length=MAX_URL)
    allowed_tools: Annotated[list[_ToolName], Field(max_length=256)] | ToolNames | None = None
    require_approval: Approval | None = None
    headers: Annotated[dict[str, _HeaderValue], Field(max_length=MAX_HEADERS)] | None = None
    server_description: str | None = Field(None, max_length=4096)

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name, header_value in (value or {}).items():
            problem = header_problem(name)
            if problem:
                raise ValueError(f"header {shown(name)} {problem}")
            if any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in header_value):
                raise ValueError(f"header {shown(name)} holds a control character")
        return value


@dataclass(frozen=True)
class McpServer:
    """One MCP server a request may use: where it is, how to speak to it, which of its tools the model may see
    and which calls need approval. ``headers`` (secrets: the request's and the catalogue's) are sent to this
    server only and never shown; ``policy`` is the space's allowance of private addresses."""

    label: str
    url: str
    transport: Literal["streamable_http", "sse"] = "streamable_http"
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    allowed_tools: frozenset[str] | None = None  # None: every tool the server lists
    approvals: tuple[Approval, ...] = ("always",)  # a call needs approval when any of these says so
    description: str = ""
    timeout: float = 30.0
    policy: AddressPolicy = AddressPolicy()
    declared: bool = False  # the tenant's (catalogue) server, else the request's own

    def allows_tool(self, name: str) -> bool:
        return self.allowed_tools is None or name in self.allowed_tools

    def needs_approval(self, tool_name: str) -> bool:
        """Whether a call of ``tool_name`` waits for an ``mcp_approval_response`` (OpenAI's rules: "always",
        "never", or the filter form, where a tool in neither list needs approval)."""
        return any(_needs(rule, tool_name) for rule in self.approvals)


def _needs(rule: Approval, tool_name: str) -> bool:
    if isinstance(rule, ApprovalFilter):
        if rule.never is not None and tool_name in rule.never.tool_names:
            return False
        return True
    return rule == "always"


def server_allowed(url: str, entries: list[str]) -> bool:
    """Whether ``url`` is one of a space's ``mcp.allowed_servers``: equal to an entry, or under a prefix (an
    entry ending in "/" or "*"). A prefix that ends inside the host (``https://mcp.example.com*``) only matches
    that host (with a port or a path), never ``https://mcp.example.com.evil.test``; ``https://*`` matches any."""
    for entry in entries:
        if url == entry:
            return True
        if not entry.endswith(("/", "*")):
            continue
        prefix = entry.removesuffix("*")
        if not url.startswith(prefix):
            continue
        rest, authority = url[len(prefix) :], prefix.split("://", 1)[-1]
        if not authority or "/" in authority or not rest or rest[0] in "/:?#":
            return True
    return False


def _dot_segments(url: str) -> bool:
    path = url.split("://", 1)[-1].split("?", 1)[0].split("#", 1)[0]
    return "\\" in path or any(seg in (".", "..") or seg.lower() in ("%2e", "%2e%2e") for seg in path.split("/"))


def parse_mcp_tool(tool: Mapping[str, Any], param: str) -> _McpTool:
    """The request's mcp tool, validated; ``InvalidRequest`` naming the field (``param``, e.g. ``tools[2]``)."""
    if tool.get("connector_id") is not None:
        raise InvalidRequest(f"{param}.connector_id: connectors are not supported here", param=f"{param}.connector_id")
    try:
        return _McpTool.model_validate(dict(tool))
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        name = f"{param}.{first['loc'][0]}" if first["loc"] else param
        raise InvalidRequest(f"{name}: {first['msg'][:200]}", param=name) from None


def _allowed(names: list[str] | ToolNames | None) -> frozenset[str] | None:
    if names is None:
        return None
    return frozenset(names.tool_names if isinstance(names, ToolNames) else names)


def _narrow(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    if a is None:
        return b
    return a if b is None else a & b


def resolve_mcp_tool(
    space: Space,
    tenant: Tenant,
    tool: Mapping[str, Any],
    *,
    param: str = "tools",
    secrets: Mapping[str, dict[str, str]] | None = None,
    policy: AddressPolicy | None = None,
) -> McpServer:
    """The server a request's mcp tool means, or ``InvalidRequest`` (400) saying why it may not be used.

    With ``server_url``: the request's own server, if the space's ``mcp.allowed_servers`` matches the URL.
    Without: a reference to the tenant's declared server of that label, if the space lists it in ``tools``; the
    request may narrow its ``allowed_tools`` and ask for more approval, never less. ``secrets`` are the declared
    servers' headers read from the environment at start (by label); ``policy`` the space's private allowance.
    Which addresses the URL reaches is checked later (``Tools.resolve``, and at every connection)."""
    body = parse_mcp_tool(tool, param)
    policy = policy or AddressPolicy.from_entries(space.mcp.allow_private)
    request_headers = tuple((body.headers or {}).items())
    request_approval = () if body.require_approval is None else (body.require_approval,)
    if body.server_url is None:
        spec = _declared(space, tenant, body.server_label, param)
        declared_headers = (secrets or {}).get(spec.label, {})
        kept = tuple((k, v) for k, v in request_headers if k.lower() not in {h.lower() for h in declared_headers})
        return McpServer(
            label=spec.label,
            url=spec.url,
            transport=spec.transport,
            headers=kept + tuple(declared_headers.items()),
            allowed_tools=_narrow(_allowed(spec.allowed_tools), _allowed(body.allowed_tools)),
            approvals=(spec.require_approval, *request_approval),
            description=body.server_description or spec.description,
            timeout=spec.timeout_seconds,
            policy=policy,
            declared=True,
        )
    url = body.server_url
    if _dot_segments(url) or not server_allowed(url, space.mcp.allowed_servers):
        raise InvalidRequest(
            f"{param}.server_url: {shown(url)} is not an MCP server this space allows", param=f"{param}.server_url"
        )
    return McpServer(
        label=body.server_label,
        url=url,
        headers=request_headers,
        allowed_tools=_allowed(body.allowed_tools),
        approvals=request_approval or ("always",),
        description=body.server_description or "",
        policy=policy,
    )


def _declared(space: Space, tenant: Tenant, label: str, param: str) -> McpServerSpec:
    spec = next((s for s in tenant.mcp_servers if s.label == label), None)
    if spec is None or label not in space.tools:
        raise InvalidRequest(
            f"{param}.server_label: {shown(label)} is not an MCP server of this space, and no server_url was given",
            param=f"{param}.server_label",
        )
    return spec
