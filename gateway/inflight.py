"""The requests one app is serving, so that shutting down lets them finish, and ends cleanly those that do not.

A request is tracked from the start of its policy chain to the end of its ``after`` hooks. ``drain`` (called at
SIGTERM by ``python -m gateway``) refuses new requests and waits, for a grace period, for the tracked ones to
finish by themselves; then it ``stop``s what is left. ``stop`` (also called by the app's lifespan shutdown) cancels
every tracked request that is inside ``interruptible()`` (its upstream call and relay), where the cancellation
surfaces as ``ShuttingDown``: a stream ends with its error event (Chat Completions) or ``response.failed``
(Responses), an answer not yet started is a 503, and the chain's ``after`` hooks then release budget holds and
idempotency claims as after any failure. A request still in its ``before`` hooks is refused as it enters
``interruptible()`` (never cut inside a store round trip), one in its ``after`` hooks is left to finish, and a new
request is refused with 503 (from the start of the drain). ``stop`` waits for all of them, bounded by a cleanup
period, while the store is still open.
"""

import asyncio
from types import TracebackType
from typing import Any

from gateway.errors import ShuttingDown


class _Request:
    __slots__ = ("task", "depth", "stop", "cancelled")

    def __init__(self, task: "asyncio.Task[Any]") -> None:
        self.task = task
        self.depth = 0  # how many interruptible() blocks it is inside
        self.stop = False  # shutdown asked it to stop
        self.cancelled = False  # ... by cancelling it, and the cancellation is not yet converted


class _Tracked:
    __slots__ = ("inflight", "task")

    def __init__(self, inflight: "InFlight") -> None:
        self.inflight = inflight

    def __enter__(self) -> None:
        if self.inflight.stopping:
            raise ShuttingDown()
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.inflight.requests[task] = _Request(task)
        self.inflight.idle.clear()

    def __exit__(self, *exc: object) -> None:
        requests = self.inflight.requests
        requests.pop(self.task, None)
        if not requests:
            self.inflight.idle.set()


class _Interruptible:
    __slots__ = ("request",)

    def __init__(self, request: _Request | None) -> None:
        self.request = request

    def __enter__(self) -> None:
        request = self.request
        if request is not None:
            if request.stop:
                raise ShuttingDown()
            request.depth += 1

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        request = self.request
        if request is None:
            return
        request.depth -= 1
        if kind is asyncio.CancelledError and request.cancelled:
            request.cancelled = False  # converted once: a later cancellation (a disconnect) stays one
            request.task.uncancel()
            raise ShuttingDown() from None


class InFlight:
    """The app's tracked requests; see the module docstring."""

    def __init__(self) -> None:
        self.requests: dict[asyncio.Task[Any], _Request] = {}
        self.stopping = False
        self.idle = asyncio.Event()
        self.idle.set()

    def __len__(self) -> int:
        """How many requests are tracked now."""
        return len(self.requests)

    def track(self) -> _Tracked:
        """``with``-block around one request's policy chain; refuses it (503) once stopping."""
        return _Tracked(self)

    def interruptible(self) -> _Interruptible:
        """``with``-block around work a shutdown may cut (upstream calls, relaying): its cancellation leaves
        the block as ``ShuttingDown``; entered after the stop was asked, it raises ``ShuttingDown`` at once.
        Nothing happens for an untracked task."""
        task = asyncio.current_task()
        return _Interruptible(self.requests.get(task) if task is not None else None)

    def interrupted(self) -> bool:
        """Whether the current request was asked to stop by a shutdown."""
        task = asyncio.current_task()
        request = self.requests.get(task) if task is not None else None
        return request is not None and request.stop

    async def drain(self, grace: float, cleanup: float) -> int:
        """Refuse new requests and let the tracked ones finish, for at most ``grace`` seconds; then ``stop``
        what is left, waiting at most ``cleanup`` seconds for their ends. Returns how many were still running."""
        self.stopping = True
        await self._idle(grace)
        return await self.stop(cleanup)

    async def _idle(self, seconds: float) -> None:
        if self.requests:
            try:
                async with asyncio.timeout(seconds):
                    await self.idle.wait()
            except TimeoutError:
                pass

    async def stop(self, grace: float) -> int:
        """Refuse new requests, stop the tracked ones and wait (at most ``grace`` seconds) until each has ended
        and run its ``after`` hooks. Returns how many were still running then. Safe to call again."""
        self.stopping = True
        for request in list(self.requests.values()):
            if request.stop:
                continue
            request.stop = True
            # a task cancelled already (uvicorn's own timeout) is running its cleanup: never cut that short
            if request.depth > 0 and not request.task.done() and not request.task.cancelling():
                request.cancelled = True
                request.task.cancel()
        await self._idle(grace)
        return len(self.requests)
