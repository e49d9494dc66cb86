"""Responses on both surfaces: create (whole, streamed, background), retrieve, resume, cancel, delete.

A background response answers at once (``queued``) and then runs in the same task, so the policy chain's
``after`` hooks still see its final usage; it always runs as a stream, so its events can be followed with
``GET …?stream=true&starting_after=N``. A background response whose gateway instance stopped is marked
``failed`` the next time anyone reads it, never left ``in_progress``.
"""

import asyncio
import functools
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.types import Receive, Send

from gateway.context import AnswerLog, RequestContext, Usage
from gateway.disconnect import cancel_on_disconnect, until_disconnect
from gateway.errors import JSON_HEADERS, InvalidRequest, ShuttingDown, UpstreamError
from gateway.http import SSE_HEADERS, json_bytes, send_bytes
from gateway.inflight import InFlight
from gateway.jobs import Jobs
from gateway.pricing import PriceBook
from gateway.responses.engine import Events, ResponsesEngine, Turn
from gateway.responses.events import TERMINAL_EVENTS, events_of
from gateway.responses.ids import new_response_id
from gateway.responses.live import LiveStream, LiveStreams
from gateway.responses.records import TERMINAL, ResponseRecords, StoredResponse
from gateway.responses.validate import validate_create
from gateway.sse import format_sse, responses_error_event
from gateway.tools import HTTP_LABEL, Tools

JSON = dict[str, Any]
Render = Callable[[StoredResponse], JSON]
INTERRUPTED = "interrupted: the gateway instance running this response stopped before it finished"
# what a response whose gateway stopped (or crashed) under it ends as; only ever spread into a new dict
_INTERRUPTED_END: JSON = {"status": "failed", "error": {"code": "server_error", "message": INTERRUPTED}}


class ResponsesService:
    def __init__(
        self,
        engine: ResponsesEngine,
        records: ResponseRecords,
        prices: PriceBook,
        inflight: InFlight,
        jobs: Jobs,
        tools: Tools,
    ) -> None:
        self.tools = tools
        self.inflight = inflight
        self.prices = prices
        self.engine = engine
        self.records = records
        self.live = LiveStreams()
        self.jobs = jobs  # responses running here, cancels, owners' liveness
        self.resolve: Callable[[RequestContext], Awaitable[None]] | None = None  # the runtime's resolver

    # --- create -------------------------------------------------------------------------------------------
    async def admit(self, ctx: RequestContext, receive: Receive) -> None:
        """Before the policy chain: validate the request (so a refused one consumes no Idempotency-Key), resolve
        the tools the gateway runs for it (``ctx.tools``: the tool loop's servers), and name a stream's response,
        whose event log a retry in flight can then follow (``ctx.answer_log``, until that retry's client goes
        away). The target is resolved between the two (``gateway.targets``): an agent's version adds its
        tools and parameters to the request, and its tools are checked like the caller's."""
        validate_create(ctx.body)
        if self.resolve is not None:
            await self.resolve(ctx)
        await self._executable_tools(ctx)
        ctx.stream = ctx.body.get("stream") is True
        if ctx.stream:  # (the context weakly: it holds the log, and a cycle would wait for the cyclic collector)
            follow = functools.partial(self._follow_live, weakref.ref(ctx), receive)
            ctx.answer_log = AnswerLog(new_response_id(), follow)

    async def _follow_live(
        self, ctx_ref: Callable[[], RequestContext | None], receive: Receive, response_id: str, after: int
    ) -> AsyncIterator[bytes] | None:
        ctx = ctx_ref()
        if ctx is None:
            return None
        frames = await self.follow(ctx, response_id, after)
        return None if frames is None else until_disconnect(frames, receive)

    async def _executable_tools(self, ctx: RequestContext) -> None:
        """The request's MCP servers and HTTP tools, checked (the space's allowed servers and addresses) before the
        chain runs. ``tool_mode: manual`` executes nothing, so it cannot take them: the caller could not run them."""
        tools = ctx.body.get("tools")
        if not tools or all(isinstance(t, dict) and t.get("type") == "function" for t in tools):
            return
        skills = [t for t in tools if isinstance(t, dict) and t.get("type") == "skill"]
        resolved = await self.tools.resolve(ctx.space_id, [t for t in tools if not any(t is s for s in skills)])
        servers = await self.tools.skill_servers(ctx, tools) if skills and self.tools.skill_servers is not None else []
        if servers and resolved.mcp_server(servers[0].label) is not None:
            raise InvalidRequest("tools: the MCP server label 'skill' is taken by the request's skills.", param="tools")
        if (resolved.mcp or resolved.http or servers) and ctx.body.get("tool_mode") == "manual":
            raise InvalidRequest(
                "MCP and HTTP tools need tool_mode 'auto_resolve': with 'manual' the gateway runs no tool.",
                param="tool_mode",
            )
        if resolved.http and resolved.mcp_server(HTTP_LABEL) is not None:
            raise InvalidRequest(
                f"server_label '{HTTP_LABEL}' is the gateway's HTTP tools' own: name the MCP server otherwise.",
                param="tools",
            )
        ctx.tools = [*self.tools.servers(resolved), *servers]

    async def create(self, ctx: RequestContext, send: Send, receive: Receive, render: Render) -> None:
        turn = await self.engine.prepare(ctx)
        record = StoredResponse(
            response=turn.shell,
            tenant_id=ctx.tenant_id,
            space_id=ctx.space_id,
            principal=ctx.principal.id,
            model_alias=turn.model.alias,
            input_items=turn.input_items,
            chain=turn.chain,
            idempotency_key=ctx.extras.get("idempotency_key"),
            aimable={
                "governance_applied": ctx.governance_applied,
                "iteration_count": 0,
                "langfuse_trace_id": ctx.trace.trace_id if ctx.trace is not None else None,  # an exported trace's
            },
            agent=ctx.agent_ref,
        )
        if turn.request.get("background"):
            await self._background(turn, record, send, render)
        elif ctx.stream:
            await self._stream(turn, record, send, receive)
        else:
            async with cancel_on_disconnect(receive, ctx) as finished:
                response = await self.engine.complete(turn)
                await self._finish(turn, record, response)
                finished.set()
                ctx.status_code = 200
                await send_bytes(send, 200, ctx.answer_headers(JSON_HEADERS), json_bytes(render(record)))

    async def _stream(self, turn: Turn, record: StoredResponse, send: Send, receive: Receive) -> None:
        events = await self.engine.open_stream(turn)  # an upstream refusal is a plain error answer
        turn.ctx.mark_first_token()
        live = self.live.open(turn.id, self.records, persist=self._stored(turn) and not turn.ctx.redactors)
        self.jobs.started(turn.id)
        try:
            if self._stored(turn):  # retrievable (and resumable) while it runs
                record.owner = self.jobs.instance
                await self.records.save(record)
            turn.ctx.status_code = 200
            await send({"type": "http.response.start", "status": 200, "headers": turn.ctx.answer_headers(SSE_HEADERS)})
            tail = await self._run_stream(turn, record, events, live, send, receive)
            if tail is not None:  # the end of the answer goes out once the record and the log are final
                await send({"type": "http.response.body", "body": tail, "more_body": False})
        finally:
            self.jobs.ended(turn.id)  # (already ended unless the start failed)
            self.live.forget(turn.id)

    async def _run_stream(
        self,
        turn: Turn,
        record: StoredResponse,
        events: Events,
        live: LiveStream,
        send: Send,
        receive: Receive,
    ) -> bytes | None:
        """Pump the events and end the response; returns the answer's last message (the frames from the terminal
        event on), or None when the client is gone."""
        tail: bytes | None = None
        try:
            async with cancel_on_disconnect(receive, turn.ctx) as finished:
                tail = await self._relay(turn, events, live, send)
                finished.set()
        except asyncio.CancelledError:
            if not self.jobs.cancelled(turn.id):  # the gateway is stopping
                turn.ctx.outcome = "interrupted"
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            turn.ctx.outcome, tail = "cancelled", b""
        finally:
            final = live.latest or turn.shell
            if turn.ctx.outcome in ("disconnected", "cancelled"):
                final = {**final, "status": "cancelled"}
            elif turn.ctx.outcome == "interrupted" and final.get("status") != "failed":
                final = {**final, **_INTERRUPTED_END}
            self.jobs.ended(turn.id)
            await live.close()  # the whole log is stored before the record says the response ended
            await self._finish(turn, record, final)
        return tail

    async def _relay(self, turn: Turn, events: Events, live: LiveStream, send: Send | None) -> bytes:
        """Publish every event (``_publish``); returns the frames from the terminal event on, unsent: the caller
        sends them as the answer's last message once the response is recorded as ended. A shutdown ends the
        stream with ``response.failed``: the source's own (with the partial output) when it is still open, else
        one built on the latest response."""
        held: list[bytes] | None = None
        try:
            with self.inflight.interruptible():
                async for batch in events:
                    held = await self._publish(turn.ctx, batch, live, send, held)
        except ShuttingDown as exc:  # cut while publishing or sending: the source is at a yield, or ended
            stopped = await _stopped(events, exc) or _failed(live, turn.shell, exc.message)
            held = await self._publish(turn.ctx, stopped, live, send, held)
        if self.inflight.interrupted():
            turn.ctx.outcome = "interrupted"
        return b"".join(held or ())

    async def _publish(
        self, ctx: RequestContext, batch: list[JSON], live: LiveStream, send: Send | None, held: list[bytes] | None
    ) -> list[bytes] | None:
        """One batch to the live log (``live.latest`` tracks the response) and to the client, in one write; from
        the terminal event on, the frames are added to ``held`` (returned) instead of sent. A stream that ended
        in ``response.failed`` is the upstream's failure (``ctx.outcome``)."""
        frames = [format_sse(event) for event in batch]
        for event in batch:
            if "response" in event:
                live.latest = event["response"]
                if event["type"] in TERMINAL_EVENTS and held is None:
                    held = []
                    if event["type"] == "response.failed" and ctx.outcome == "pending":
                        ctx.outcome = "upstream_error"
        await live.publish(frames)
        if held is not None:
            held.extend(frames)
        elif send is not None:
            await send({"type": "http.response.body", "body": b"".join(frames), "more_body": True})
        return held

    async def _background(self, turn: Turn, record: StoredResponse, send: Send, render: Render) -> None:
        record.response = {**turn.shell, "status": "queued", "background": True}
        record.owner = self.jobs.instance
        await self.records.save(record)
        live = self.live.open(turn.id, self.records, persist=not turn.ctx.redactors)
        self.jobs.started(turn.id)
        if turn.ctx.stream:
            turn.ctx.status_code = 200
            await send({"type": "http.response.start", "status": 200, "headers": turn.ctx.answer_headers(SSE_HEADERS)})
        else:
            turn.ctx.status_code = 200
            await send_bytes(send, 200, turn.ctx.answer_headers(JSON_HEADERS), json_bytes(render(record)))
            send = None  # type: ignore[assignment]
        failure: JSON | None = None
        tail = b""
        watcher = asyncio.ensure_future(self.jobs.watch_cancel(turn.id))
        try:
            with self.inflight.interruptible():
                record.response = {**record.response, "status": "in_progress"}
                await self.records.save(record)
                events = await self.engine.open_stream(turn)
            tail = await self._relay(turn, events, live, send)
        except asyncio.CancelledError:
            if not self.jobs.cancelled(turn.id):  # the gateway is stopping
                failure = _INTERRUPTED_END
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            failure, turn.ctx.outcome = {"status": "cancelled"}, "cancelled"
        except (UpstreamError, ShuttingDown) as exc:  # before the upstream stream opened
            failure = {"status": "failed", "error": {"code": "server_error", "message": exc.message}}
            turn.ctx.outcome = "interrupted" if isinstance(exc, ShuttingDown) else "upstream_error"
            turn.ctx.error = exc
            failed = _failed(live, record.response, exc.message)  # followers see it end; the client last
            tail = b"".join(await self._publish(turn.ctx, failed, live, send, None) or ())
        finally:
            watcher.cancel()
            try:
                await live.close()
                await self._finish(turn, record, {**(live.latest or record.response), **(failure or {})})
                self.jobs.ended(turn.id)
                if send is not None:
                    await send({"type": "http.response.body", "body": tail, "more_body": False})
            finally:
                self.jobs.ended(turn.id)  # (already ended unless finishing failed)
                self.live.forget(turn.id)

    def _stored(self, turn: Turn) -> bool:
        return turn.request.get("store") is not False

    async def _finish(self, turn: Turn, record: StoredResponse, response: JSON) -> None:
        record.response = redact({**turn.shell, **response, "id": turn.id}, turn.ctx.redactors)
        record.finished_at = int(time.time())
        if not turn.loops:  # the loop counts each round as it ends
            turn.ctx.count(Usage.from_response(record.response))
            if turn.ctx.trace is not None:
                turn.ctx.trace.answered(record.response)
        record.cost_micros = turn.ctx.cost_micros
        record.aimable["iteration_count"] = turn.rounds
        if self._stored(turn):
            await self.records.save(record)

    # --- read, resume, cancel, delete -----------------------------------------------------------------------
    async def get(self, ctx: RequestContext, response_id: str) -> StoredResponse | None:
        record = await self.records.load(response_id, ctx.tenant_id, ctx.space_id)
        if record is not None and not record.terminal:
            await self._repair(record)
        return record

    async def _repair(self, record: StoredResponse) -> None:
        """A background response whose owner is gone ends as failed (after a crash, say). This instance's own
        records are left alone: one without a job here has just finished, and its final save may still be on
        its way (overwriting it with "failed" would race that save)."""
        if not record.owner or await self.jobs.owner_alive(record.owner):
            return
        record.response = {**record.response, **_INTERRUPTED_END}
        record.finished_at = int(time.time())
        await self.records.save(record)

    async def replay(self, record: StoredResponse, after: int, send: Send, receive: Receive) -> None:
        """SSE frames after sequence number ``after`` (``frames``), as an event stream, while the client stays.
        A shutdown cuts it with an ``error`` event (the response itself goes on, resumable from another
        replica)."""
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        try:
            with self.inflight.interruptible():
                async for frame in until_disconnect(self.frames(record, after), receive):
                    await send({"type": "http.response.body", "body": frame, "more_body": True})
        except ShuttingDown as exc:
            frame = responses_error_event(exc.message, exc.code)
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def follow(self, ctx: RequestContext, response_id: str, after: int) -> AsyncIterator[bytes] | None:
        """The frames of a response of the caller's space after ``after``, following it to its end; None when
        it is neither running here nor stored (not started yet, or ``store: false`` on another replica)."""
        live = self.live.get(response_id)
        if live is not None:
            return live.follow(after)
        record = await self.records.load(response_id, ctx.tenant_id, ctx.space_id)
        return None if record is None else self._stored_frames(record, after)

    def frames(self, record: StoredResponse, after: int) -> AsyncIterator[bytes]:
        """SSE frames after sequence number ``after``: from the live stream here, else from the stored log,
        following it until the response ends."""
        live = self.live.get(record.id)
        return live.follow(after) if live is not None else self._stored_frames(record, after)

    async def _stored_frames(self, record: StoredResponse, after: int) -> AsyncIterator[bytes]:
        """The stored log after ``after``, polled until the response ends. A finished response without a log
        (created without streaming, or with its log not kept) gives the events its stream would have carried."""
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline:
            frames = await self.records.events(record.id, after)
            if not frames and record.terminal and (after < 0 or not await self.records.logged(record.id)):
                for event in events_of(record.response)[after + 1 :]:
                    yield format_sse(event)
                return
            for frame in frames:
                yield frame
            after += len(frames)
            if record.terminal:
                return
            await asyncio.sleep(0.2)
            fresh = await self.records.load(record.id, record.tenant_id, record.space_id)
            if fresh is None:
                return
            record = fresh

    async def cancel(self, record: StoredResponse) -> StoredResponse:
        """Cancel a background response in flight (here, or through the store on another replica); returns the
        record once it is cancelled, or as it stands after 5 s."""
        if not self.jobs.cancel_here(record.id):
            await self.jobs.request_cancel(record.id)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            fresh = await self.records.load(record.id, record.tenant_id, record.space_id)
            if fresh is None or fresh.terminal:
                return fresh or record
            await asyncio.sleep(0.05)
        return record


def _failed(live: LiveStream, base: JSON, message: str) -> list[JSON]:
    """``response.failed`` as the next event of a stream whose source could not say it, on the latest response
    (none when the stream had already ended)."""
    latest = live.latest or base
    if latest.get("status") in TERMINAL:
        return []
    failed = {**latest, "status": "failed", "error": {"code": "server_error", "message": message}}
    return [{"type": "response.failed", "sequence_number": len(live.frames), "response": failed}]


async def _stopped(events: Events, exc: ShuttingDown) -> list[JSON]:
    """The event source's own last batch for a shutdown, thrown in at the yield it waits at; empty when it
    had already ended."""
    try:
        return await events.athrow(exc) or []
    except (StopAsyncIteration, ShuttingDown):
        return []


def redact(response: JSON, redactors: list[Callable[[str], str]]) -> JSON:
    """The response with every output text passed through the redactors (nothing to do without any)."""
    if not redactors:
        return response
    output = []
    for item in response.get("output") or []:
        parts = []
        for part in item.get("content") or []:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                text = part["text"]
                for redactor in redactors:
                    text = redactor(text)
                part = {**part, "text": text}
            parts.append(part)
        output.append({**item, "content": parts} if "content" in item else item)
    return {**response, "output": output}
