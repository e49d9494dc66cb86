"""OpenAI's MCP output items (``mcp_list_tools``, ``mcp_call``, ``mcp_approval_request``) and how a conversation
holding them is sent to a model that knows only function calls.

The model sees each MCP tool as a function named ``<server_label>__<tool>`` (``function_name``); an executed
``mcp_call`` goes back to it as that function's call and output (``plain_items``), so a conversation continued
with ``previous_response_id`` reads the same on every upstream. Pure functions: table-tested.
"""

import os
import re
from typing import Any

import orjson

JSON = dict[str, Any]
MCP_ITEMS = frozenset({"mcp_list_tools", "mcp_call", "mcp_approval_request", "mcp_approval_response"})
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def function_name(server_label: str, tool: str) -> str:
    """The function name a model calls an MCP tool by (OpenAI's rule: ``[A-Za-z0-9_-]{1,64}``)."""
    return _UNSAFE.sub("_", f"{server_label}__{tool}")[:64]


def new_item_id(kind: str) -> str:
    prefix = {"mcp_list_tools": "mcpl_", "mcp_call": "mcp_", "mcp_approval_request": "mcpr_"}[kind]
    return prefix + os.urandom(16).hex()


def list_tools_item(item_id: str, server_label: str, tools: list[JSON], error: str | None = None) -> JSON:
    return {"type": "mcp_list_tools", "id": item_id, "server_label": server_label, "tools": tools, "error": error}


def call_item(item_id: str, server_label: str, name: str, arguments: str, status: str = "in_progress") -> JSON:
    return {
        "type": "mcp_call",
        "id": item_id,
        "server_label": server_label,
        "name": name,
        "arguments": arguments,
        "output": None,
        "error": None,
        "status": status,
    }


def approval_item(item_id: str, server_label: str, name: str, arguments: str) -> JSON:
    return {
        "type": "mcp_approval_request",
        "id": item_id,
        "server_label": server_label,
        "name": name,
        "arguments": arguments,
    }


def plain_items(items: list[JSON]) -> list[JSON]:
    """``items`` with every MCP item in function-call terms: an ``mcp_call`` becomes the call and its output
    (the error text when it failed); tool listings and approval items are the gateway's business, dropped."""
    if not any(isinstance(item, dict) and item.get("type") in MCP_ITEMS for item in items):
        return items
    out: list[JSON] = []
    for item in items:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind not in MCP_ITEMS:
            out.append(item)
        elif kind == "mcp_call":
            call_id = str(item.get("id") or "")
            name = function_name(str(item.get("server_label") or ""), str(item.get("name") or ""))
            arguments = item.get("arguments") if isinstance(item.get("arguments"), str) else "{}"
            out.append({"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments})
            out.append({"type": "function_call_output", "call_id": call_id, "output": call_output(item)})
    return out


def call_output(item: JSON) -> str:
    """What the model reads back for an executed call: its output, or its error."""
    if item.get("error"):
        return f"Error: {item['error']}"
    output = item.get("output")
    return output if isinstance(output, str) else orjson.dumps(output).decode()


def listed_tools(items: list[JSON]) -> dict[str, list[JSON]]:
    """The tools each server listed earlier in a conversation (its latest good ``mcp_list_tools``), by label."""
    found: dict[str, list[JSON]] = {}
    for item in items:
        if isinstance(item, dict) and item.get("type") == "mcp_list_tools" and not item.get("error"):
            tools = item.get("tools")
            if isinstance(tools, list):
                found[str(item.get("server_label"))] = [t for t in tools if isinstance(t, dict)]
    return found


def add_usage(total: JSON | None, more: JSON | None) -> JSON | None:
    """Two Responses ``usage`` objects summed, details included."""
    if not isinstance(more, dict):
        return total
    if not isinstance(total, dict):
        return more
    summed: JSON = {}
    for key in ("input_tokens", "output_tokens", "total_tokens"):
        summed[key] = int(total.get(key) or 0) + int(more.get(key) or 0)
    for key, inner in (("input_tokens_details", "cached_tokens"), ("output_tokens_details", "reasoning_tokens")):
        a, b = total.get(key) or {}, more.get(key) or {}
        summed[key] = {**a, **b, inner: int(a.get(inner) or 0) + int(b.get(inner) or 0)}
    return summed
