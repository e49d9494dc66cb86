"""A create request's ``input`` as stored items, and as sent upstream with ``x_context`` rendered in.

Stored items have OpenAI's input-item shape with ids (``msg_…`` for messages), which ``input_items`` lists and
the next turn replays. ``x_context`` (seed 001) is a structured object rendered ahead of the last user message
as a ``<user-context>`` block; the stored item keeps the raw object in ``metadata.context`` and its own text.
"""

import os
from typing import Any

from gateway.http import json_copy

JSON = dict[str, Any]

_ID_PREFIX = {"message": "msg_", "function_call": "fc_", "function_call_output": "fco_"}


def _with_id(item: JSON) -> JSON:
    kind = item.get("type") or "message"
    out = {**item, "type": kind}
    if kind in _ID_PREFIX and not out.get("id"):
        out["id"] = _ID_PREFIX[kind] + os.urandom(16).hex()
    if kind == "message":
        out.setdefault("status", "completed")
        if isinstance(out.get("content"), str):
            part = "output_text" if out.get("role") == "assistant" else "input_text"
            text_part: JSON = {"type": part, "text": out["content"]}
            if part == "output_text":
                text_part["annotations"] = []
            out["content"] = [text_part]
    return out


def format_context(context: JSON) -> str:
    """``[Context: key — k: v, …]`` lines inside a ``<user-context>`` block, ending in a blank line."""
    lines = []
    for key, value in context.items():
        if isinstance(value, dict):
            body = ", ".join(f"{k}: {_plain(v)}" for k, v in value.items())
        else:
            body = _plain(value)
        lines.append(f"[Context: {key} — {body}]")
    return "<user-context>\n" + "\n".join(lines) + "\n</user-context>\n\n"


def _plain(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_plain(v) for v in value)
    return str(value)


def _last_user(items: list[JSON]) -> JSON | None:
    for item in reversed(items):
        if item.get("type", "message") == "message" and item.get("role") == "user":
            return item
    return None


def normalize_input(raw: Any, context: JSON | None) -> tuple[list[JSON], list[JSON]]:
    """(items to store, items to send upstream)."""
    items = [{"type": "message", "role": "user", "content": raw}] if isinstance(raw, str) else list(raw)
    stored = [_with_id(item) for item in items]
    if not context:
        return stored, items
    upstream = json_copy(items)
    target = _last_user(upstream)
    if target is None:
        upstream.append({"type": "message", "role": "user", "content": format_context(context).rstrip()})
    elif isinstance(target.get("content"), str):
        target["content"] = format_context(context) + target["content"]
    else:
        target["content"] = [{"type": "input_text", "text": format_context(context)}, *target["content"]]
    holder = _last_user(stored) or (stored[-1] if stored else None)
    if holder is not None:
        holder["metadata"] = {**(holder.get("metadata") or {}), "context": context}
    return stored, upstream
