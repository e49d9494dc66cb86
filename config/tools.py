"""Tools the gateway executes, as the catalogue declares them: a tenant's MCP servers and HTTP tools, and what a
space may reach (``mcp.allowed_servers`` for servers a request names, ``mcp.allow_private`` for private
addresses, ``tools`` for the tenant's declared ones). Secrets are never here: headers name environment variables.
"""

import ipaddress
import re
from typing import Any, Literal
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME = r"^[A-Za-z0-9_-]{1,64}$"  # a tool's or server's name: what a model may call (OpenAI's function names)
_HEADER = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_HOST = re.compile(r"^[A-Za-z0-9_.-]{1,253}$")
# headers the transport owns; a configured or request-supplied value would break or smuggle the request
RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer", "keep-alive"}
    | {"proxy-authorization", "proxy-connection", "mcp-session-id", "mcp-protocol-version", "last-event-id"}
)
MAX_URL = 2048


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def url_problem(url: str) -> str | None:
    """Why ``url`` is not an absolute http(s) URL the gateway may be configured with, or None. Only the syntax:
    which addresses it reaches is ``gateway.tools.ssrf``'s decision."""
    if len(url) > MAX_URL:
        return f"is longer than {MAX_URL} characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "must not carry a user or password"
    if not parts.hostname:
        return "has no host"
    if port == 0:
        return "has port 0"
    return None


def header_problem(name: str) -> str | None:
    """Why ``name`` may not be sent as a configured or caller-supplied header, or None."""
    if not _HEADER.match(name):
        return "is not a valid header name"
    if name.lower() in RESERVED_HEADERS:
        return "is a header the transport sets itself"
    return None


def _check_url(url: str) -> str:
    problem = url_problem(url)
    if problem:
        raise ValueError(f"url {problem}")
    return url


def _check_headers_env(value: dict[str, str]) -> dict[str, str]:
    for header, env in value.items():
        problem = header_problem(header)
        if problem:
            raise ValueError(f"header {header[:64]!r} {problem}")
        if not _ENV.match(env):
            raise ValueError(f"header {header!r}: {env[:64]!r} is not an environment variable name")
    return value


class ToolNames(_Strict):
    tool_names: list[str] = Field(default_factory=list, max_length=256)


class ApprovalFilter(_Strict):
    """OpenAI's filter form: the tools listed under ``never`` run without approval, those under ``always``
    need it; a tool in neither needs it (the safe side)."""

    always: ToolNames | None = None
    never: ToolNames | None = None


Approval = Literal["always", "never"] | ApprovalFilter


class McpServerSpec(_Strict):
    """A remote MCP server a tenant declares; a request refers to it as ``{"type": "mcp", "server_label": label}``."""

    label: str = Field(pattern=NAME)
    url: str
    transport: Literal["streamable_http", "sse"] = "streamable_http"
    headers_env: dict[str, str] = Field(default_factory=dict, description="Header name -> environment variable.")
    allowed_tools: list[str] | None = Field(None, max_length=256, description="None: every tool it lists.")
    require_approval: Approval = Field("always", description="OpenAI's default: every call waits for approval.")
    description: str = Field("", max_length=4096)
    timeout_seconds: float = Field(30.0, gt=0, le=600)

    _url = field_validator("url")(_check_url)
    _headers = field_validator("headers_env")(_check_headers_env)


class HttpToolSpec(_Strict):
    """An HTTP endpoint a model may call as a function: the arguments (checked against ``parameters``) are the
    query string of a GET, else the JSON body."""

    name: str = Field(pattern=NAME)
    description: str = Field("", max_length=4096)
    url: str
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    timeout_seconds: float = Field(30.0, gt=0, le=600)
    headers_env: dict[str, str] = Field(default_factory=dict, description="Header name -> environment variable.")

    _url = field_validator("url")(_check_url)
    _headers = field_validator("headers_env")(_check_headers_env)

    @field_validator("parameters")
    @classmethod
    def _check_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        if schema.get("type") != "object":
            raise ValueError('parameters must be a JSON Schema of an object ("type": "object")')
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise ValueError(f"parameters is not a valid JSON Schema: {exc.message[:200]}") from None
        return schema


def _check_allowed_server(entry: str) -> str:
    if entry in ("http://*", "https://*"):  # any server of that scheme (the address rules still hold)
        return entry
    problem = url_problem(entry.removesuffix("*"))
    if problem:
        raise ValueError(f"allowed_servers entry {entry[:100]!r} {problem}")
    return entry


def _check_private(entry: str) -> str:
    bare = entry.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_network(bare, strict=False)
    except ValueError:
        if not _HOST.match(bare):
            raise ValueError(f"allow_private entry {entry[:100]!r} is not a host, an address or a CIDR") from None
    return entry


class SpaceMcp(_Strict):
    """Which MCP servers a request of this space may name, and which private addresses the space may reach."""

    allowed_servers: list[str] = Field(
        default_factory=list, description='Exact URLs, or prefixes ending in "/" or "*"; empty: none.'
    )
    allow_private: list[str] = Field(
        default_factory=list, description="Hosts, addresses or CIDRs allowed although private or loopback."
    )

    @field_validator("allowed_servers")
    @classmethod
    def _servers(cls, value: list[str]) -> list[str]:
        return [_check_allowed_server(v) for v in value]

    @field_validator("allow_private")
    @classmethod
    def _private(cls, value: list[str]) -> list[str]:
        return [_check_private(v) for v in value]
