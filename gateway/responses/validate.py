"""Validation of a Responses create request, before anything is stored or sent upstream.

Every failure is an ``InvalidRequest`` naming the field: 400 ``invalid_request_error`` with ``param`` on the
OpenAI route, 422 ``{"detail": [{"loc": ["body", …]}]}`` on the native one. Unknown fields are accepted and
ignored (OpenAI's newer fields pass through the gateway unharmed).
"""

from typing import Any

import orjson

from gateway.errors import InvalidRequest

JSON = dict[str, Any]

ROLES = {"user", "assistant", "system", "developer"}
MAX_CONTEXT_BYTES = 10 * 1024
TOOL_MODES = ("auto_resolve", "manual")


def _fail(message: str, param: str, value: Any = None, kind: str = "value_error") -> InvalidRequest:
    loc: tuple[str | int, ...] = (
        "body",
        *(int(p) if p.isdigit() else p for p in param.replace("]", "").replace("[", ".").split(".")),
    )
    return InvalidRequest(message, param=param, loc=loc, kind=kind, input=value)


def _typed(body: JSON, key: str, kinds: type | tuple[type, ...], what: str) -> Any:
    value = body.get(key)
    if value is not None and (not isinstance(value, kinds) or isinstance(value, bool) and bool not in _tuple(kinds)):
        raise _fail(f"'{key}' must be {what}.", key, value, "type_error")
    return value


def _tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _range(body: JSON, key: str, low: float, high: float) -> None:
    value = _typed(body, key, (int, float), "a number")
    if value is not None and not low <= value <= high:
        raise _fail(f"'{key}' must be between {low:g} and {high:g}; got {value}.", key, value, "less_than_equal")


def validate_metadata(metadata: Any, param: str = "metadata") -> None:
    """OpenAI's limits: at most 16 pairs, keys up to 64 characters, string values up to 512."""
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise _fail("'metadata' must be an object of string values.", param, metadata, "dict_type")
    if len(metadata) > 16:
        raise _fail("'metadata' may hold at most 16 key-value pairs.", param, len(metadata))
    for key, value in metadata.items():
        if len(key) > 64:
            raise _fail(f"metadata key '{key[:70]}' is longer than 64 characters.", param, key)
        if not isinstance(value, str) or len(value) > 512:
            raise _fail(f"metadata['{key}'] must be a string of at most 512 characters.", param, value)


# What each item type must carry, and of which type.
_REQUIRED: dict[str, dict[str, tuple[type, ...]]] = {
    "message": {"content": (str, list)},
    "function_call": {"call_id": (str,), "name": (str,), "arguments": (str,)},
    "function_call_output": {"call_id": (str,), "output": (str, list)},
    "item_reference": {"id": (str,)},
    "reasoning": {},
}


def _validate_item(item: Any, where: str) -> None:
    if not isinstance(item, dict):
        raise _fail(f"'{where}' must be an object.", where, item, "dict_type")
    kind = item.get("type") or ("message" if "role" in item else None)
    if kind not in _REQUIRED:
        raise _fail(f"'{where}.type' must be one of {sorted(_REQUIRED)}; got {kind!r}.", f"{where}.type", kind)
    if kind == "message" and item.get("role") not in ROLES:
        raise _fail(f"'{where}.role' must be one of {sorted(ROLES)}.", f"{where}.role", item.get("role"))
    for key, kinds in _REQUIRED[kind].items():
        if not isinstance(item.get(key), kinds) or item.get(key) == "" and key != "arguments":
            raise _fail(f"'{where}.{key}' is required.", f"{where}.{key}", item.get(key), "missing")


def validate_create(body: JSON, native: bool = False) -> None:
    """Check a create request in place; raises InvalidRequest naming the first bad field."""
    value = body.get("input")
    if value is None or value == "" or value == []:
        raise _fail("'input' is required.", "input", value, "missing")
    if isinstance(value, list):
        for i, item in enumerate(value):
            _validate_item(item, f"input[{i}]")
    elif not isinstance(value, str):
        raise _fail("'input' must be a string or an array of input items.", "input", value, "type_error")
    _typed(body, "model", str, "a string")
    _typed(body, "instructions", (str, list), "a string")
    _typed(body, "previous_response_id", str, "a string")
    for flag in ("stream", "store", "background", "parallel_tool_calls"):
        _typed(body, flag, bool, "a boolean")
    _typed(body, "tools", list, "an array")
    _range(body, "temperature", 0, 2)
    _range(body, "top_p", 0, 1)
    _range(body, "top_logprobs", 0, 20)
    max_tokens = _typed(body, "max_output_tokens", int, "an integer")
    if max_tokens is not None and max_tokens < 1:
        raise _fail("'max_output_tokens' must be at least 1.", "max_output_tokens", max_tokens, "greater_than_equal")
    validate_metadata(body.get("metadata"))
    if body.get("background") and body.get("store") is False:
        raise _fail("Background responses must be stored: 'background' needs 'store' true.", "background", True)
    if body.get("previous_response_id") and body.get("conversation"):
        raise _fail("'previous_response_id' cannot be combined with 'conversation'.", "conversation")
    mode = body.get("tool_mode")
    if mode is not None and mode not in TOOL_MODES:
        raise _fail(f"'tool_mode' must be one of {list(TOOL_MODES)}.", "tool_mode", mode, "enum")
    _validate_context(body.get("x_context", body.get("context")))


def _validate_context(context: Any) -> None:
    if context is None:
        return
    if not isinstance(context, dict):
        raise _fail("'x_context' must be an object.", "x_context", context, "dict_type")
    size = len(orjson.dumps(context))
    if size > MAX_CONTEXT_BYTES:
        raise _fail(f"x_context exceeds 10 KB limit ({size} bytes).", "x_context", None)
