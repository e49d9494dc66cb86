"""HTTP tools from the catalogue: a URL and method a model calls as a function, its arguments checked against the
tool's JSON Schema, sent through the same checked and pinned client as MCP (``ssrf.pinned_client``).

A GET sends the arguments as its query string (a list repeats the name, an object is sent as JSON); any other
method sends them as the JSON body. Redirects are not followed: a 3xx is the tool's error, naming the status.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx2
import orjson
from jsonschema import Draft202012Validator

from config.tools import HttpToolSpec
from gateway.tools.results import ToolResult, bounded_output, bounded_text, describe, parse_arguments
from gateway.tools.ssrf import AddressPolicy, pinned_client, shown


@dataclass(frozen=True)
class HttpTool:
    """One declared HTTP tool, with its secret headers (read from the environment at start, never shown)."""

    spec: HttpToolSpec
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    validator: Draft202012Validator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "validator", Draft202012Validator(self.spec.parameters))

    @property
    def name(self) -> str:
        return self.spec.name

    def as_function(self) -> dict[str, Any]:
        """The tool as the model sees it: a Responses ``function`` tool."""
        return {
            "type": "function",
            "name": self.spec.name,
            "description": self.spec.description,
            "parameters": self.spec.parameters,
        }

    def check(self, arguments: str | Mapping[str, Any] | None) -> dict[str, Any] | str:
        """The arguments as an object, or why they are not valid for this tool (for the model)."""
        parsed = parse_arguments(arguments)
        if isinstance(parsed, str):
            return parsed
        error = next(iter(self.validator.iter_errors(parsed)), None)
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
            return f"invalid arguments at {bounded_text(where, 100)}: {bounded_text(error.message, 300)}"
        return parsed


def _query(arguments: dict[str, Any]) -> list[tuple[str, str | int | float | bool | None]]:
    pairs: list[tuple[str, str | int | float | bool | None]] = []
    for name, value in arguments.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                pairs.append((name, item))
            elif isinstance(item, bool) or item is None:
                pairs.append((name, orjson.dumps(item).decode()))
            elif isinstance(item, int | float):
                pairs.append((name, str(item)))
            else:
                pairs.append((name, orjson.dumps(item).decode()))
    return pairs


class HttpTools:
    """The clients of one app's HTTP tools, one per address policy (a space's ``allow_private``), pooled."""

    def __init__(self, dns_timeout: float, max_output_bytes: int) -> None:
        self.dns_timeout = dns_timeout
        self.max_output_bytes = max_output_bytes
        self._clients: dict[AddressPolicy, httpx2.AsyncClient] = {}

    def _client(self, policy: AddressPolicy) -> httpx2.AsyncClient:
        client = self._clients.get(policy)
        if client is None:
            client = self._clients[policy] = pinned_client(policy, self.dns_timeout)
        return client

    async def call(
        self,
        tool: HttpTool,
        arguments: str | Mapping[str, Any] | None,
        policy: AddressPolicy,
        timeout: float | None = None,
    ) -> ToolResult:
        """Call the tool; every failure (invalid arguments, refused address, timeout, non-2xx) is a
        ``ToolResult`` error for the model, never an exception."""
        checked = tool.check(arguments)
        if isinstance(checked, str):
            return ToolResult.failed(checked)
        spec = tool.spec
        limit = timeout if timeout is not None and timeout > 0 else spec.timeout_seconds
        is_get = spec.method == "GET"
        request = self._client(policy).build_request(
            spec.method,
            httpx2.URL(spec.url).copy_merge_params(_query(checked)) if is_get else spec.url,  # the URL's own kept
            content=None if is_get else orjson.dumps(checked),
            headers={**({} if is_get else {"content-type": "application/json"}), **dict(tool.headers)},
            timeout=httpx2.Timeout(limit),
        )
        try:
            response = await self._client(policy).send(request, stream=True)
            try:
                body = await _read(response, self.max_output_bytes)
            finally:
                await response.aclose()
        except httpx2.TimeoutException:
            return ToolResult.failed(f"tool {shown(spec.name)} timed out after {limit:g} s")
        except httpx2.HTTPError as exc:
            return ToolResult.failed(f"tool {shown(spec.name)} could not be reached: {describe(exc)}")
        text = bounded_output(body.decode("utf-8", "replace"), self.max_output_bytes)
        status = response.status_code
        if 300 <= status < 400:
            where = response.headers.get("location", "")
            return ToolResult.failed(f"HTTP {status}: redirects are not followed (to {shown(where)})")
        if not 200 <= status < 300:
            return ToolResult.failed(f"HTTP {status}: {bounded_text(text, 1000)}")
        return ToolResult(text)

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()


async def _read(response: httpx2.Response, max_bytes: int) -> bytes:
    """At most ``max_bytes`` plus one chunk of the body: enough to know it was cut, never all of a huge one."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            break
    return b"".join(chunks)
