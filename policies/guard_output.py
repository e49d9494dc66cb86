"""The output side of the guardrails policy: a ``send`` wrapper that masks or rejects the answer's text.

Whole JSON answers (Chat ``choices[*].message.content``, Responses ``output[*].content[*].text``, also inside the
native ``{"data": …}`` envelope) are checked whole; a rejection replaces the answer with the error. Streams are
masked across chunk boundaries (``TailMasker`` holds back the tail that could still become a match) and stopped
cleanly on a rejection: a final ``data: {"error": …}`` for Chat (no ``[DONE]``), ``response.failed`` for Responses.
"""

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.types import Message, Send

from gateway import PermissionDenied, RequestContext, error_event, event_data, format_sse
from policies.pii import Finding, Rules, TailMasker

JSON = dict[str, Any]
Check = Callable[[str], Awaitable[tuple[str, str | None]]]  # a webhook: text -> (text, rejection reason)


def rejection(reason: str) -> PermissionDenied:
    return PermissionDenied(f"The answer was stopped by a guardrail: {reason}.", code="guardrail_rejected")


def found_reason(finding: Finding) -> str:
    return f"the output contains {finding.label}"


def _text_slots(data: JSON, native: bool) -> list[tuple[JSON, str]]:
    """Where a whole answer keeps its text: Chat message contents, Responses output text parts (inside the
    ``{"data": …}`` envelope on native routes)."""
    body = data["data"] if native and isinstance(data.get("data"), dict) else data
    slots: list[tuple[JSON, str]] = []
    for choice in body.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            slots.append((message, "content"))
    slots.extend(_output_slots(body.get("output")))
    return slots


def _output_slots(output: Any) -> list[tuple[JSON, str]]:
    slots: list[tuple[JSON, str]] = []
    for item in output if isinstance(output, list) else ():
        for part in (item.get("content") or ()) if isinstance(item, dict) else ():
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                slots.append((part, "text"))
    return slots


def _frame(event: bytes, data: JSON) -> bytes:
    """The event with its data replaced (its ``id:``/``event:`` lines kept)."""
    head = b"".join(line + b"\n" for line in event.split(b"\n") if line and not line.startswith(b"data:"))
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


class _Stopped(Exception):
    """A reject rule fired in a stream: ``head`` is what may still go out before the stream is ended; for
    Responses, ``seq`` is the sequence number the ``response.failed`` event takes."""

    def __init__(self, head: list[bytes], reason: str, seq: int = 0) -> None:
        self.head, self.reason, self.seq = head, reason, seq


class OutputGuard:
    """Wraps one request's ``send``. Non-200 answers and other content types pass untouched."""

    def __init__(self, rules: Rules, webhook: Check | None, ctx: RequestContext, send: Send) -> None:
        self.rules, self.webhook, self.ctx, self.send = rules, webhook, ctx, send
        self.mode = "start"  # start | json | sse | pass | closed
        self.start: Message | None = None
        self.body = b""
        self.chat = ctx.surface.api == "chat"
        self.maskers: dict[Any, TailMasker] = {}
        self.template: JSON = {}  # the last Chat chunk, to carry text still held when a stream ends early
        self.pending: JSON | None = None  # Responses: the last text delta, sent once the next event shows up
        self.pending_event = b""
        self.part: Any = None
        self.owed = ""
        self.shell: JSON = {}
        self.last_seq = -1

    async def __call__(self, message: Message) -> None:
        if self.mode == "closed":
            return  # the stream was stopped: the rest of the answer is dropped
        if message["type"] == "http.response.start":
            await self._on_start(message)
        elif message["type"] == "http.response.body" and self.mode == "json":
            self.body += message.get("body", b"")
            if not message.get("more_body", False):
                await self._on_json()
        elif message["type"] == "http.response.body" and self.mode == "sse":
            await self._on_sse(message)
        else:
            await self.send(message)

    async def _on_start(self, message: Message) -> None:
        content_type = dict(message.get("headers") or ()).get(b"content-type", b"")
        if message["status"] != 200:
            self.mode = "pass"
        elif content_type.startswith(b"text/event-stream"):
            self.mode = "sse"
        elif content_type.startswith(b"application/json"):
            self.mode, self.start = "json", message
            return  # sent with the body, whose length may change
        else:
            self.mode = "pass"
        await self.send(message)

    # --- whole answers ------------------------------------------------------------------------------------
    async def _on_json(self) -> None:
        assert self.start is not None
        start, body = self.start, self.body
        self.mode = "pass"
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            changed = False
            for holder, key in _text_slots(data, self.ctx.native):
                text = await self._check_whole(holder[key])
                changed = changed or text != holder[key]
                holder[key] = text
            if changed:
                body = orjson.dumps(data)
                headers = [(k, v) for k, v in start.get("headers") or () if k != b"content-length"]
                start = {**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        await self.send(start)
        await self.send({"type": "http.response.body", "body": body})

    async def _check_whole(self, text: str) -> str:
        masked, reject = self.rules.apply(text)
        if reject is not None:
            self._refuse()
            raise rejection(found_reason(reject))
        if self.webhook is not None:
            masked, reason = await self.webhook(masked)
            if reason is not None:
                self._refuse()
                raise rejection(reason)
        return masked

    def _refuse(self) -> None:
        """The answer has not started: the chain renders the error instead (through this wrapper, unchanged)."""
        self.ctx.status_code = None

    # --- streams ------------------------------------------------------------------------------------------
    async def _on_sse(self, message: Message) -> None:
        data = self.body + message.get("body", b"")
        last = not message.get("more_body", False)
        events = data.split(b"\n\n")
        self.body = b"" if last else events.pop()
        out: list[bytes] = []
        try:
            for event in events:
                if event.strip():
                    out.extend(self._chat_event(event) if self.chat else self._responses_event(event))
            if last:
                out.extend(self._chat_end() if self.chat else self._close_part(self.last_seq + 1))
        except _Stopped as stop:
            out.extend(stop.head)
            out.append(self._stopped(stop))
            self.mode, last = "closed", True
        await self.send({"type": "http.response.body", "body": b"".join(out), "more_body": not last})

    def _stopped(self, stop: _Stopped) -> bytes:
        """The last event of a stopped stream, in the stream's own shape; the request counts as rejected."""
        exc = rejection(stop.reason)
        self.ctx.outcome, self.ctx.error = "rejected", exc
        if self.chat:
            return error_event(exc.message, exc.code, exc.error_type)
        response = {**self.shell, "status": "failed", "error": {"code": exc.code, "message": exc.message}}
        return format_sse({"type": "response.failed", "sequence_number": stop.seq, "response": response})

    # --- Chat Completions chunks --------------------------------------------------------------------------
    def _chat_event(self, event: bytes) -> list[bytes]:
        payload = event_data(event)
        if payload == b"[DONE]":
            return [*self._chat_end(), event + b"\n\n"]
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return [event + b"\n\n"]
        if not isinstance(data, dict) or "error" in data:
            return [*self._chat_end(), event + b"\n\n"]
        changed = False
        for choice in data.get("choices") or ():
            if isinstance(choice, dict):
                changed = self._chat_choice(choice, data) or changed
        if data.get("choices"):
            self.template = data
        return [_frame(event, data) if changed else event + b"\n\n"]

    def _chat_choice(self, choice: JSON, data: JSON) -> bool:
        index = choice.get("index", 0)
        raw = choice.get("delta")
        delta: JSON = raw if isinstance(raw, dict) else {}
        content = delta.get("content")
        if not (isinstance(content, str) and content) and choice.get("finish_reason") is None:
            return False
        masker = self.maskers.setdefault(index, TailMasker(self.rules))
        text, reject = masker.feed(content if isinstance(content, str) else "")
        if reject is None and choice.get("finish_reason") is not None:
            rest, reject = masker.flush()
            text += rest
            self.maskers.pop(index, None)
        if reject is not None:  # what came before the rejected text still goes out
            head = {**data, "choices": [{**choice, "delta": {**delta, "content": text}, "finish_reason": None}]}
            raise _Stopped([b"data: " + orjson.dumps(head) + b"\n\n"] if text else [], found_reason(reject))
        if text or isinstance(content, str):
            choice["delta"] = {**delta, "content": text}
        return True

    def _chat_end(self) -> list[bytes]:
        """Text still held when the stream ends without a finish chunk (cut, error, or [DONE] straight away)."""
        out: list[bytes] = []
        for index, masker in list(self.maskers.items()):
            text, reject = masker.flush()
            if reject is not None:
                raise _Stopped(out, found_reason(reject))
            if text:
                chunk = {
                    **self.template,
                    "choices": [{"index": index, "delta": {"content": text}, "finish_reason": None}],
                }
                chunk.pop("usage", None)
                out.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
        self.maskers.clear()
        return out

    # --- Responses events ---------------------------------------------------------------------------------
    def _responses_event(self, event: bytes) -> list[bytes]:
        try:
            data = orjson.loads(event_data(event))
        except orjson.JSONDecodeError:
            return [event + b"\n\n"]
        if not isinstance(data, dict):
            return [event + b"\n\n"]
        seq = data.get("sequence_number")
        seq = seq if isinstance(seq, int) else self.last_seq + 1
        self.last_seq = seq
        kind = data.get("type")
        if kind in ("response.created", "response.in_progress") and isinstance(data.get("response"), dict):
            self.shell = data["response"]
        if kind == "response.output_text.delta" and isinstance(data.get("delta"), str):
            return self._delta(event, data, seq)
        out = self._close_part(seq)
        changed = False
        for holder, key in _full_texts(data):
            masked, reject = self.rules.apply(holder[key])
            if reject is not None:
                raise _Stopped(out, found_reason(reject), seq)
            changed = changed or masked != holder[key]
            holder[key] = masked
        out.append(_frame(event, data) if changed else event + b"\n\n")
        return out

    def _delta(self, event: bytes, data: JSON, seq: int) -> list[bytes]:
        part = (data.get("item_id"), data.get("output_index"), data.get("content_index"))
        out = self._close_part(seq) if part != self.part else []
        self.part = part
        masker = self.maskers.setdefault(part, TailMasker(self.rules))
        text, reject = masker.feed(data["delta"])
        self.owed += text
        if reject is not None:
            if self.pending is None and self.owed:  # the safe text rides on this delta; the failure follows it
                out.append(_frame(event, {**data, "delta": self.owed}))
                seq += 1
            raise _Stopped(out + self._release(""), found_reason(reject), seq)
        out.extend(self._release(""))
        self.pending, self.pending_event = data, event
        return out

    def _release(self, extra: str) -> list[bytes]:
        """Send the held delta event with the text released so far."""
        if self.pending is None:
            return []
        frame = _frame(self.pending_event, {**self.pending, "delta": self.owed + extra})
        self.pending, self.owed = None, ""
        return [frame]

    def _close_part(self, seq: int) -> list[bytes]:
        """A non-delta event (or the end) closes the text part: everything still held goes out."""
        masker = self.maskers.pop(self.part, None)
        self.part = None
        if masker is None:
            return self._release("")
        text, reject = masker.flush()
        if reject is not None:
            raise _Stopped(self._release(text), found_reason(reject), seq)
        return self._release(text)


def _full_texts(data: JSON) -> list[tuple[JSON, str]]:
    """The whole texts a Responses event repeats: ``…output_text.done``, parts, items, the final response."""
    if isinstance(data.get("text"), str):
        return [(data, "text")]
    for key in ("part", "item"):
        if isinstance(data.get(key), dict):
            holder = data[key]
            return [(holder, "text")] if isinstance(holder.get("text"), str) else _output_slots([holder])
    response = data.get("response")
    return _output_slots(response.get("output")) if isinstance(response, dict) else []
