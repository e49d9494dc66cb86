"""Pure translation between the Responses API and Chat Completions (CONTRACT §4.1, §4.2).

Nothing here does I/O or keeps state: the engine validates the request, loads the earlier turns from its store,
calls these functions and talks to the upstream. Inputs are never mutated; outputs are fresh dicts (nested echoes
of the request, such as ``tools`` or ``metadata``, may share structure with the request).
"""

import time
from typing import Any

import orjson

from gateway.responses.ids import new_call_id, new_function_call_id, new_message_id, new_reasoning_id
from gateway.responses.mcp_items import plain_items

JSON = dict[str, Any]

# Request fields that mean the same thing in both APIs; ``None`` values are never forwarded, because some of them
# (user, parallel_tool_calls) are not nullable in Chat.
_PASS_THROUGH = "temperature top_p user safety_identifier prompt_cache_key service_tier top_logprobs".split()
_IMAGE_DETAILS = ("low", "high", "auto")
_PART_VALUE = {"input_text": "text", "input_image": "image_url"}


class UnsupportedFeature(ValueError):
    """A request feature a Chat Completions upstream cannot carry; the engine answers 400 naming ``param``."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


# --- request: Responses -> Chat ---------------------------------------------------------------------------------


def request_to_chat(request: JSON, history: list[JSON]) -> JSON:
    """The Chat Completions body for a validated Responses create request.

    ``history`` is the items of earlier turns (inputs and outputs, oldest first); the request's ``instructions``
    become the leading system message and are never taken from history. ``model`` is copied as sent (the engine
    swaps in the upstream name). Gateway-only fields (store, metadata, background, include, truncation,
    previous_response_id, conversation, x_context) are never forwarded. Raises ``UnsupportedFeature`` for
    anything Chat cannot express (hosted tools, unknown item types, images by file id, prompt templates).
    """
    if request.get("prompt") is not None:
        raise UnsupportedFeature("prompt", "Stored prompt templates are not supported for this model.")
    messages: list[JSON] = []
    instructions = request.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    elif isinstance(instructions, list):
        _append_items(messages, instructions, "instructions")
    _append_items(messages, history, "previous_response_id")
    user_input = request.get("input")
    if isinstance(user_input, str):
        messages.append({"role": "user", "content": user_input})
    elif isinstance(user_input, list):
        _append_items(messages, user_input, "input")
    body: JSON = {"model": request.get("model"), "messages": messages}
    body.update(_tools(request))
    body.update(_output_options(request))
    for key in _PASS_THROUGH:
        if request.get(key) is not None:
            body[key] = request[key]
    if request.get("top_logprobs") is not None:
        # Chat only honours top_logprobs (and rejects it, on OpenAI) unless logprobs is switched on.
        body["logprobs"] = True
    if request.get("stream"):
        # Forced: response.completed must carry usage, and Chat only streams it when asked.
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def _append_items(messages: list[JSON], items: list[JSON], param: str) -> None:
    for i, item in enumerate(plain_items(items)):
        where = f"{param}[{i}]" if param != "previous_response_id" else param
        if not isinstance(item, dict):
            raise UnsupportedFeature(where, f"'{where}' must be an object.")
        kind = item.get("type") or ("message" if "role" in item else "item_reference")
        if kind == "message":
            messages.append(_message(item, where))
        elif kind == "function_call":
            _append_tool_call(messages, item)
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": _tool_output(item)})
        elif kind == "reasoning":
            continue  # Chat has no way to send reasoning back; the upstream re-derives it.
        else:
            raise UnsupportedFeature(where, f"Input items of type '{kind}' are not supported for this model.")


def _append_tool_call(messages: list[JSON], item: JSON) -> None:
    """Consecutive function calls (and the assistant text just before them) are one assistant turn in Chat."""
    call = {
        "id": item.get("call_id"),
        "type": "function",
        "function": {"name": item.get("name"), "arguments": item.get("arguments") or ""},
    }
    last = messages[-1] if messages else None
    if last is not None and last.get("role") == "assistant":
        last.setdefault("tool_calls", []).append(call)
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _message(item: JSON, where: str) -> JSON:
    role, content = item.get("role"), item.get("content")
    if role == "assistant":
        return {"role": "assistant", "content": _assistant_text(content, where)}
    if isinstance(content, str):
        return {"role": role, "content": content}
    return {"role": role, "content": [_part(part, f"{where}.content[{j}]") for j, part in enumerate(content or [])]}


def _assistant_text(content: Any, where: str) -> str:
    """An assistant echo's parts as one string; a refusal is replayed as what the assistant said."""
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content or []):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("output_text", "input_text"):
            texts.append(str(part.get("text") or ""))
        elif kind == "refusal":
            texts.append(str(part.get("refusal") or ""))
        else:
            raise UnsupportedFeature(f"{where}.content[{j}]", f"Assistant content of type '{kind}' is not supported.")
    return "".join(texts)


def _part(part: JSON, where: str) -> JSON:
    if not isinstance(part, dict):  # validation refuses these first; never a crash if one slips through
        raise UnsupportedFeature(where, f"'{where}' must be an object.")
    kind = part.get("type")
    if kind in ("input_text", "input_image") and not isinstance(part.get(_PART_VALUE[kind]) or "", str):
        raise UnsupportedFeature(f"{where}.{_PART_VALUE[kind]}", f"'{where}.{_PART_VALUE[kind]}' must be a string.")
    if kind == "input_text":
        return {"type": "text", "text": part.get("text") or ""}
    if kind == "input_image":
        if not part.get("image_url"):
            raise UnsupportedFeature(where, "Images by file_id are not supported for this model; send image_url.")
        image: JSON = {"url": part["image_url"]}
        if part.get("detail") in _IMAGE_DETAILS:  # Chat knows no "original"; the upstream default applies then.
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        file = {key: part[key] for key in ("file_id", "file_data", "filename") if part.get(key) is not None}
        if "file_id" not in file and "file_data" not in file:
            raise UnsupportedFeature(where, "Files by file_url are not supported for this model; send file_data.")
        return {"type": "file", "file": file}
    raise UnsupportedFeature(where, f"Content parts of type '{kind}' are not supported for this model.")


def _tool_output(item: JSON) -> str:
    """A tool message's content: a list of text parts joins into one string; anything else is sent as JSON."""
    output = item.get("output")
    if isinstance(output, str):
        return output
    if isinstance(output, list) and all(isinstance(p, dict) and p.get("type") == "input_text" for p in output):
        return "".join(p.get("text") or "" for p in output)
    return orjson.dumps(output).decode()


def _tools(request: JSON) -> JSON:
    tools = request.get("tools") or []
    if not tools:
        # OpenAI rejects tool_choice and parallel_tool_calls without tools; without tools they mean nothing anyway.
        return {}
    out: JSON = {"tools": [_tool(tool, i) for i, tool in enumerate(tools)]}
    if request.get("tool_choice") is not None:
        out["tool_choice"] = _tool_choice(request["tool_choice"])
    if request.get("parallel_tool_calls") is not None:
        out["parallel_tool_calls"] = request["parallel_tool_calls"]
    return out


def _tool(tool: JSON, i: int) -> JSON:
    if not isinstance(tool, dict):
        raise UnsupportedFeature(f"tools[{i}]", f"'tools[{i}]' must be an object.")
    if tool.get("type") != "function":
        raise UnsupportedFeature(f"tools[{i}].type", f"Tools of type '{tool.get('type')}' are not supported here.")
    function: JSON = {"name": tool.get("name")}
    for key in ("description", "parameters", "strict"):
        if tool.get(key) is not None:
            function[key] = tool[key]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, str):
        return choice
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    if kind == "allowed_tools":
        allowed = []
        for tool in choice.get("tools") or []:
            if not isinstance(tool, dict) or tool.get("type") != "function":
                raise UnsupportedFeature("tool_choice", "Only function tools can be allowed for this model.")
            allowed.append({"type": "function", "function": {"name": tool.get("name")}})
        return {"type": "allowed_tools", "allowed_tools": {"mode": choice.get("mode") or "auto", "tools": allowed}}
    raise UnsupportedFeature("tool_choice", f"tool_choice of type '{kind}' is not supported for this model.")


def _output_options(request: JSON) -> JSON:
    out: JSON = {}
    text = _options(request, "text")
    if text.get("format"):
        out["response_format"] = _response_format(text["format"])
    if text.get("verbosity") is not None:
        out["verbosity"] = text["verbosity"]
    reasoning = _options(request, "reasoning")
    if reasoning.get("effort") is not None:
        out["reasoning_effort"] = reasoning["effort"]
    if request.get("max_output_tokens") is not None:
        # Not max_tokens: deprecated in Chat and rejected by reasoning models.
        out["max_completion_tokens"] = request["max_output_tokens"]
    return out


def _options(request: JSON, key: str) -> JSON:
    value = request.get(key)
    if value is not None and not isinstance(value, dict):
        raise UnsupportedFeature(key, f"'{key}' must be an object.")
    return value or {}


def _response_format(fmt: JSON) -> JSON:
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_schema":
        schema: JSON = {"name": fmt.get("name"), "schema": fmt.get("schema")}
        for key in ("description", "strict"):
            if fmt.get(key) is not None:
                schema[key] = fmt[key]
        return {"type": "json_schema", "json_schema": schema}
    if kind in ("json_object", "text"):
        return {"type": kind}
    raise UnsupportedFeature("text.format", f"text.format of type '{kind}' is not supported for this model.")


# --- the Response object ------------------------------------------------------------------------------------------


def response_shell(
    request: JSON, *, response_id: str, created_at: int, model: str, status: str = "in_progress"
) -> JSON:
    """The Response object before any output: every key OpenAI's schema requires, echoing the request.

    Values the client left out take OpenAI's defaults, so the object validates against the SDK's ``Response``.
    Function tools are echoed with ``description``, ``parameters`` and ``strict`` present (null if not sent).
    """
    # The shell never raises (the engine builds it outside translation's error handling): odd shapes echo as
    # defaults, and translation or the upstream refuses them with a 400.
    reasoning = _loose(request.get("reasoning"))
    text = _loose(request.get("text"))
    text_echo: JSON = {"format": text.get("format") or {"type": "text"}}
    if text.get("verbosity") is not None:
        text_echo["verbosity"] = text["verbosity"]
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "completed_at": None,
        "background": _given(request, "background", False),
        "conversation": _conversation(request.get("conversation")),
        "error": None,
        "incomplete_details": None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "max_tool_calls": request.get("max_tool_calls"),
        "model": model,
        "output": [],
        "parallel_tool_calls": _given(request, "parallel_tool_calls", True),
        "previous_response_id": request.get("previous_response_id"),
        "prompt_cache_key": request.get("prompt_cache_key"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "safety_identifier": request.get("safety_identifier"),
        "service_tier": request.get("service_tier"),
        "store": _given(request, "store", True),
        "temperature": _given(request, "temperature", 1),
        "text": text_echo,
        "tool_choice": _given(request, "tool_choice", "auto"),
        "tools": [_tool_echo(tool) for tool in request.get("tools") or []],
        "top_logprobs": request.get("top_logprobs"),
        "top_p": _given(request, "top_p", 1),
        "truncation": _given(request, "truncation", "disabled"),
        "usage": None,
        "user": request.get("user"),
        "metadata": request.get("metadata") or {},
    }


def _given(request: JSON, key: str, default: Any) -> Any:
    value = request.get(key)
    return default if value is None else value


def _conversation(conversation: Any) -> JSON | None:
    if isinstance(conversation, str):
        return {"id": conversation}
    if isinstance(conversation, dict) and conversation.get("id"):
        return {"id": conversation["id"]}
    return None


def _loose(value: Any) -> JSON:
    return value if isinstance(value, dict) else {}


def _tool_echo(tool: Any) -> Any:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        return tool
    return {**tool, **{key: tool.get(key) for key in ("description", "parameters", "strict")}}


def chat_to_response(chat: JSON, *, shell: JSON, completed_at: int | None = None) -> JSON:
    """The final Response for a non-streaming ``chat.completion`` body, built on the engine's ``shell``.

    Output order: a reasoning item (if the upstream exposed reasoning), the assistant message (output_text and/or
    refusal parts), then one function_call item per tool call. ``completed_at`` defaults to now, and is only set
    when the status is ``completed``. In an incomplete response the last item (the one being generated when the
    upstream stopped) is marked ``incomplete``, as the streaming translation does.
    """
    choices = chat.get("choices") or []
    choice = choices[0] if choices else {}
    status, incomplete = status_from_finish_reason(choice.get("finish_reason"))
    output = _output_items(choice.get("message") or {}, choice.get("logprobs"), "completed")
    if status == "incomplete" and output:
        output[-1]["status"] = "incomplete"  # the item being generated when the cut came; earlier ones were whole
    response = dict(shell)
    response["status"] = status
    response["output"] = output
    response["incomplete_details"] = incomplete
    response["error"] = None
    response["usage"] = usage_from_chat(chat.get("usage"))
    if status == "completed":
        response["completed_at"] = int(time.time()) if completed_at is None else completed_at
    return response


def status_from_finish_reason(finish_reason: str | None) -> tuple[str, JSON | None]:
    """A Chat finish_reason as a Response ``(status, incomplete_details)``; unknown or missing ones complete."""
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def _output_items(message: JSON, logprobs: JSON | None, status: str) -> list[JSON]:
    items: list[JSON] = []
    reasoning = reasoning_text(message)
    if reasoning:
        items.append(reasoning_item(new_reasoning_id(), status, [reasoning_part(reasoning)]))
    text = _content_text(message.get("content"))
    refusal = message.get("refusal")
    tool_calls = message.get("tool_calls") or []
    parts: list[JSON] = []
    # An empty answer is still an answer (an empty message), unless the turn was only tool calls or a refusal.
    if text or (text is not None and not tool_calls and not refusal):
        parts.append(output_text_part(text, logprobs_from_chat(logprobs)))
    if refusal:
        parts.append(refusal_part(refusal))
    if parts:
        items.append(message_item(new_message_id(), status, parts))
    for call in tool_calls:
        function = call.get("function") or {}
        call_id = call.get("id") or new_call_id()
        arguments = function.get("arguments") or ""
        items.append(function_call_item(new_function_call_id(), status, call_id, function.get("name") or "", arguments))
    return items


def _content_text(content: Any) -> str | None:
    if isinstance(content, list):  # some providers answer with text parts even outside streaming
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content if isinstance(content, str) else None


def reasoning_text(message: JSON) -> str | None:
    """Reasoning an OpenAI-compatible upstream exposes: ``reasoning_content`` (llama.cpp, DeepSeek, vLLM) or
    ``reasoning`` (OpenRouter, Ollama, newer vLLM). When both are present they carry the same text."""
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def message_item(item_id: str, status: str, content: list[JSON]) -> JSON:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def reasoning_item(item_id: str, status: str, content: list[JSON]) -> JSON:
    return {"id": item_id, "type": "reasoning", "status": status, "summary": [], "content": content}


def function_call_item(item_id: str, status: str, call_id: str, name: str, arguments: str) -> JSON:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def output_text_part(text: str, logprobs: list[JSON]) -> JSON:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}


def refusal_part(refusal: str) -> JSON:
    return {"type": "refusal", "refusal": refusal}


def reasoning_part(text: str) -> JSON:
    return {"type": "reasoning_text", "text": text}


def logprobs_from_chat(logprobs: JSON | None, *, with_bytes: bool = True) -> list[JSON]:
    """Chat ``choice.logprobs.content`` as Responses logprobs.

    With bytes (filled in when the upstream sent none) for an ``output_text`` part; without for the streaming
    delta/done events, whose schema has no ``bytes``.
    """
    out = []
    for entry in (logprobs or {}).get("content") or []:
        top = [_logprob(alt, with_bytes) for alt in entry.get("top_logprobs") or []]
        out.append({**_logprob(entry, with_bytes), "top_logprobs": top})
    return out


def _logprob(entry: JSON, with_bytes: bool) -> JSON:
    token = entry.get("token") or ""
    out = {"token": token, "logprob": entry.get("logprob")}
    if with_bytes:
        out["bytes"] = entry["bytes"] if entry.get("bytes") is not None else list(token.encode())
    return out


# --- usage ---------------------------------------------------------------------------------------------------------


def usage_from_chat(usage: JSON | None) -> JSON | None:
    """Chat usage as Responses usage: all five keys and both detail objects, missing counts as 0."""
    if not usage:
        return None
    prompt = usage.get("prompt_tokens") or 0
    completion = usage.get("completion_tokens") or 0
    total = usage.get("total_tokens")
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": prompt_details.get("cached_tokens") or 0,
            "cache_write_tokens": prompt_details.get("cache_write_tokens") or 0,
        },
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": completion_details.get("reasoning_tokens") or 0},
        "total_tokens": prompt + completion if total is None else total,
    }


def usage_to_chat(usage: JSON | None) -> JSON | None:
    """Responses usage as Chat usage (the reverse of ``usage_from_chat``)."""
    if not usage:
        return None
    input_details = usage.get("input_tokens_details") or {}
    output_details = usage.get("output_tokens_details") or {}
    return {
        "prompt_tokens": usage.get("input_tokens") or 0,
        "completion_tokens": usage.get("output_tokens") or 0,
        "total_tokens": usage.get("total_tokens")
        or (usage.get("input_tokens") or 0) + (usage.get("output_tokens") or 0),
        "prompt_tokens_details": {"cached_tokens": input_details.get("cached_tokens") or 0},
        "completion_tokens_details": {"reasoning_tokens": output_details.get("reasoning_tokens") or 0},
    }
