"""The Responses engine: one turn of a conversation over any upstream.

``prepare`` rebuilds the conversation from the store and builds the response shell (the routes validate the
request before the policy chain runs, so that a refused request consumes no Idempotency-Key); ``complete``
answers whole; ``open_stream`` opens the upstream (refusals raise here, before any event, so the route can
answer with a plain error status) and returns the event source. Chat-only upstreams are translated
both ways (``translate``, ``events``); deployments with ``api: responses`` are spoken to natively, with the
conversation inlined (the gateway owns the state, the upstream stores nothing).
"""

import time
from collections.abc import AsyncGenerator, Awaitable
from dataclasses import dataclass, field
from typing import Any

from config.catalog import TenantModel
from config.deployments import Deployment, OpenAIDeployment
from gateway.context import RequestContext
from gateway.disconnect import aclose
from gateway.dispatch import Dispatcher, Opened
from gateway.errors import InvalidRequest, ShuttingDown, UpstreamError, redact_secret, redact_secret_bytes
from gateway.inflight import InFlight
from gateway.providers import ResponsesProvider
from gateway.responses import native
from gateway.responses.events import ChatStreamToEvents
from gateway.responses.ids import new_response_id
from gateway.responses.inputs import normalize_input
from gateway.responses.loop import LoopLimits, ToolLoop
from gateway.responses.records import ResponseRecords
from gateway.responses.translate import UnsupportedFeature, chat_to_response, request_to_chat, response_shell
from gateway.sse import iter_sse_batches
from gateway.targets import target_model
from gateway.upstream import credential, upstream_json

JSON = dict[str, Any]
Events = AsyncGenerator[list[JSON], None]  # Responses events in batches; ``athrow(ShuttingDown())`` ends it failed


@dataclass
class Turn:
    """Everything one create call needs, decided before the upstream is called."""

    ctx: RequestContext
    request: JSON
    model: TenantModel
    shell: JSON
    input_items: list[JSON]  # as stored and listed by input_items
    upstream_input: list[JSON]  # as sent (x_context rendered in)
    history: list[JSON] = field(default_factory=list)
    chain: list[str] = field(default_factory=list)
    rounds: int = 1  # model calls made (the tool loop makes one per round)

    @property
    def loops(self) -> bool:
        """Whether the turn runs the tool loop: the request names tools the gateway executes."""
        return bool(self.ctx.tools)

    @property
    def id(self) -> str:
        return str(self.shell["id"])

    @property
    def upstream_request(self) -> JSON:
        return {**self.request, "input": self.upstream_input}


def _is_native(dep: Deployment) -> bool:
    return isinstance(dep, OpenAIDeployment) and dep.api == "responses"


class ResponsesEngine:
    def __init__(
        self,
        dispatcher: Dispatcher,
        records: ResponseRecords,
        inflight: InFlight,
    ) -> None:
        self.dispatcher = dispatcher
        self.records = records
        self.inflight = inflight
        self.loop: ToolLoop | None = None  # set by the runtime once its tools exist

    async def prepare(self, ctx: RequestContext) -> Turn:
        """The turn of a request already validated (``validate_create``, before the policy chain)."""
        request = ctx.body
        model = target_model(ctx)
        history: list[JSON] = []
        chain: list[str] = []
        previous = request.get("previous_response_id")
        if previous:
            history, chain = await self.records.history(previous, ctx.tenant_id, ctx.space_id)
        stored, upstream = normalize_input(request["input"], request.get("x_context", request.get("context")))
        response_id = ctx.answer_log.id if ctx.answer_log is not None else new_response_id()  # named before the chain
        shown = ctx.agent.key if ctx.agent is not None else model.alias  # an agent's answer names the agent
        shell = response_shell(request, response_id=response_id, created_at=int(time.time()), model=shown)
        return Turn(ctx, request, model, shell, stored, upstream, history, chain)

    def _chat_body(self, turn: Turn, stream: bool) -> JSON:
        try:
            return request_to_chat({**turn.upstream_request, "stream": stream}, turn.history)
        except UnsupportedFeature as exc:
            raise InvalidRequest(exc.message, param=exc.param) from None

    async def complete(self, turn: Turn) -> JSON:
        """The whole response (not yet stored): one model call, or the tool loop's rounds."""
        if turn.loops:
            final = turn.shell
            async for batch in self._run_loop(turn):
                final = next((e["response"] for e in reversed(batch) if "response" in e), final)
            return final
        return await self.complete_round(turn)

    async def open_stream(self, turn: Turn) -> Events:
        """Open the upstream (errors raise here) and return the Responses event stream. An upstream failure, or
        a shutdown, ends it with ``response.failed``; so does ``athrow(ShuttingDown())`` at any of its yields.
        A turn that loops starts its events at once and reports a failure to open a round as ``response.failed``."""
        if turn.loops:
            return self._run_loop(turn)
        return await self.open_round(turn)

    def _run_loop(self, turn: Turn) -> Events:
        assert self.loop is not None  # a request names executable tools only when the runtime has them
        limits = turn.ctx.space.tool_loop
        return self.loop.run(turn, LoopLimits(limits.max_rounds, limits.max_seconds, limits.call_timeout_seconds))

    async def complete_round(self, turn: Turn) -> JSON:
        """One model call's whole response."""
        chat_body = self._chat_body(turn, stream=False)

        async def attempt(dep: Deployment) -> JSON:
            if _is_native(dep):
                data = await self._native(dep).responses(dep, native.upstream_body(turn, dep, stream=False))
                answer = upstream_json(data)
                if answer.get("error"):  # stored with the response: never with the key the upstream echoed
                    answer = upstream_json(redact_secret_bytes(data, credential(dep)))
                return native.merge_response(turn.shell, answer)
            data = await self.dispatcher.provider(dep).chat(dep, {**chat_body, "model": dep.model})
            return chat_to_response(upstream_json(data), shell=turn.shell)

        return await self.dispatcher.run(turn.model, attempt)

    async def open_round(self, turn: Turn) -> Events:
        """One model call's event stream, opened (errors raise here)."""
        chat_body = self._chat_body(turn, stream=True)

        def open_upstream(dep: Deployment) -> Awaitable[Any]:
            if _is_native(dep):
                return self._native(dep).open_responses_stream(dep, native.upstream_body(turn, dep, stream=True))
            return self.dispatcher.provider(dep).open_stream(dep, {**chat_body, "model": dep.model})

        dep, opened = await self.dispatcher.stream_with(turn.model, open_upstream)
        if _is_native(dep):
            return native.relay_events(turn.shell, opened, credential(dep), self.inflight)
        return _translate_events(turn.shell, opened, credential(dep), self.inflight)

    def _native(self, dep: Deployment) -> ResponsesProvider:
        provider = self.dispatcher.provider(dep)
        assert isinstance(provider, ResponsesProvider)  # the catalogue has api: responses only on such types
        return provider


async def _translate_events(shell: JSON, opened: Opened, secret: str | None, inflight: InFlight) -> Events:
    """Responses events, in batches (one per upstream read), for a translated Chat Completions stream; an
    upstream error event's message ends it in ``response.failed``, without the deployment's key."""
    stream, chunks, first = opened
    machine = ChatStreamToEvents(shell)
    try:
        with inflight.interruptible():
            yield machine.start()
            async for batch in iter_sse_batches(first, chunks, until_done=True):
                events: list[JSON] = []
                for chunk in batch:
                    if "error" in chunk and not chunk.get("choices"):
                        if events:
                            yield events
                        raise UpstreamError(redact_secret(_error_message(chunk["error"]), secret))
                    events.extend(machine.feed(chunk))
                if events:
                    yield events
            yield machine.finish()
    except (UpstreamError, ShuttingDown) as exc:
        yield machine.fail("server_error", exc.message)
    finally:
        await aclose(chunks)
        await stream.close()


def _error_message(error: Any) -> str:
    message = error.get("message") if isinstance(error, dict) else error
    return str(message or "Upstream failed mid-stream.")
