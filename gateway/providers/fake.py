"""The deterministic provider that ships in the product, so tests, demos and health checks need no key.

The deployment's ``model`` picks the behaviour:

``echo``          answer with the last user message (streamed word by word when ``stream`` is true)
``tool-call``     call the request's first tool with ``{"echo": <last user message>}`` (echo if no tools); once
                  the conversation ends with a tool result, answer ``tool said: <result>``
``error-<code>``  the upstream answers HTTP ``<code>`` with an OpenAI error body
``slow-<ms>``     echo after ``<ms>`` milliseconds (streams pause that long before the first chunk)
"""

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from config.deployments import Deployment
from gateway.upstream import error_from_status


def _last_user_text(messages: Any) -> str:
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                texts = (p.get("text") for p in content if isinstance(p, dict))
                return " ".join(t for t in texts if isinstance(t, str) and t)
    return ""


def _count_words(messages: Any) -> int:
    return sum(len(str(m.get("content") or "").split()) for m in (messages or []) if isinstance(m, dict))


class _Answer:
    """What the fake decided to say, in both wire shapes."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.model = str(body.get("model", "fake"))
        self.id = "chatcmpl-" + hashlib.sha1(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:24]
        self.created = int(time.time())
        self.text = _last_user_text(body.get("messages"))
        self.tool: dict[str, Any] | None = None
        self.prompt_tokens = _count_words(body.get("messages"))
        self.completion_tokens = len(self.text.split())

    def usage(self) -> dict[str, int]:
        total = self.prompt_tokens + self.completion_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": total,
        }

    def tool_call(self) -> dict[str, Any]:
        assert self.tool is not None
        return {
            "id": "call_" + self.id[-24:],
            "type": "function",
            "function": {"name": self.tool["name"], "arguments": orjson.dumps({"echo": self.text}).decode()},
        }

    def completion(self) -> bytes:
        message: dict[str, Any] = {"role": "assistant", "content": None if self.tool else self.text}
        if self.tool:
            message["tool_calls"] = [self.tool_call()]
        choice = {"index": 0, "message": message, "finish_reason": "tool_calls" if self.tool else "stop"}
        return orjson.dumps(
            {
                "id": self.id,
                "object": "chat.completion",
                "created": self.created,
                "model": self.model,
                "choices": [choice],
                "usage": self.usage(),
            }
        )

    def chunk(self, delta: dict[str, Any], finish: str | None = None, usage: bool = False) -> bytes:
        data: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
        }
        if usage:
            data["usage"] = self.usage()
        else:
            data["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
        return b"data: " + orjson.dumps(data) + b"\n\n"


class _FakeStream:
    def __init__(self, answer: _Answer, include_usage: bool, delay: float) -> None:
        self._answer, self._include_usage, self._delay = answer, include_usage, delay

    async def __aiter__(self) -> AsyncIterator[bytes]:
        a = self._answer
        if self._delay:
            await asyncio.sleep(self._delay)
        yield a.chunk({"role": "assistant", "content": ""})
        if a.tool:
            call = a.tool_call()
            yield a.chunk({"tool_calls": [{"index": 0, **call}]})
            yield a.chunk({}, finish="tool_calls")
        else:
            words = a.text.split(" ")
            for i, word in enumerate(words):
                yield a.chunk({"content": word if i == len(words) - 1 else word + " "})
            yield a.chunk({}, finish="stop")
        if self._include_usage:
            yield a.chunk({}, usage=True)
        yield b"data: [DONE]\n\n"

    async def close(self) -> None:
        return None


class FakeProvider:
    """The ``Provider`` for ``type: fake`` deployments."""

    def _decide(self, deployment: Deployment, body: dict[str, Any]) -> tuple[_Answer, float]:
        behaviour = deployment.model
        if behaviour.startswith("error-") and behaviour[6:].isdigit():
            status = int(behaviour[6:])
            error = {"error": {"message": f"fake upstream error {status}", "type": "fake_error", "code": None}}
            raise error_from_status(status, orjson.dumps(error), "1" if status == 429 else None)
        answer = _Answer(body)
        # Like a real upstream, odd shapes never crash it: whatever is not what it expects is simply ignored.
        tools = body.get("tools")
        messages = body.get("messages")
        last = messages[-1] if isinstance(messages, list) and messages else None
        if behaviour == "tool-call" and isinstance(last, dict) and last.get("role") == "tool":
            answer.text = f"tool said: {last.get('content')}"
            answer.completion_tokens = len(answer.text.split())
        elif behaviour == "tool-call" and isinstance(tools, list) and tools and isinstance(tools[0], dict):
            tool = tools[0].get("function") or tools[0]
            if isinstance(tool, dict) and isinstance(tool.get("name"), str):
                answer.tool = tool
        delay = int(behaviour[5:]) / 1000 if behaviour.startswith("slow-") and behaviour[5:].isdigit() else 0.0
        return answer, delay

    async def chat(self, deployment: Deployment, body: dict[str, Any]) -> bytes:
        answer, delay = self._decide(deployment, body)
        if delay:
            await asyncio.sleep(delay)
        return answer.completion()

    async def open_stream(self, deployment: Deployment, body: dict[str, Any]) -> _FakeStream:
        answer, delay = self._decide(deployment, body)
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        return _FakeStream(answer, include_usage, delay)
