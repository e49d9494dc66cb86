"""The jobs module on real stores: a job runs in one replica's process, is cancelled there or through the store
from another replica, and a replica's liveness is its heartbeat."""

import asyncio
import uuid

import pytest

from gateway.jobs import Jobs
from gateway.store import open_store


@pytest.fixture(params=["memory", "redis"])
def store(request, redis_url, redis_prefix):
    url = redis_url if request.param == "redis" else None
    return open_store(url, prefix=f"{redis_prefix}{uuid.uuid4().hex}:")


async def test_a_job_cancelled_here_knows_it_was_the_api(store):
    jobs = Jobs(store, heartbeat_seconds=5)
    seen: list[bool] = []

    async def job() -> None:
        jobs.started("j1")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append(jobs.cancelled("j1"))
            raise
        finally:
            jobs.ended("j1")

    task = asyncio.ensure_future(job())
    await asyncio.sleep(0)
    assert jobs.cancel_here("j1") and not jobs.cancel_here("unknown")
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == [True] and not jobs.cancelled("j1") and not jobs.cancel_here("j1")  # ended: forgotten
    await store.close()


async def test_another_replica_cancels_through_the_store(store):
    here, there = Jobs(store, heartbeat_seconds=5), Jobs(store, heartbeat_seconds=5)

    async def job() -> None:
        here.started("j2")
        watcher = asyncio.ensure_future(here.watch_cancel("j2"))
        try:
            await asyncio.Event().wait()
        finally:
            watcher.cancel()
            here.ended("j2")

    task = asyncio.ensure_future(job())
    await asyncio.sleep(0)
    assert not there.cancel_here("j2")  # it does not run there
    await there.request_cancel("j2")
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=30)
    await store.close()


async def test_a_replica_is_alive_while_it_beats(store):
    alive, silent = Jobs(store, heartbeat_seconds=5), Jobs(store, heartbeat_seconds=5)
    beat = asyncio.ensure_future(alive.heartbeat())
    try:
        for _ in range(1000):  # the first beat is written at once; wait for it, bounded
            if await silent.owner_alive(alive.instance):
                break
            await asyncio.sleep(0.01)
        assert await silent.owner_alive(alive.instance)
        assert not await alive.owner_alive(silent.instance)  # never beat
        assert await silent.owner_alive(silent.instance)  # itself, without asking the store
    finally:
        beat.cancel()
        await store.close()
