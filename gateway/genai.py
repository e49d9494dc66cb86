"""What a model call is, in the OpenTelemetry GenAI conventions' terms: ``gen_ai.*`` attributes from the
bodies the gateway already holds (Chat Completions or Responses). No OpenTelemetry import: plain dicts of
hashable values (arrays as tuples), which ``gateway.tracing`` puts on spans. Content (prompts, completions) only
when asked, cut to ``chars``."""

from collections.abc import Mapping
from typing import Any

import orjson

from gateway.context import ModelCall, Usage

Attributes = dict[str, Any]

# request parameters worth a look in a trace view (numbers only: anything else is the caller's garbage)
_PARAMS = (
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("max_completion_tokens", "gen_ai.request.max_tokens"),
    ("max_output_tokens", "gen_ai.request.max_tokens"),
    ("temperature", "gen_ai.request.temperature"),
    ("top_p", "gen_ai.request.top_p"),
)
_PARAM_KEYS = frozenset(key for key, _ in _PARAMS)
_FLOATS = frozenset({"gen_ai.request.temperature", "gen_ai.request.top_p"})  # doubles, even when sent as 1
_FINISH = {"completed": "stop", "failed": "error", "cancelled": "cancelled"}  # a Response's status


def content(value: Any, chars: int) -> str:
    """``value`` as recorded text: a string as it is, anything else as JSON, cut to ``chars``."""
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    return text if len(text) <= chars else text[:chars] + "…"


def call_attributes(alias: str, call: ModelCall | None, chars: int) -> Attributes:
    """A model call's span as it starts: the operation, the model asked for, its parameters, (its input)."""
    attributes: Attributes = {"gen_ai.operation.name": "chat", "gen_ai.request.model": alias}
    body = call.body if call is not None else {}
    if not _PARAM_KEYS.isdisjoint(body):  # most requests send none of them
        for key, name in _PARAMS:
            value = body.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                attributes[name] = float(value) if name in _FLOATS else value
    if call is not None and call.round > 1:
        attributes["gateway.call.round"] = call.round
    if chars:
        messages = body.get("messages", body.get("input"))
        if messages is not None:
            attributes["gen_ai.input.messages"] = content(messages, chars)
        instructions = body.get("instructions")
        if isinstance(instructions, str):
            attributes["gen_ai.system_instructions"] = content(instructions, chars)
    return attributes


def answer_attributes(answer: Mapping[str, Any], chars: int) -> Attributes:
    """A Chat Completion's or a Response's model, id, finish reasons and (with ``chars``) output."""
    attributes: Attributes = {}
    model, response_id = answer.get("model"), answer.get("id")
    if isinstance(model, str):
        attributes["gen_ai.response.model"] = model[:200]
    if isinstance(response_id, str):
        attributes["gen_ai.response.id"] = response_id[:200]
    choices = answer.get("choices")
    if isinstance(choices, list):  # Chat Completions
        choices = [c for c in choices if isinstance(c, dict)]
        attributes["gen_ai.response.finish_reasons"] = tuple(str(c.get("finish_reason"))[:40] for c in choices)
        output: Any = [c.get("message") for c in choices]
    else:  # Responses
        status = answer.get("status")
        details = answer.get("incomplete_details")
        reason = details.get("reason") if status == "incomplete" and isinstance(details, dict) else None
        if isinstance(status, str):
            attributes["gen_ai.response.finish_reasons"] = (str(reason or _FINISH.get(status, status))[:40],)
        output = answer.get("output")
    if chars and output:
        attributes["gen_ai.output.messages"] = content(output, chars)
    return attributes


def usage_attributes(usage: Usage) -> Attributes:
    """A call's token usage (cached input tokens are part of the input tokens, as upstreams count them)."""
    return {
        "gen_ai.usage.input_tokens": usage.input_tokens,
        "gen_ai.usage.output_tokens": usage.output_tokens,
        "gen_ai.usage.cache_read.input_tokens": usage.cached_input_tokens,
        "gen_ai.usage.reasoning.output_tokens": usage.reasoning_tokens,
    }
