"""Stopping upstream work the moment the client goes away, and closing async iterators on every path."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.types import Receive

from gateway.context import RequestContext


async def aclose(iterator: Any) -> None:
    """Close an async generator (or anything with ``aclose``) so its cleanup runs now, not at GC time."""
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


class cancel_on_disconnect:
    """While active, a client disconnect cancels the current task (and so the upstream read); the
    cancellation is absorbed on exit and the request's outcome becomes ``disconnected``. Set the yielded
    event before the last send, so a disconnect after it changes nothing.

    The watcher is not cancelled on exit: it ends by itself, as ``receive`` answers ``http.disconnect`` once the
    response is complete (or the client is gone), and does nothing then. A cancelled watcher left a cycle of
    garbage per request (the CancelledError's traceback, its frames, the task, this object and the request's
    context), which only the cyclic collector could free: measured, half of the gateway's collections."""

    def __init__(self, receive: Receive, ctx: RequestContext) -> None:
        self.receive = receive
        self.ctx = ctx
        self.finished = asyncio.Event()
        self.disconnected = False

    async def _watch(self, task: asyncio.Task[Any]) -> None:
        await _disconnected(self.receive)
        if not self.finished.is_set():
            self.disconnected = True
            task.cancel()

    async def __aenter__(self) -> asyncio.Event:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        watcher = asyncio.ensure_future(self._watch(task))
        _WATCHERS.add(watcher)  # held until it ends (the loop keeps only weak references to tasks)
        watcher.add_done_callback(_WATCHERS.discard)
        return self.finished

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self.finished.set()  # the block is left: a disconnect from now on is not this block's
        if self.disconnected and exc_type is asyncio.CancelledError:
            self._task.uncancel()
            if self.ctx.outcome == "pending":  # an answer a policy already ended (a guardrail) keeps its outcome
                self.ctx.outcome = "disconnected"
            return True
        return False


_WATCHERS: set[asyncio.Future[None]] = set()


async def until_disconnect(frames: AsyncIterator[bytes], receive: Receive) -> AsyncIterator[bytes]:
    """``frames`` until the client goes away: a follower of a stream (a replay, a retry attached to a stream in
    flight) whose client left stops reading the log at once, instead of when the stream ends."""
    gone = asyncio.ensure_future(_disconnected(receive))
    step: asyncio.Future[bytes] | None = None
    try:
        while True:
            step = asyncio.ensure_future(anext(frames))
            await asyncio.wait((step, gone), return_when=asyncio.FIRST_COMPLETED)
            if not step.done():  # the client left while the stream had nothing new
                return
            try:
                frame = step.result()
            except StopAsyncIteration:
                return
            yield frame
    finally:
        gone.cancel()
        if step is not None and not step.done():  # the client left, or this task was stopped (a shutdown)
            step.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await step  # the read must have ended before the source can be closed
        await aclose(frames)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
