"""Streaming translation between Chat Completions chunks and Responses events (CONTRACT §3.5, §4.3, §4.4).

Both classes are pure state machines: parsed JSON in, JSON dicts out, no I/O. The engine does the reading,
writing and persisting. Every event or chunk returned is a fresh dict that later calls never mutate, so it can be
serialised, logged or stored for replay at any time.
"""

import time
from typing import Any

from gateway.http import json_copy
from gateway.responses.ids import new_call_id, new_function_call_id, new_message_id, new_reasoning_id
from gateway.responses.translate import (
    function_call_item,
    logprobs_from_chat,
    message_item,
    output_text_part,
    reasoning_item,
    reasoning_part,
    reasoning_text,
    refusal_part,
    status_from_finish_reason,
    usage_from_chat,
    usage_to_chat,
)

JSON = dict[str, Any]
TERMINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")  # the last event of a stream


class _Part:
    """One content part being streamed: text arrives in fragments, joined once when read; Chat logprob entries
    are kept as received and converted when read."""

    __slots__ = ("kind", "chunks", "logprobs")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.chunks: list[str] = []
        self.logprobs: list[JSON] = []

    def text(self) -> str:
        return "".join(self.chunks)

    def to_dict(self) -> JSON:
        if self.kind == "output_text":
            return output_text_part(self.text(), logprobs_from_chat({"content": self.logprobs}))
        if self.kind == "refusal":
            return refusal_part(self.text())
        return reasoning_part(self.text())


class _Item:
    """One output item being streamed (message, reasoning or function_call) at a fixed ``output_index``."""

    __slots__ = ("kind", "id", "index", "status", "parts", "call_id", "upstream_call_id", "name", "args")

    def __init__(self, kind: str, item_id: str, index: int) -> None:
        self.kind = kind
        self.id = item_id
        self.index = index
        self.status = "in_progress"
        self.parts: list[_Part] = []
        self.call_id = ""
        self.upstream_call_id: str | None = None
        self.name = ""
        self.args: list[str] = []

    def to_dict(self) -> JSON:
        if self.kind == "function_call":
            return function_call_item(self.id, self.status, self.call_id, self.name, "".join(self.args))
        content = [part.to_dict() for part in self.parts]
        if self.kind == "reasoning":
            return reasoning_item(self.id, self.status, content)
        return message_item(self.id, self.status, content)


class ChatStreamToEvents:
    """Parsed Chat Completions stream chunks in, Responses streaming events out.

    Call ``start()`` (implied by the first other call), ``feed()`` each parsed chunk, then exactly one of
    ``finish()`` (the upstream ended normally) or ``fail()`` (it broke); after either, every call returns ``[]``.
    ``sequence_number`` starts at 0 and grows by 1 per event. Only choice 0 is translated. Upstream ``error``
    payloads are the engine's to detect: it calls ``fail()``.
    """

    def __init__(self, shell: JSON) -> None:
        self._base = json_copy(shell)
        self._status: str = shell.get("status") or "in_progress"
        self._seq = 0
        self._started = False
        self._done = False
        self._items: list[_Item] = []
        self._message: _Item | None = None
        self._reasoning: _Item | None = None
        self._calls: dict[int, _Item] = {}
        self._finish_reason: str | None = None
        self._usage: JSON | None = None
        self._error: JSON | None = None
        self._completed_at: int | None = None

    @property
    def response(self) -> JSON:
        """The Response as it stands: final after ``finish()``/``fail()``, partial before (a fresh dict)."""
        status, incomplete = self._status, None
        if status == "incomplete":
            incomplete = status_from_finish_reason(self._finish_reason)[1]
        return {
            **self._base,
            "status": status,
            "output": [item.to_dict() for item in self._items],
            "incomplete_details": incomplete,
            "error": dict(self._error) if self._error else None,
            "usage": json_copy(self._usage),
            "completed_at": self._completed_at,
        }

    def start(self) -> list[JSON]:
        """``response.created`` (with the shell's status) then ``response.in_progress``."""
        if self._started:
            return []
        self._started = True
        created = self._event("response.created", response=self.response)
        self._status = "in_progress"
        return [created, self._event("response.in_progress", response=self.response)]

    def feed(self, chunk: JSON) -> list[JSON]:
        """The events one parsed ``chat.completion.chunk`` produces (often one delta, sometimes none)."""
        if self._done:
            return []
        events = self.start()
        if chunk.get("usage"):
            self._usage = usage_from_chat(chunk["usage"])
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            self._delta(choice.get("delta") or {}, choice.get("logprobs"), events)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
                self._close_all(events)
        return events

    def finish(self, completed_at: int | None = None) -> list[JSON]:
        """Close what is still open, then ``response.completed`` or ``response.incomplete`` with usage.

        ``completed_at`` defaults to now; it is only set on a completed response.
        """
        if self._done:
            return []
        events = self.start()
        self._close_all(events)
        self._status = status_from_finish_reason(self._finish_reason)[0]
        if self._status == "completed":
            self._completed_at = int(time.time()) if completed_at is None else completed_at
        self._done = True
        events.append(self._event(f"response.{self._status}", response=self.response))
        return events

    def fail(self, code: str, message: str) -> list[JSON]:
        """``response.failed`` with ``error: {code, message}``, the partial output and any usage seen.

        No further done events are sent; items still open are reported ``incomplete`` in the response. ``code``
        should be one of OpenAI's response error codes (``server_error`` for upstream failures).
        """
        if self._done:
            return []
        events = self.start()
        for item in self._items:
            if item.status == "in_progress":
                item.status = "incomplete"
        self._status, self._error, self._done = "failed", {"code": code, "message": message}, True
        events.append(self._event("response.failed", response=self.response))
        return events

    def replay(self, response: JSON) -> list[JSON]:
        """The events a stream of the finished ``response`` would have carried, built as a live stream's are:
        created and in_progress, then per output item its added, content part, delta and done events (one delta
        per part, holding its whole text), then the terminal event carrying ``response`` itself. The machine's
        shell is the response as it started (``status: in_progress``). A cancelled response has no terminal
        event, as its live stream had none; output items of other types are announced added and done as stored.
        """
        events = self.start()
        for stored in response.get("output") or []:
            if isinstance(stored, dict):
                self._replay_item(stored, events)
        self._done = True
        status = response.get("status")
        if f"response.{status}" in TERMINAL_EVENTS:
            events.append(self._event(f"response.{status}", response=response))
        return events

    def _replay_item(self, stored: JSON, events: list[JSON]) -> None:
        kind, item_id = stored.get("type"), str(stored.get("id") or "")
        if kind == "function_call":
            call, fn = {"id": stored.get("call_id")}, {"name": stored.get("name")}
            item = self._calls[0] = self._open("function_call", item_id, events, call, fn)
            self._tool_delta(0, {"index": 0, "function": {"arguments": stored.get("arguments") or ""}}, events)
        elif kind in ("message", "reasoning"):
            item = self._open(kind, item_id, events)
            for part in stored.get("content") or []:
                self._replay_part(item, part if isinstance(part, dict) else {}, events)
        else:  # a kind this machine does not stream: announced as stored
            item = _Item(str(kind), item_id, len(self._items))
            item.status = "completed"
            self._items.append(item)
            events.append(self._event("response.output_item.added", output_index=item.index, item=stored))
            events.append(self._event("response.output_item.done", output_index=item.index, item=stored))
            return
        self._close(item, "incomplete" if stored.get("status") == "incomplete" else "completed", events)
        self._message = self._reasoning = None
        self._calls.clear()

    def _replay_part(self, item: _Item, part: JSON, events: list[JSON]) -> None:
        kind = "reasoning_text" if item.kind == "reasoning" else part.get("type")
        if kind not in ("reasoning_text", "output_text", "refusal"):
            return
        text = part.get("refusal" if kind == "refusal" else "text")
        if kind != "reasoning_text" or not item.parts:  # the machine streams reasoning as one part
            self._open_part(item, kind, events)
        if not isinstance(text, str) or not text:
            return
        if kind == "reasoning_text":
            self._reasoning = item
            self._reasoning_delta(text, events)
        else:
            self._message = item
            self._text_delta(kind, text, [], events)

    # --- deltas ---

    def _event(self, kind: str, **fields: Any) -> JSON:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    def _delta(self, delta: JSON, logprobs: JSON | None, events: list[JSON]) -> None:
        reasoning = reasoning_text(delta)
        if reasoning:
            self._reasoning_delta(reasoning, events)
        content = delta.get("content")
        if isinstance(content, str) and content:
            entries = (logprobs or {}).get("content") or []
            self._text_delta("output_text", content, entries, events)
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            self._text_delta("refusal", refusal, [], events)
        for position, call in enumerate(delta.get("tool_calls") or []):
            self._tool_delta(position, call, events)

    def _reasoning_delta(self, text: str, events: list[JSON]) -> None:
        item = self._reasoning
        if item is None:
            self._close_text(events)
            item = self._reasoning = self._open("reasoning", new_reasoning_id(), events)
            self._open_part(item, "reasoning_text", events)
        item.parts[0].chunks.append(text)
        events.append(self._event("response.reasoning_text.delta", **_where(item, 0), delta=text))

    def _text_delta(self, kind: str, text: str, logprobs: list[JSON], events: list[JSON]) -> None:
        item = self._message
        if item is None:
            self._close_text(events)
            item = self._message = self._open("message", new_message_id(), events)
        if not item.parts or item.parts[-1].kind != kind:
            self._open_part(item, kind, events)
        part, index = item.parts[-1], len(item.parts) - 1
        part.chunks.append(text)
        if kind == "refusal":
            events.append(self._event("response.refusal.delta", **_where(item, index), delta=text))
            return
        converted: list[JSON] = []
        if logprobs:
            part.logprobs.extend(logprobs)
            converted = logprobs_from_chat({"content": logprobs}, with_bytes=False)
        # the most frequent event of all, built directly (same keys, same order as _event + _where)
        seq = self._seq
        self._seq = seq + 1
        events.append(
            {
                "type": "response.output_text.delta",
                "sequence_number": seq,
                "item_id": item.id,
                "output_index": item.index,
                "content_index": index,
                "delta": text,
                "logprobs": converted,
            }
        )

    def _tool_delta(self, position: int, call: JSON, events: list[JSON]) -> None:
        index = call.get("index")
        key = index if isinstance(index, int) else position
        function = call.get("function") or {}
        item = self._calls.get(key)
        # Some upstreams send every call at the same index (or none); a new call id means a new call.
        if item is None or (call.get("id") and item.upstream_call_id and call["id"] != item.upstream_call_id):
            self._close_text(events)
            item = self._calls[key] = self._open("function_call", new_function_call_id(), events, call, function)
        else:
            if function.get("name") and not item.name:
                item.name = function["name"]
            if call.get("id") and not item.upstream_call_id:  # the id came after the first fragment
                item.upstream_call_id = item.call_id = call["id"]
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            item.args.append(arguments)
            event = self._event("response.function_call_arguments.delta", **_where(item), delta=arguments)
            events.append(event)

    def _open(
        self, kind: str, item_id: str, events: list[JSON], call: JSON | None = None, fn: JSON | None = None
    ) -> _Item:
        item = _Item(kind, item_id, len(self._items))
        if call is not None:
            item.upstream_call_id = call.get("id") or None
            item.call_id = item.upstream_call_id or new_call_id()
            item.name = (fn or {}).get("name") or ""
        self._items.append(item)
        events.append(self._event("response.output_item.added", output_index=item.index, item=item.to_dict()))
        return item

    def _open_part(self, item: _Item, kind: str, events: list[JSON]) -> None:
        part = _Part(kind)
        item.parts.append(part)
        where = _where(item, len(item.parts) - 1)
        events.append(self._event("response.content_part.added", **where, part=part.to_dict()))

    # --- closing ---

    def _close_text(self, events: list[JSON]) -> None:
        """Close the open message or reasoning item: a new item starts after the previous one is done."""
        for item in (self._message, self._reasoning):
            if item is not None:
                self._close(item, "completed", events)
        self._message = self._reasoning = None

    def _close_all(self, events: list[JSON]) -> None:
        """Close open items in output order; after a cut (length, content_filter) the last one is incomplete."""
        cut = status_from_finish_reason(self._finish_reason)[0] != "completed"
        still_open = [item for item in self._items if item.status == "in_progress"]
        for item in still_open:
            self._close(item, "incomplete" if cut and item is still_open[-1] else "completed", events)
        self._message = self._reasoning = None
        self._calls.clear()

    def _close(self, item: _Item, status: str, events: list[JSON]) -> None:
        if item.status != "in_progress":
            return
        item.status = status
        if item.kind == "function_call":
            arguments = "".join(item.args)
            done = self._event(
                "response.function_call_arguments.done", **_where(item), name=item.name, arguments=arguments
            )
            events.append(done)
        for index, part in enumerate(item.parts):
            events.append(self._part_done(item, index, part))
            events.append(self._event("response.content_part.done", **_where(item, index), part=part.to_dict()))
        events.append(self._event("response.output_item.done", output_index=item.index, item=item.to_dict()))

    def _part_done(self, item: _Item, index: int, part: _Part) -> JSON:
        where = _where(item, index)
        if part.kind == "output_text":
            logprobs = logprobs_from_chat({"content": part.logprobs}, with_bytes=False)
            return self._event("response.output_text.done", **where, text=part.text(), logprobs=logprobs)
        if part.kind == "refusal":
            return self._event("response.refusal.done", **where, refusal=part.text())
        return self._event("response.reasoning_text.done", **where, text=part.text())


def events_of(response: JSON) -> list[JSON]:
    """The event sequence of a finished response that was not streamed (``ChatStreamToEvents.replay``)."""
    return ChatStreamToEvents({**response, "status": "in_progress"}).replay(response)


def _where(item: _Item, content_index: int | None = None) -> JSON:
    where: JSON = {"item_id": item.id, "output_index": item.index}
    if content_index is not None:
        where["content_index"] = content_index
    return where


class EventsToChatChunks:
    """Responses streaming events in, Chat Completions chunks out (a Responses-only upstream behind
    ``/v1/chat/completions``).

    The first chunk carries ``delta.role``; every chunk has the same ``id``, ``created`` and ``model``. The
    terminal event yields a chunk with ``finish_reason`` and, with ``include_usage``, a usage chunk
    (``choices: []``); the caller then writes ``data: [DONE]``. ``response.failed`` and ``error`` yield one
    ``{"error": {...}}`` payload instead, after which the caller writes no ``[DONE]`` (a cut stream).
    """

    def __init__(self, *, chunk_id: str, created: int, model: str, include_usage: bool = False) -> None:
        self._id, self._created, self._model = chunk_id, created, model
        self._include_usage = include_usage
        self._started = False
        self.done = False
        self._calls: dict[str, int] = {}
        self._streamed: set[str] = set()  # item ids whose deltas arrived (a bare .done then adds nothing)

    def feed(self, event: JSON) -> list[JSON]:
        """The chunks one Responses event produces; unknown and lifecycle-only events produce none."""
        if self.done:
            return []
        out: list[JSON] = []
        if not self._started:
            self._started = True
            out.append(self._chunk({"role": "assistant", "content": ""}))
        kind = event.get("type")
        if kind in ("response.completed", "response.incomplete"):
            out.extend(self._final(event.get("response") or {}))
        elif kind in ("response.failed", "error"):
            self.done = True
            out.append(_error_payload(event))
        else:
            delta = self._delta(kind, event)
            if delta is not None:
                out.append(self._chunk(delta))
        return out

    def _delta(self, kind: Any, event: JSON) -> JSON | None:
        item_id = event.get("item_id") or ""
        if kind in ("response.output_text.delta", "response.refusal.delta"):
            self._streamed.add(item_id)
            return {"content" if kind == "response.output_text.delta" else "refusal": event.get("delta") or ""}
        if kind in ("response.output_text.done", "response.refusal.done") and item_id not in self._streamed:
            self._streamed.add(item_id)
            return {"content": event.get("text") or ""} if kind.endswith("text.done") else {"refusal": event["refusal"]}
        item = event.get("item") or {}
        if kind == "response.output_item.added" and item.get("type") == "function_call":
            self._calls[item.get("id") or ""] = index = len(self._calls)
            function = {"name": item.get("name") or "", "arguments": item.get("arguments") or ""}
            return {
                "tool_calls": [{"index": index, "id": item.get("call_id"), "type": "function", "function": function}]
            }
        if kind == "response.function_call_arguments.delta" and item_id in self._calls:
            self._streamed.add(item_id)
            return {
                "tool_calls": [{"index": self._calls[item_id], "function": {"arguments": event.get("delta") or ""}}]
            }
        if kind == "response.function_call_arguments.done" and item_id in self._calls and item_id not in self._streamed:
            self._streamed.add(item_id)
            return {"tool_calls": [{"index": self._calls[item_id], "function": {"arguments": event.get("arguments")}}]}
        return None

    def _final(self, response: JSON) -> list[JSON]:
        self.done = True
        reason = (response.get("incomplete_details") or {}).get("reason")
        has_calls = bool(self._calls) or any(
            item.get("type") == "function_call" for item in response.get("output") or []
        )
        if has_calls:
            finish = "tool_calls"
        elif response.get("status") == "incomplete" and reason in ("max_output_tokens", "content_filter"):
            finish = "length" if reason == "max_output_tokens" else "content_filter"
        else:
            finish = "stop"
        out = [self._chunk({}, finish)]
        usage = usage_to_chat(response.get("usage"))
        if self._include_usage and usage is not None:
            out.append({**self._chunk({}), "choices": [], "usage": usage})
        return out

    def _chunk(self, delta: JSON, finish_reason: str | None = None) -> JSON:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        chunk: JSON = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
        }
        chunk["choices"] = [choice]
        if self._include_usage:
            chunk["usage"] = None  # as OpenAI: every chunk but the last carries a null usage when usage is asked for
        return chunk


def _error_payload(event: JSON) -> JSON:
    """The last data of a cut Chat stream: the error of ``response.failed`` or of an ``error`` event."""
    error = (event.get("response") or {}).get("error") or event
    return {
        "error": {
            "message": error.get("message") or "The upstream response failed.",
            "type": "upstream_error",
            "param": error.get("param"),
            "code": error.get("code") or "server_error",
        }
    }
