"""The two renderings of a stored response: OpenAI's object (unix times) and the native ``{"data": …}`` one
(seed 000: ISO-8601 times, space, model alias, ``usage.cost_usd``, the ``aimable`` block)."""

from datetime import UTC, datetime
from typing import Any

from gateway.pricing import usd
from gateway.responses.records import StoredResponse

JSON = dict[str, Any]


def iso(timestamp: int | float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def openai_response(record: StoredResponse) -> JSON:
    return record.response


def native_response(record: StoredResponse) -> JSON:
    r = record.response
    usage = r.get("usage") or {}
    error = r.get("error") or {}
    return {
        "id": r["id"],
        "object": "response",
        "status": r.get("status"),
        "created_at": iso(r.get("created_at")),
        "finished_at": iso(record.finished_at),
        "expires_at": iso(record.expires_at),
        "space_id": record.space_id,
        "model": record.aimable.get("upstream_model") or record.model_alias,
        "model_alias": record.model_alias,
        "previous_response_id": r.get("previous_response_id"),
        "output": r.get("output") or [],
        "error": r.get("error"),
        "incomplete_details": r.get("incomplete_details"),
        "usage": {
            "input_tokens": usage.get("input_tokens", 0),
            "output_tokens": usage.get("output_tokens", 0),
            "reasoning_tokens": (usage.get("output_tokens_details") or {}).get("reasoning_tokens", 0),
            "cost_usd": usd(record.cost_micros),
        },
        "aimable": {
            "langfuse_trace_id": record.aimable.get("langfuse_trace_id"),
            "governance_applied": record.aimable.get("governance_applied", []),
            "iteration_count": record.aimable.get("iteration_count", 0),
            "agent": record.agent,
            "failure_reason": error.get("message"),
        },
        "metadata": r.get("metadata") or {},
        "idempotency_key": record.idempotency_key,
    }
