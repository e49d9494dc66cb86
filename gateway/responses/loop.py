"""The server-side tool loop (``tool_mode: auto_resolve``): model → MCP tools → model, until a final answer.

A turn whose request names MCP tools runs here instead of as one model call. The servers' tools are listed
(``mcp_list_tools``; a server the conversation already listed is not listed again), offered to the model as
functions (``mcp_items.function_name``), and each round is one model call through the engine and the policies'
per-call hooks (``ctx.next_call``: budgets reserve and settle per round, rate limits count every round's tokens,
input guardrails see the tool outputs fed back). Calls to MCP tools run concurrently and come back to the model
as their output (a tool's error or timeout is an output, not a failure), until the model answers, calls one of
the client's own functions (returned untouched, as without the loop), asks for a tool that needs approval
(``mcp_approval_request``; an ``mcp_approval_response`` in the next request resumes), or a limit ends the
response ``incomplete``: the space's rounds or wall time, the request's ``max_tool_calls``, a budget or a
guardrail refusing the next round.

The caller sees one response: one ``sequence_number`` space and one ``output`` over every round
(``_RoundEvents`` re-homes each round's events), usage summed; ``aimable.iteration_count`` counts the rounds.
"""

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import orjson

from gateway.context import Usage
from gateway.errors import BudgetExceeded, GatewayError, RateLimited, ShuttingDown, UpstreamError
from gateway.responses import mcp_items
from gateway.responses.events import TERMINAL_EVENTS, events_of
from gateway.responses.mcp_items import function_name
from gateway.tools import ToolServer

JSON = dict[str, Any]
_MAX_TOOLS_OFFERED = 128  # per request, over every server
_GATEWAY_TOOLS = ("mcp", "http_tool", "skill")  # the request's tool types the gateway runs (the rest: the caller's)


@dataclass(frozen=True, slots=True)
class LoopLimits:
    max_rounds: int = 8
    max_seconds: float = 300.0
    call_timeout: float = 60.0


@dataclass(slots=True)
class _Tool:
    server: ToolServer
    name: str  # as the server knows it


class ToolLoop:
    """Runs the loop of one turn (``run``) over an engine's single model calls (``open_round``)."""

    def __init__(self, engine: Any, metrics: Any = None) -> None:
        self.engine = engine
        self.metrics = metrics  # gateway.metrics.Metrics, or None when metrics are off

    def run(self, turn: Any, limits: LoopLimits) -> AsyncGenerator[list[JSON], None]:
        return _Run(self, turn, limits).events()


class _Run:
    def __init__(self, loop: ToolLoop, turn: Any, limits: LoopLimits) -> None:
        self.loop, self.turn, self.limits = loop, turn, limits
        self.ctx = turn.ctx
        self.deadline = time.monotonic() + limits.max_seconds
        self.seq = 0
        self.output: list[JSON] = []  # the response's items over every round
        self.usage: JSON | None = None
        self.tools: dict[str, _Tool] = {}  # function name -> MCP tool
        self.offered: list[JSON] = []  # the MCP tools as function tools
        self.calls_made = 0
        self.last_calls: list[JSON] = []
        self.next_calls: list[
            JSON
        ] = []  # the calls the last round asked for  # the calls run since the last round: their outputs go to the next
        self.status: JSON = {"status": "in_progress"}

    # --- the response as it stands, and events on it ---
    def response(self, **end: Any) -> JSON:
        return {**self.turn.shell, **self.status, "output": list(self.output), "usage": self.usage, **end}

    def event(self, kind: str, **fields: Any) -> JSON:
        event = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return event

    def item_events(self, item: JSON, *between: tuple[str, JSON]) -> list[JSON]:
        """An item added (in progress), the given events on it, then done as it stands at the end."""
        index = len(self.output)
        self.output.append(item)
        added = self.event("response.output_item.added", output_index=index, item={**item})
        middle = [self.event(kind, output_index=index, item_id=item["id"], **extra) for kind, extra in between]
        return [added, *middle]

    def done(self, item: JSON) -> JSON:
        return self.event("response.output_item.done", output_index=self.output.index(item), item=item)

    def end(self, kind: str, **end: Any) -> list[JSON]:
        self.status = {"status": kind.removeprefix("response.")}
        return [self.event(kind, response=self.response(**end))]

    # --- the loop ---
    async def events(self) -> AsyncGenerator[list[JSON], None]:
        yield [
            self.event("response.created", response=self.response()),
            self.event("response.in_progress", response=self.response()),
        ]
        try:
            async for batch in self._list_tools():
                yield batch
            pending = self._approved_calls()
            round_no = 0
            while self.status["status"] == "in_progress":
                if pending:
                    async for batch in self._execute(pending):
                        yield batch
                round_no += 1
                stop = await self._limit(round_no)
                if stop is not None:
                    yield stop
                    return
                self.turn.rounds = round_no
                async for batch in self._round(round_no):
                    yield batch
                pending = self.next_calls
        except ShuttingDown as exc:
            yield self.end("response.failed", error={"code": "server_error", "message": exc.message})

    async def _round(self, round_no: int) -> AsyncIterator[list[JSON]]:
        """One model call's events; then either the response's end, or the calls to run (``next_calls``)."""
        rewriter = _RoundEvents(self)
        self.next_calls = []
        try:
            source = await self._open_round(self._round_turn(round_no))
        except UpstreamError as exc:
            if round_no == 1 and not self.ctx.stream:
                raise  # answered as a plain error, as without the loop
            yield self.end("response.failed", error={"code": "server_error", "message": exc.message})
            return
        try:
            async for batch in source:
                out = rewriter.feed(batch)
                if out:
                    yield out
        finally:
            await source.aclose()
        final = rewriter.final
        self.usage = mcp_items.add_usage(self.usage, (final or {}).get("usage"))
        self.ctx.count(Usage.from_response(final))
        if self.ctx.trace is not None:  # the round's model call is over (its tools run outside its span)
            self.ctx.trace.answered(final or {})
            self.ctx.trace.end_call()
        if final is None or final.get("status") != "completed" or not rewriter.mcp_calls:
            yield rewriter.finish()
        elif rewriter.client_calls or rewriter.approvals:  # the caller's turn: the calls needing no approval run
            async for batch in self._execute(rewriter.mcp_calls):
                yield batch
            yield self.end("response.completed", completed_at=int(time.time()))
        else:
            self.next_calls = rewriter.mcp_calls

    async def _open_round(self, turn: Any) -> AsyncGenerator[list[JSON], None]:
        """A round's events: streamed from the upstream when the caller sees events (a stream, a background
        response someone may follow), else the whole answer's (cheaper than translating a stream)."""
        engine = self.loop.engine
        if self.ctx.stream or self.turn.request.get("background"):
            source: AsyncGenerator[list[JSON], None] = await engine.open_round(turn)
            return source
        return _one_batch(events_of(await engine.complete_round(turn)))

    async def _limit(self, round_no: int) -> list[JSON] | None:
        """The end of the response when a limit stops the loop before round ``round_no`` (None: go on)."""
        reason = None
        if round_no > self.limits.max_rounds:
            reason = "max_tool_rounds"
        elif time.monotonic() > self.deadline:
            reason = "max_tool_time"
        elif round_no > 1:
            try:
                await self.ctx.next_call(self._next_body())
            except GatewayError as exc:  # a budget, a guardrail or a rate limit refused the next round
                reason = (
                    "budget"
                    if isinstance(exc, BudgetExceeded)
                    else "rate_limit"
                    if isinstance(exc, RateLimited)
                    else "policy"
                )
                details = {"reason": reason, "message": exc.message[:300]}
                return self.end("response.incomplete", incomplete_details=details)
        if reason is None:
            return None
        return self.end("response.incomplete", incomplete_details={"reason": reason})

    def _next_body(self) -> JSON:
        """What the next round sends anew (for the per-call hooks): the tool outputs since the last call."""
        fed = [item for item in mcp_items.plain_items(self.last_calls) if item.get("type") == "function_call_output"]
        return {**{k: v for k, v in self.turn.request.items() if k != "input"}, "input": fed}

    def _round_turn(self, round_no: int) -> Any:
        """The engine's turn for one round: the MCP tools as functions, and every item of the earlier rounds."""
        request = dict(self.turn.request)
        client = [t for t in request.get("tools") or [] if t.get("type") not in _GATEWAY_TOOLS]
        request["tools"] = client + self.offered
        choice = request.get("tool_choice")
        if round_no > 1 or (isinstance(choice, dict) and choice.get("type") == "mcp"):
            if choice is not None and choice != "none":
                request["tool_choice"] = "auto"  # a forced call is made once, not every round
        if not request["tools"]:
            request.pop("tools", None)
            request.pop("tool_choice", None)
        upstream = self.turn.upstream_input + mcp_items.plain_items(self.output)
        return replace(self.turn, request=request, upstream_input=upstream)

    # --- tools ---
    async def _list_tools(self) -> AsyncIterator[list[JSON]]:
        """List each server's tools (``mcp_list_tools``) unless the conversation has, and offer them as functions."""
        known = mcp_items.listed_tools(self.turn.history + self.turn.input_items)
        for server in self.ctx.tools:
            if not server.listed:  # the operator's tool, declared with its schema: nothing to list
                self._offer(server, list(await server.list_tools()))
                continue
            tools: list[Any] | None = known.get(server.label)
            if tools is None:
                item = mcp_items.list_tools_item(mcp_items.new_item_id("mcp_list_tools"), server.label, [])
                yield self.item_events(item, ("response.mcp_list_tools.in_progress", {}))
                outcome = "completed"
                try:
                    tools = item["tools"] = list(await server.list_tools())
                except (TimeoutError, GatewayError, OSError) as exc:
                    item["error"] = str(getattr(exc, "message", exc))[:300] or type(exc).__name__
                    outcome = "failed"
                index = self.output.index(item)
                yield [
                    self.event(f"response.mcp_list_tools.{outcome}", output_index=index, item_id=item["id"]),
                    self.done(item),
                ]
            self._offer(server, [t for t in tools or () if server.allows_tool(str(t.get("name") or ""))])

    def _offer(self, server: ToolServer, tools: list[Any]) -> None:
        """The server's tools as function tools, named so that a call finds its way back (``function_name``)."""
        for tool in tools:
            name = str(tool.get("name") or "")
            if not name or len(self.offered) >= _MAX_TOOLS_OFFERED:
                continue
            fname = function_name(server.label, name)
            self.tools[fname] = _Tool(server, name)
            schema = tool.get("input_schema") if isinstance(tool.get("input_schema"), dict) else {"type": "object"}
            described = {"type": "function", "name": fname, "parameters": schema}
            if isinstance(tool.get("description"), str):
                described["description"] = tool["description"][:1024]
            self.offered.append(described)

    def _approved_calls(self) -> list[JSON]:
        """The calls the request approves (``mcp_approval_response`` items naming a request of the conversation):
        each becomes an ``mcp_call`` to run before the first round; a refused one is answered as such."""
        requests = {
            item.get("id"): item
            for item in self.turn.history
            if isinstance(item, dict) and item.get("type") == "mcp_approval_request"
        }
        calls: list[JSON] = []
        for answer in self.turn.input_items:
            if not (isinstance(answer, dict) and answer.get("type") == "mcp_approval_response"):
                continue
            asked = requests.get(answer.get("approval_request_id"))
            if asked is None:
                continue
            item = mcp_items.call_item(
                mcp_items.new_item_id("mcp_call"), asked["server_label"], asked["name"], asked["arguments"]
            )
            item["approval_request_id"] = asked["id"]
            if not answer.get("approve"):
                item.update(status="failed", error="The call was not approved.")
            calls.append(item)
        return calls

    async def _execute(self, calls: list[JSON]) -> AsyncIterator[list[JSON]]:
        """Announce the calls (those the rewriter has not announced yet), run them concurrently, and report each."""
        fresh = [item for item in calls if all(item is not placed for placed in self.output)]
        announced: list[JSON] = []
        for item in fresh:
            announced += self.item_events(item, ("response.mcp_call.in_progress", {}))
        if announced:
            yield announced
        runnable = [item for item in calls if item.get("status") == "in_progress"]
        if self.turn.request.get("max_tool_calls") is not None:
            room = max(int(self.turn.request["max_tool_calls"]) - self.calls_made, 0)
            for item in runnable[room:]:
                item.update(status="failed", error="The response's max_tool_calls was reached.")
            runnable = runnable[:room]
        self.calls_made += len(runnable)
        if self.loop.metrics is not None and runnable:
            self.loop.metrics.tool_round(self.ctx)
        trace = self.ctx.trace
        await asyncio.gather(
            *(self._call(item) if trace is None else trace.tool(item, self._call(item)) for item in runnable)
        )
        self.last_calls = list(calls)
        batch = []
        for item in calls:
            kind = "response.mcp_call.failed" if item.get("error") else "response.mcp_call.completed"
            batch += [self.event(kind, output_index=self.output.index(item), item_id=item["id"]), self.done(item)]
        yield batch

    async def _call(self, item: JSON) -> None:
        tool = self.tools.get(function_name(item["server_label"], item["name"]))
        started = time.monotonic()
        if tool is None:
            item.update(
                status="failed", error=f"No tool {item['name'][:100]!r} on server {item['server_label'][:100]!r}."
            )
        else:
            try:
                arguments = orjson.loads(item.get("arguments") or "{}")
            except orjson.JSONDecodeError:
                arguments = None
            if not isinstance(arguments, dict):
                item.update(status="failed", error="The arguments are not a JSON object.")
            else:
                timeout = max(0.0, min(self.limits.call_timeout, self.deadline - time.monotonic()))
                result = await tool.server.call(tool.name, arguments, timeout, item["id"])
                item.update(output=result.output, error=result.error, status="failed" if result.error else "completed")
                if self.loop.metrics is not None:  # a request's own server is named by the caller: one label for all
                    server = tool.server.label if tool.server.declared else "request"
                    self.loop.metrics.tool_call(server, tool.name, result.error is None)
        self.ctx.tool_calls.append(
            {
                "server": item["server_label"][:100],
                "tool": item["name"][:100],
                "arguments": str(item.get("arguments") or "")[:2000],
                "ms": int((time.monotonic() - started) * 1000),
                "outcome": "error" if item.get("error") else "ok",
            }
        )


async def _one_batch(events: list[JSON]) -> AsyncGenerator[list[JSON], None]:
    yield events


class _RoundEvents:
    """One round's events re-homed into the response: renumbered, placed after the items already out, the
    round's start and end held back; calls to MCP tools become ``mcp_call`` (or ``mcp_approval_request``) items
    announced once their arguments are whole, a client function's call passes as it is."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.base = len(run.output)
        self.final: JSON | None = None
        self.held: dict[str, list[JSON]] = {}  # function call item id -> its events, until it is done
        self.mcp_calls: list[JSON] = []
        self.approvals: list[JSON] = []
        self.client_calls: list[JSON] = []
        self.items: dict[int, JSON] = {}  # the round's output index -> the item placed in the response

    def feed(self, batch: list[JSON]) -> list[JSON]:
        out: list[JSON] = []
        for event in batch:
            kind = event.get("type")
            if kind in ("response.created", "response.in_progress"):
                continue
            if kind in TERMINAL_EVENTS:
                self.final = event.get("response") or {}
                continue
            item = event.get("item") if isinstance(event.get("item"), dict) else None
            item_id = str((item or {}).get("id") or event.get("item_id") or "")
            if kind == "response.output_item.added" and item is not None and item.get("type") == "function_call":
                self.held[item_id] = [event]
                continue
            if item_id in self.held:
                self.held[item_id].append(event)
                if kind == "response.output_item.done" and item is not None:
                    out += self._function_call(item, self.held.pop(item_id))
                continue
            out.append(self._placed(event))
        return out

    def _placed(self, event: JSON) -> JSON:
        run = self.run
        if "output_index" in event:
            index = int(event["output_index"])
            if event.get("type") == "response.output_item.added":
                placed = dict(event["item"])
                self.items[index] = placed
                run.output.append(placed)
            elif event.get("type") == "response.output_item.done" and index in self.items:
                self.items[index].clear()
                self.items[index].update(event["item"])
            event = {
                **event,
                "output_index": run.output.index(self.items[index]) if index in self.items else self.base + index,
            }
        return self._renumber(event)

    def _renumber(self, event: JSON) -> JSON:
        run = self.run
        event = {**event, "sequence_number": run.seq}
        run.seq += 1
        return event

    def _function_call(self, item: JSON, events: list[JSON]) -> list[JSON]:
        run = self.run
        tool = run.tools.get(str(item.get("name") or ""))
        if tool is None:  # the client's own function: as it came
            self.client_calls.append(item)
            return [self._placed(event) for event in events]
        arguments = str(item.get("arguments")) if isinstance(item.get("arguments"), str) else "{}"
        label = tool.server.label
        if tool.server.needs_approval(tool.name):
            asked = mcp_items.approval_item(mcp_items.new_item_id("mcp_approval_request"), label, tool.name, arguments)
            self.approvals.append(asked)
            out = run.item_events(asked)
            return [*out, run.done(asked)]
        call = mcp_items.call_item(mcp_items.new_item_id("mcp_call"), label, tool.name, "")
        out = run.item_events(call, ("response.mcp_call.in_progress", {}))
        call["arguments"] = arguments
        index = run.output.index(call)
        out.append(
            run.event("response.mcp_call_arguments.delta", output_index=index, item_id=call["id"], delta=arguments)
        )
        out.append(
            run.event("response.mcp_call_arguments.done", output_index=index, item_id=call["id"], arguments=arguments)
        )
        self.mcp_calls.append(call)
        return out

    def finish(self) -> list[JSON]:
        """The response's end after its last round: the round's own terminal status on every item so far."""
        run = self.run
        for call in self.mcp_calls:  # announced, never run: the response ended first
            if call.get("status") == "in_progress":
                call["status"] = "incomplete"
        final = self.final or {}
        status = final.get("status") or "failed"
        end = {k: final[k] for k in ("incomplete_details", "error", "completed_at") if k in final}
        if self.final is None:
            end["error"] = {"code": "server_error", "message": "The upstream stream ended before completion."}
            status = "failed"
        return run.end(f"response.{status}", **end)
