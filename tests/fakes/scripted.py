"""A Chat Completions upstream that follows a script written in the conversation's first user message, for the
tool loop's tests: ``{"script": [step, ...]}`` where a step is a list of tool calls ``[[name, arguments], ...]``
or a final text. The step answered is the number of assistant turns with tool calls already in the messages, so
every round of a loop moves one step on; a final text may hold ``{outputs}``, replaced by the tool messages'
contents joined with ``|``. Every request body is kept (``bodies``) so tests can see what each round sent.
Each call reports usage 10 prompt + 5 completion tokens. Answers whole or streamed, as asked.
"""

from typing import Any

import orjson

from tests.fakes.upstream import read_json

USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


class Scripted:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_json(receive)
        self.bodies.append(body)
        step = self.step(body)
        if body.get("stream"):
            await self._stream(step, send)
        else:
            await _send(send, 200, b"application/json", orjson.dumps(_completion(step)))

    def step(self, body: dict[str, Any]) -> Any:
        """What this request is answered with: a list of tool calls, or a final text."""
        return _step(body)

    async def _stream(self, step: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for delta, finish in _deltas(step):
            await send({"type": "http.response.body", "body": _frame(delta, finish), "more_body": True})
        tail = _sse(
            {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [], "usage": USAGE}
        )
        await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n", "more_body": False})


def _step(body: dict[str, Any]) -> Any:
    messages = body.get("messages") or []
    first = next(m for m in messages if m.get("role") == "user")
    content = first["content"]
    text = content if isinstance(content, str) else "".join(p.get("text") or "" for p in content)
    script = orjson.loads(text)["script"]
    done = sum(1 for m in messages if m.get("role") == "assistant" and m.get("tool_calls"))
    step = script[min(done, len(script) - 1)]
    if isinstance(step, str):
        outputs = [str(m.get("content")) for m in messages if m.get("role") == "tool"]
        return step.replace("{outputs}", "|".join(outputs))
    return step


def _calls(step: list[Any]) -> list[dict[str, Any]]:
    return [
        {
            "id": f"call_{i}_{name}",
            "type": "function",
            "function": {"name": name, "arguments": orjson.dumps(args).decode()},
        }
        for i, (name, args) in enumerate(step)
    ]


def _completion(step: Any) -> dict[str, Any]:
    if isinstance(step, str):
        message: dict[str, Any] = {"role": "assistant", "content": step}
        finish = "stop"
    else:
        message, finish = {"role": "assistant", "content": None, "tool_calls": _calls(step)}, "tool_calls"
    choice = {"index": 0, "message": message, "finish_reason": finish}
    return {"id": "c", "object": "chat.completion", "created": 1, "model": "m", "choices": [choice], "usage": USAGE}


def _deltas(step: Any) -> list[tuple[dict[str, Any], str | None]]:
    if isinstance(step, str):
        half = len(step) // 2
        return [({"role": "assistant", "content": step[:half]}, None), ({"content": step[half:]}, None), ({}, "stop")]
    out: list[tuple[dict[str, Any], str | None]] = []
    for i, call in enumerate(_calls(step)):
        arguments = call["function"]["arguments"]
        head = {
            "index": i,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["function"]["name"], "arguments": ""},
        }
        out.append(({"tool_calls": [head]}, None))
        out.append(({"tool_calls": [{"index": i, "function": {"arguments": arguments}}]}, None))
    out.append(({}, "tool_calls"))
    return out


def _frame(delta: dict[str, Any], finish: str | None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return _sse({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice]})


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


async def _send(send: Any, status: int, kind: bytes, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", kind)]})
    await send({"type": "http.response.body", "body": body})
