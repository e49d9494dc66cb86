"""A small OpenAI-compatible upstream for tests, served on loopback. The requested model picks the behaviour:

``ok``            a completion (stream: three content chunks, usage chunk when asked, ``[DONE]``)
``status-<n>``    HTTP n with an OpenAI error body (429 adds ``Retry-After: 7``)
``oai-<n>-<type>-<code>`` HTTP n with OpenAI's error body of that type and code (``-`` for none)
``text-503``      a text/plain 503
``echo-auth``     401 whose message quotes the Authorization header it received
``leak-key``      quotes the Authorization header it received in an error: a 200 whose body is an error
                  (whole), or one content chunk then an error event and no ``[DONE]`` (stream); on
                  ``/v1/responses``, a ``response.failed`` (stream) or a failed response (whole)
``malformed``     200 with a body that is not JSON
``hang``          never answers (until the client goes away)
``cut``           streams two chunks, then ends without ``[DONE]``
``stall``         streams one chunk, then waits for the client to go away (recorded in ``disconnects``); on
                  ``/v1/responses``, ``response.created`` and one text delta, then the same wait
``echo-stall``    streams the last user message as one chunk, then waits for the client to go away
``flaky-<n>``     the first n requests for this model answer 503 (``Retry-After: 0``), the rest ``ok``
``malformed-sse`` streams an event that is not JSON, then ``[DONE]``
``length``        a completion cut by the output token limit (``finish_reason: length``)
``absurd-usage``  a completion whose usage no int64 holds (and one negative count)
``pieces-<n>``    echoes the last user message; streamed in pieces of n characters (splits inside words)
``gate-<name>``   streams like ``ok``, but after its first chunk waits until the test opens the gate
                  (``close_gate(model)`` before the request, ``open_gate(model)`` to let it finish)

``POST /v1/messages`` speaks Anthropic's Messages API (whole and streamed) for the litellm bridge, and
``POST /v1/responses`` OpenAI's Responses API (for ``api: responses`` deployments).
"""

import asyncio
import json
import threading
from typing import Any

import orjson


def _chunk(content: str | None = None, finish: str | None = None, usage: bool = False) -> bytes:
    data: dict[str, Any] = {
        "id": "chatcmpl-up",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "up-model",
        "choices": [],
    }
    if usage:
        data["usage"] = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    else:
        delta = {"content": content} if content is not None else {}
        data["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
        data["usage"] = None
    return b"data: " + orjson.dumps(data) + b"\n\n"


COMPLETION = {
    "id": "chatcmpl-up",
    "object": "chat.completion",
    "created": 1,
    "model": "up-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi from upstream"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
}


async def read_json(receive: Any) -> Any:
    """A request's whole body, parsed."""
    raw = b""
    while True:
        message = await receive()
        raw += message.get("body", b"")
        if not message.get("more_body"):
            return orjson.loads(raw)


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)
    return ""


def _echo(body: dict[str, Any]) -> dict[str, Any]:
    message = {"role": "assistant", "content": _last_user_text(body)}
    return {**COMPLETION, "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}


class Upstream:
    """The ASGI app; ``requests`` holds every request body it received, ``disconnects`` the clients that left."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.disconnects = 0
        self.counts: dict[str, int] = {}
        self.gates: dict[str, threading.Event] = {}

    def close_gate(self, model: str) -> None:
        self.gates[model] = threading.Event()

    def open_gate(self, model: str) -> None:
        self.gates.setdefault(model, threading.Event()).set()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = await read_json(receive)
        self.requests.append(body)
        self.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        model = body.get("model", "ok")
        self.counts[model] = self.counts.get(model, 0) + 1
        if model.startswith("flaky-"):
            model = "status-503" if self.counts[model] <= int(model[6:].split("-")[0]) else "ok"
        if scope["path"].endswith("/messages"):
            await anthropic(body, send)
        elif model == "leak-key":
            await self._leak_key(scope["path"].endswith("/responses"), body.get("stream") is True, send)
        elif scope["path"].endswith("/responses") and model == "stall" and body.get("stream"):
            await self._stall_responses(receive, send)
        elif scope["path"].endswith("/responses"):
            await responses_api(body, send)
        elif body.get("stream"):
            await self._stream(model, body, receive, send)
        else:
            await self._whole(model, receive, send)

    async def _answer(self, send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _leak_key(self, responses: bool, stream: bool, send: Any) -> None:
        """An error that echoes the key the upstream was sent (providers do, in "invalid key" messages)."""
        error = {"message": f"Incorrect API key provided: {self.headers[-1].get('authorization', '')}"}
        error.update(type="invalid_request_error", code="invalid_api_key")
        json_h = [(b"content-type", b"application/json")]
        if responses:
            failed = {"id": "resp_up", "object": "response", "status": "failed", "output": [], "error": error}
            if not stream:
                await self._answer(send, 200, orjson.dumps(failed), json_h)
                return
            events = [{"type": "response.created", "response": {**failed, "status": "in_progress", "error": None}}]
            events.append({"type": "response.failed", "response": failed})
            frames = [b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events]
        elif not stream:
            await self._answer(send, 200, orjson.dumps({"error": error}), json_h)
            return
        else:
            frames = [_chunk("one "), b"data: " + orjson.dumps({"error": error}) + b"\n\n"]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for frame in frames:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _stall_responses(self, receive: Any, send: Any) -> None:
        response = {"id": "resp_up", "object": "response", "status": "in_progress", "output": []}
        events = [
            {"type": "response.created", "response": response},
            {"type": "response.output_text.delta", "item_id": "msg_up", "output_index": 0, "delta": "first"},
        ]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for event in events:
            frame = b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await self._wait_gone(receive)

    async def _wait_gone(self, receive: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.disconnects += 1

    async def _whole(self, model: str, receive: Any, send: Any) -> None:
        json_h = [(b"content-type", b"application/json"), (b"set-cookie", b"upstream=secret")]
        if model.startswith("status-"):
            status = int(model[7:])
            err = orjson.dumps({"error": {"message": f"upstream says {status}", "type": "x", "code": None}})
            extra = [(b"retry-after", b"7" if status == 429 else b"0")]
            await self._answer(send, status, err, json_h + extra)
        elif model.startswith("oai-"):
            status, kind, code = model[4:].split("-", 2)
            error = {"message": "upstream says no", "type": None if kind == "-" else kind}
            err = orjson.dumps({"error": {**error, "code": None if code == "-" else code, "param": None}})
            await self._answer(send, int(status), err, json_h + [(b"retry-after", b"0")])
        elif model == "text-503":
            await self._answer(send, 503, b"service down", [(b"content-type", b"text/plain")])
        elif model == "echo-auth":
            auth = self.headers[-1].get("authorization", "")
            err = orjson.dumps({"error": {"message": f"Incorrect API key provided: {auth}", "type": "x"}})
            await self._answer(send, 401, err, json_h)
        elif model == "malformed":
            await self._answer(send, 200, b"{not json", json_h)
        elif model == "length":  # cut by the output token limit
            cut = {**COMPLETION, "choices": [{**COMPLETION["choices"][0], "finish_reason": "length"}]}
            await self._answer(send, 200, orjson.dumps(cut), json_h)
        elif model == "absurd-usage":  # token counts no int64 holds, one negative
            usage = {"prompt_tokens": 2**70, "completion_tokens": -3, "total_tokens": 1}
            await self._answer(send, 200, json.dumps({**COMPLETION, "usage": usage}).encode(), json_h)
        elif model == "hang":
            await self._wait_gone(receive)
        elif model.startswith("pieces-"):
            await self._answer(send, 200, orjson.dumps(_echo(self.requests[-1])), json_h)
        else:
            await self._answer(send, 200, orjson.dumps(COMPLETION), json_h)

    async def _gate(self, model: str) -> None:
        gate = self.gates.get(model)
        if gate is not None:
            await asyncio.to_thread(gate.wait, 30)  # bounded: a test that never opens it fails, not hangs

    async def _stream(self, model: str, body: dict[str, Any], receive: Any, send: Any) -> None:
        if model.startswith(("status-", "oai-")) or model in ("hang", "text-503", "echo-auth"):
            await self._whole(model, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )

        async def part(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        if model == "malformed-sse":
            await part(b"data: {not json\n\n")
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
            return
        if model.startswith("pieces-"):
            text, size = _last_user_text(body), int(model[7:])
            for i in range(0, len(text), size):
                await part(_chunk(text[i : i + size]))
            await part(_chunk(finish="stop"))
            if (body.get("stream_options") or {}).get("include_usage"):
                await part(_chunk(usage=True))
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
            return
        if model in ("stall", "echo-stall"):
            await part(_chunk("first" if model == "stall" else _last_user_text(body)))
            await self._wait_gone(receive)
            return
        await part(_chunk("one "))
        await self._gate(model)
        await part(_chunk("two "))
        if model == "cut":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        # split one event across two writes to exercise re-assembly
        last = _chunk("three", finish="stop")
        await part(last[:20])
        await asyncio.sleep(0.01)
        await part(last[20:])
        if (body.get("stream_options") or {}).get("include_usage"):
            await part(_chunk(usage=True))
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


async def anthropic(body: dict[str, Any], send: Any) -> None:
    """Anthropic's Messages API: a fixed answer, whole or as its SSE event sequence."""
    usage = {"input_tokens": 5, "output_tokens": 3}
    message = {
        "id": "msg_up",
        "type": "message",
        "role": "assistant",
        "model": body.get("model"),
        "content": [{"type": "text", "text": "hi from claude"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }
    if not body.get("stream"):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": orjson.dumps(message)})
        return
    events = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    **message,
                    "content": [],
                    "stop_reason": None,
                    "usage": {"input_tokens": 5, "output_tokens": 0},
                },
            },
        ),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi from "}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "claude"}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 3},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    for name, data in events:
        frame = b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
        await send({"type": "http.response.body", "body": frame, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def responses_api(body: dict[str, Any], send: Any) -> None:
    """OpenAI's own ``/v1/responses`` (for ``api: responses`` deployments): echoes the last user text, or calls
    the first tool until the input ends with its output. Streams the core event sequence."""
    items = body.get("input") or []
    last = items[-1] if items else {}
    text, call = "", None
    for item in reversed(items):
        if item.get("role") == "user":
            content = item.get("content")
            text = content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)
            break
    if last.get("type") == "function_call_output":
        text = f"tool said: {last.get('output')}"
    elif body.get("tools"):
        call = {
            "id": "fc_up",
            "type": "function_call",
            "call_id": "call_up",
            "name": body["tools"][0]["name"],
            "arguments": orjson.dumps({"echo": text}).decode(),
            "status": "completed",
        }
    output = (
        [call]
        if call
        else [
            {
                "id": "msg_up",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ]
    )
    usage = {
        "input_tokens": 7,
        "input_tokens_details": {"cached_tokens": 2},
        "output_tokens": 4,
        "output_tokens_details": {"reasoning_tokens": 1},
        "total_tokens": 11,
    }
    response = {
        "id": "resp_upstream",
        "object": "response",
        "created_at": 1,
        "status": "completed",
        "model": body.get("model"),
        "output": output,
        "usage": usage,
    }
    if not body.get("stream"):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": orjson.dumps(response)})
        return
    shell = {**response, "status": "in_progress", "output": [], "usage": None}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": shell},
        {"type": "response.output_item.added", "output_index": 0, "item": {**output[0], "status": "in_progress"}},
    ]
    if not call:
        events.append(
            {
                "type": "response.output_text.delta",
                "item_id": "msg_up",
                "output_index": 0,
                "content_index": 0,
                "delta": text,
            }
        )
    events += [
        {"type": "response.output_item.done", "output_index": 0, "item": output[0]},
        {"type": "response.completed", "response": response},
    ]
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    for event in events:
        frame = b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
        await send({"type": "http.response.body", "body": frame, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
