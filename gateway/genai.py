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


def call_attributes(call: ModelCall | None, chars: int) -> Attributes:
    """What a model call's span says of its body as it starts: its parameters, its round, (its input). Empty for
    most calls: the operation and the model are the same for every call of a model (``gateway.tracing``)."""
    attributes: Attributes = {}
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


def answer_model(answer: Mapping[str, Any]) -> tuple[str | None, tuple[str, ...] | None]:
    """A Chat Completion's or a Response's model and finish reasons (its id and output: ``answer_output``), for
    ``gen_ai.response.model`` and ``gen_ai.response.finish_reasons``."""
    model = answer.get("model")
    choices = answer.get("choices")
    reasons: tuple[str, ...] | None = None
    if isinstance(choices, list):  # Chat Completions
        if len(choices) == 1 and isinstance(choices[0], dict):  # most answers: one choice
            reasons = (str(choices[0].get("finish_reason"))[:40],)
        else:
            reasons = tuple(str(c.get("finish_reason"))[:40] for c in choices if isinstance(c, dict))
    else:  # Responses
        status = answer.get("status")
        details = answer.get("incomplete_details")
        reason = details.get("reason") if status == "incomplete" and isinstance(details, dict) else None
        if isinstance(status, str):
            reasons = (str(reason or _FINISH.get(status, status))[:40],)
    return (model[:200] if isinstance(model, str) else None), reasons


def answer_output(answer: Mapping[str, Any], chars: int) -> str | None:
    """What a Chat Completion's choices or a Response's output said, as recorded content (None when empty)."""
    choices = answer.get("choices")
    if isinstance(choices, list):
        output: Any = [c.get("message") for c in choices if isinstance(c, dict)]
    else:
        output = answer.get("output")
    return content(output, chars) if output else None


def usage_attributes(usage: Usage) -> Attributes:
    """A call's token usage (cached input tokens are part of the input tokens, as upstreams count them)."""
    return {
        "gen_ai.usage.input_tokens": usage.input_tokens,
        "gen_ai.usage.output_tokens": usage.output_tokens,
        "gen_ai.usage.cache_read.input_tokens": usage.cached_input_tokens,
        "gen_ai.usage.reasoning.output_tokens": usage.reasoning_tokens,
    }
