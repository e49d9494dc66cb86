"""The in-flight registry a shutdown stops: only interruptible work is cut (as ShuttingDown), a request in its
policies' store work is refused at the next interruptible step instead, cleanup is never cut and is waited
for, within the grace period."""

import asyncio

import pytest

from gateway.errors import ShuttingDown
from gateway.inflight import InFlight


async def request(inflight: InFlight, entered: asyncio.Event, gate: asyncio.Event, where: str) -> str:
    """A tracked request that waits on ``gate`` ``where`` (before: outside interruptible(); upstream: inside);
    returns how it ended."""
    with inflight.track():
        if where == "before":
            entered.set()
            await gate.wait()
        try:
            with inflight.interruptible():
                entered.set()
                await gate.wait()
        except ShuttingDown:
            return "stopped"
        return "finished"


async def test_interruptible_work_is_cut_as_shutting_down_and_waited_for():
    inflight, entered, gate = InFlight(), asyncio.Event(), asyncio.Event()
    task = asyncio.ensure_future(request(inflight, entered, gate, "upstream"))
    await entered.wait()
    assert await inflight.stop(grace=30) == 0  # returns once the request has ended
    assert task.done() and task.result() == "stopped"
    assert not task.cancelling()  # the cancellation was taken back: the request's cleanup can await freely


async def test_a_request_in_its_policies_store_work_is_refused_at_its_next_step():
    inflight, entered, gate = InFlight(), asyncio.Event(), asyncio.Event()
    task = asyncio.ensure_future(request(inflight, entered, gate, "before"))
    await entered.wait()
    stopping = asyncio.ensure_future(inflight.stop(grace=30))
    await asyncio.sleep(0)  # the stop has run up to its wait
    assert inflight.stopping and inflight.requests  # (so the next line can fail: the stop did look at the request)
    assert not task.done()  # not cut while it waits outside interruptible()
    gate.set()
    assert await stopping == 0 and task.result() == "stopped"


async def test_cleanup_is_never_cut_and_the_wait_is_bounded():
    inflight, cleaning, release = InFlight(), asyncio.Event(), asyncio.Event()

    async def cleaning_up() -> None:
        with inflight.track():
            cleaning.set()
            await release.wait()  # an after() hook's store round trip, say

    task = asyncio.ensure_future(cleaning_up())
    await cleaning.wait()
    assert await inflight.stop(grace=0.05) == 1  # still running when the grace ran out...
    assert not task.done() and not task.cancelling()  # ... and left alone
    release.set()
    await task
    assert await inflight.stop(grace=30) == 0


async def test_a_task_cancelled_by_someone_else_is_not_cancelled_again():
    inflight, entered, gate, cleaned = InFlight(), asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def cancelled_elsewhere() -> None:
        with inflight.track(), inflight.interruptible():
            entered.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                await gate.wait()  # its cleanup (closing the upstream, say), which a second cancellation would cut
                cleaned.set()
                raise

    task = asyncio.ensure_future(cancelled_elsewhere())
    await entered.wait()
    task.cancel()  # uvicorn's graceful timeout
    await asyncio.sleep(0)
    stopping = asyncio.ensure_future(inflight.stop(grace=30))
    await asyncio.sleep(0)
    gate.set()
    assert await stopping == 0 and cleaned.is_set()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_new_requests_are_refused_once_stopping_and_untracked_work_is_untouched():
    inflight = InFlight()
    assert await inflight.stop(grace=1) == 0
    with pytest.raises(ShuttingDown) as refused:
        with inflight.track():
            pass
    assert refused.value.status_code == 503 and refused.value.headers == {"Retry-After": "1", "Connection": "close"}
    with inflight.interruptible():  # a task that was never tracked: nothing to stop
        assert not inflight.interrupted()
