"""Validation of a Responses create request, before anything is stored or sent upstream.

Every failure is an ``InvalidRequest`` naming the field: 400 ``invalid_request_error`` with ``param`` on the
OpenAI route, 422 ``{"detail": [{"loc": ["body", …]}]}`` on the native one. Unknown fields are accepted and
ignored (OpenAI's newer fields pass through the gateway unharmed).
"""

from typing import Any

import orjson

from gateway.call_options import refuse_call_options
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


# Scalars read from an input item or part: path suffix -> accepted types. Required keys are checked per type.
_STR = (str,)
_REQUIRED: dict[str, dict[str, tuple[type, ...]]] = {
    "message": {"content": (str, list)},
    "function_call": {"call_id": _STR, "name": _STR, "arguments": _STR},
    "function_call_output": {"call_id": _STR, "output": (str, list)},
    "item_reference": {"id": _STR},
    "reasoning": {},
    # MCP items (gateway/responses/mcp_items.py): an approval answers a request of the previous response; the
    # others come back when a caller sends a conversation's output again
    "mcp_approval_response": {"approval_request_id": _STR, "approve": (bool,)},
    "mcp_approval_request": {"id": _STR, "server_label": _STR, "name": _STR, "arguments": _STR},
    "mcp_call": {"id": _STR, "server_label": _STR, "name": _STR, "arguments": _STR},
    "mcp_list_tools": {"id": _STR, "server_label": _STR, "tools": (list,)},
}
_OPTIONAL_ITEM = {"id": _STR, "status": _STR, "summary": (list,)}
_PART_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "input_text": {"text": _STR},
    "output_text": {"text": _STR},
    "refusal": {"refusal": _STR},
    "input_image": {"image_url": _STR, "file_id": _STR, "detail": _STR},
    "input_file": {"file_id": _STR, "file_data": _STR, "filename": _STR, "file_url": _STR},
}
_PART_REQUIRED = {"input_text": "text", "output_text": "text", "refusal": "refusal"}
_TYPE_NAMES = {str: "a string", list: "an array", dict: "an object", bool: "a boolean", int: "an integer"}


def _what(kinds: tuple[type, ...]) -> str:
    return " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)


def _is(value: Any, kinds: tuple[type, ...]) -> bool:
    """isinstance, except that a boolean is not a number (JSON tells them apart)."""
    return isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)


def _field(obj: JSON, key: str, kinds: tuple[type, ...], where: str, required: bool = False) -> Any:
    """``obj[key]`` if of ``kinds``; absent (or null) only when not required. The message says which it was."""
    value = obj.get(key)
    path = f"{where}.{key}" if where else key
    if value is None:
        if required:
            raise _fail(f"'{path}' is required.", path, value, "missing")
        return None
    if not _is(value, kinds):
        raise _fail(f"'{path}' must be {_what(kinds)}.", path, value, "type_error")
    return value


def _object(value: Any, where: str) -> JSON:
    if not isinstance(value, dict):
        raise _fail(f"'{where}' must be an object.", where, value, "dict_type")
    return value


def _validate_items(items: list[Any], param: str) -> None:
    for i, item in enumerate(items):
        _validate_item(item, f"{param}[{i}]")


def _validate_item(raw: Any, where: str) -> None:
    item = _object(raw, where)
    kind = _field(item, "type", _STR, where) or ("message" if "role" in item else None)
    if kind not in _REQUIRED:
        raise _fail(f"'{where}.type' must be one of {sorted(_REQUIRED)}; got {kind!r}.", f"{where}.type", kind)
    if kind == "message" and not (isinstance(item.get("role"), str) and item["role"] in ROLES):
        raise _fail(f"'{where}.role' must be one of {sorted(ROLES)}.", f"{where}.role", item.get("role"))
    for key, kinds in _REQUIRED[kind].items():
        value = _field(item, key, kinds, where, required=True)
        if value == "" and key not in ("arguments", "content", "output"):
            raise _fail(f"'{where}.{key}' must not be empty.", f"{where}.{key}", value, "missing")
    for key, kinds in _OPTIONAL_ITEM.items():
        _field(item, key, kinds, where)
    for key in ("content", "output"):
        parts = item.get(key)
        if isinstance(parts, list):
            for j, part in enumerate(parts):
                _validate_part(part, f"{where}.{key}[{j}]")


def _validate_part(raw: Any, where: str) -> None:
    part = _object(raw, where)
    kind = _field(part, "type", _STR, where, required=True)
    fields = _PART_FIELDS.get(kind)
    if fields is None:
        raise _fail(f"'{where}.type' must be one of {sorted(_PART_FIELDS)}; got {kind[:40]!r}.", f"{where}.type", kind)
    for key, kinds in fields.items():
        _field(part, key, kinds, where, required=_PART_REQUIRED.get(kind) == key)


def _validate_tools(body: JSON) -> None:
    tools = _field(body, "tools", (list,), "")
    for i, raw in enumerate(tools or ()):
        where = f"tools[{i}]"
        tool = _object(raw, where)
        kind = _field(tool, "type", _STR, where, required=True)
        if kind == "function":
            _field(tool, "name", _STR, where, required=True)
            _field(tool, "description", _STR, where)
            _field(tool, "parameters", (dict,), where)
            _field(tool, "strict", (bool,), where)


def _validate_tool_choice(body: JSON) -> None:
    choice = _field(body, "tool_choice", (str, dict), "")
    if not isinstance(choice, dict):
        return
    kind = _field(choice, "type", _STR, "tool_choice", required=True)
    if kind == "function":
        _field(choice, "name", _STR, "tool_choice", required=True)
    elif kind == "allowed_tools":
        _field(choice, "mode", _STR, "tool_choice")
        for i, tool in enumerate(_field(choice, "tools", (list,), "tool_choice", required=True)):
            _field(_object(tool, f"tool_choice.tools[{i}]"), "type", _STR, f"tool_choice.tools[{i}]", required=True)
            _field(tool, "name", _STR, f"tool_choice.tools[{i}]")


def _validate_options(body: JSON) -> None:
    """``text``, ``reasoning``, ``include``, ``prompt``, ``stream_options``: the nested options the gateway reads."""
    text = _field(body, "text", (dict,), "")
    if text is not None:
        _field(text, "verbosity", _STR, "text")
        fmt = _field(text, "format", (dict,), "text")
        if fmt is not None:
            kind = _field(fmt, "type", _STR, "text.format", required=True)
            if kind == "json_schema":
                _field(fmt, "name", _STR, "text.format", required=True)
                _field(fmt, "schema", (dict,), "text.format", required=True)
                _field(fmt, "description", _STR, "text.format")
                _field(fmt, "strict", (bool,), "text.format")
    reasoning = _field(body, "reasoning", (dict,), "")
    if reasoning is not None:
        for key in ("effort", "summary", "generate_summary"):
            _field(reasoning, key, _STR, "reasoning")
    for i, entry in enumerate(_field(body, "include", (list,), "") or ()):
        if not isinstance(entry, str):
            raise _fail(f"'include[{i}]' must be a string.", f"include[{i}]", entry, "type_error")
    _field(body, "prompt", (dict,), "")
    options = _field(body, "stream_options", (dict,), "")
    if options is not None:
        _field(options, "include_obfuscation", (bool,), "stream_options")


_TOP_LEVEL: dict[str, tuple[type, ...]] = {
    "model": _STR,
    "previous_response_id": _STR,
    "user": _STR,
    "safety_identifier": _STR,
    "prompt_cache_key": _STR,
    "service_tier": _STR,
    "truncation": _STR,
    "tool_mode": _STR,
    "stream": (bool,),
    "store": (bool,),
    "background": (bool,),
    "parallel_tool_calls": (bool,),
    "max_tool_calls": (int,),
}


def validate_create(body: JSON, native: bool = False) -> None:
    """Check a create request's whole shape (every field the gateway reads, nested items included) in place;
    raises InvalidRequest naming the first bad field by its path. Plain isinstance checks: this is the hot path."""
    refuse_call_options(body)
    value = body.get("input")
    if value is None or value == "" or value == []:
        raise _fail("'input' is required.", "input", value, "missing")
    if isinstance(value, list):
        _validate_items(value, "input")
    elif not isinstance(value, str):
        raise _fail("'input' must be a string or an array of input items.", "input", value, "type_error")
    for key, kinds in _TOP_LEVEL.items():
        _field(body, key, kinds, "")
    instructions = _field(body, "instructions", (str, list), "")
    if isinstance(instructions, list):
        _validate_items(instructions, "instructions")
    _validate_tools(body)
    _validate_tool_choice(body)
    _validate_options(body)
    _range(body, "temperature", 0, 2)
    _range(body, "top_p", 0, 1)
    _range(body, "top_logprobs", 0, 20)
    max_tokens = _typed(body, "max_output_tokens", int, "an integer")
    if max_tokens is not None and max_tokens < 1:
        raise _fail("'max_output_tokens' must be at least 1.", "max_output_tokens", max_tokens, "greater_than_equal")
    validate_metadata(body.get("metadata"))
    if body.get("background") and body.get("store") is False:
        raise _fail("Background responses must be stored: 'background' needs 'store' true.", "background", True)
    if body.get("conversation") is not None:
        # Conversations are not implemented: accepting and echoing the field would pretend they are.
        raise _fail(
            "'conversation' is not supported; chain turns with 'previous_response_id'.",
            "conversation",
            None,
            "value_error",
        )
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
