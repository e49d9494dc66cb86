"""What running a tool gives back: a ``ToolResult`` (its failure included), and the one error a tool server's
unavailability raises when there is no tool result to give (listing an MCP server's tools)."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import GatewayError
from gateway.tools.ssrf import MAX_SHOWN, Refused, Unresolvable

MAX_ERROR = 1024  # characters of a tool's or server's own error message kept
MAX_ARGUMENTS = 256 * 1024  # bytes of a model's arguments accepted


@dataclass(frozen=True, slots=True)
class ToolResult:
    """A tool's answer for the model. ``error`` is set when the tool failed (it said so, raised, timed out, could
    not be reached, or its arguments were invalid); the loop feeds either back to the model, never to the caller
    as a gateway error. ``output`` is bounded (``tool_output_max_bytes``), cut with a marker."""

    output: str
    error: str | None = None

    @classmethod
    def failed(cls, error: str) -> "ToolResult":
        return cls("", bounded_text(error, MAX_ERROR))


class ToolUnavailable(GatewayError):
    """An MCP server could not be reached or answered nonsense while listing its tools: 424, OpenAI's status for
    "Error retrieving tool list from MCP server". The message names the server by its label, bounded."""

    status_code = 424
    error_type = "external_connector_error"
    code = "mcp_server_unavailable"


def bounded_text(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with a marker."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"… [cut: {len(text)} characters, {limit} kept]"


def bounded_output(text: str, max_bytes: int) -> str:
    """``text`` cut to ``max_bytes`` of UTF-8 (on a character boundary) with a marker saying how much was cut."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= max_bytes:
        return text
    kept = raw[:max_bytes].decode("utf-8", "ignore")
    return kept + f"\n[output truncated: {len(raw)} bytes, {max_bytes} kept]"


def describe(exc: BaseException) -> str:
    """A bounded sentence for a failure to reach or use a tool server: our own refusals as they are, anything
    else by its type and the start of its message (which may repeat a URL)."""
    leaf = _leaf(exc)
    seen: set[int] = set()
    cursor: BaseException | None = leaf
    while cursor is not None and id(cursor) not in seen:  # a refusal wrapped by the HTTP client's own error
        if isinstance(cursor, Refused | Unresolvable):
            return str(cursor)
        seen.add(id(cursor))
        cursor = cursor.__cause__ or cursor.__context__
    message = str(leaf).strip().splitlines()[0] if str(leaf).strip() else ""
    name = type(leaf).__name__
    return f"{name}: {message[: MAX_SHOWN * 2]}" if message else name


def _leaf(exc: BaseException) -> BaseException:
    """The first real failure inside task-group exception groups (the MCP SDK runs its transports in them)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def parse_arguments(arguments: str | Mapping[str, Any] | None) -> dict[str, Any] | str:
    """A model's tool arguments (its JSON string, or an object) as an object, or why they are not one."""
    if arguments is None or arguments == "":
        return {}
    if not isinstance(arguments, str):
        return dict(arguments)
    if len(arguments) > MAX_ARGUMENTS:
        return f"the arguments are longer than {MAX_ARGUMENTS} bytes"
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return "the arguments are not valid JSON"
    return parsed if isinstance(parsed, dict) else "the arguments must be a JSON object"
