"""Background work a replica runs: which jobs run here, the proof that this replica is alive, and cancelling a
job from any replica. Background responses use it; skill executions will.

- ``instance`` names this replica; a job's record names its owner with it. ``heartbeat()`` keeps
  ``instance:<id>`` fresh (it expires after three missed beats), so whoever reads a job whose owner crashed can
  tell (``owner_alive``) and end it as failed instead of leaving it running forever.
- ``started(job_id)`` / ``ended(job_id)`` bracket a job's task here; ``cancel_here`` cancels it if it runs here,
  and ``cancelled(job_id)`` tells the job's own cancellation handler that the API asked (not a shutdown).
- ``request_cancel`` leaves the signal (``cancel:<id>``) for the replica that runs the job, whose
  ``watch_cancel`` polls for it.
- ``hand_back()``, once a draining replica's jobs have ended (or been stopped), deletes its liveness key: a job
  whose end it could not record is then repaired by its next reader at once, not three beats later.
"""

import asyncio
import os
from typing import Any

from gateway.store import Store

CANCEL_POLL_SECONDS = 0.5


def cancel_key(job_id: str) -> str:
    return f"cancel:{job_id}"


class Jobs:
    def __init__(self, store: Store, heartbeat_seconds: float) -> None:
        self.store = store
        self.heartbeat_seconds = heartbeat_seconds
        self.instance = os.urandom(8).hex()
        self._tasks: dict[str, asyncio.Task[Any]] = {}  # jobs running in this process, by id
        self._cancelling: set[str] = set()  # ids whose task was cancelled through the API

    def started(self, job_id: str) -> None:
        """The current task runs ``job_id`` until ``ended``."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks[job_id] = task

    def ended(self, job_id: str) -> None:
        self._tasks.pop(job_id, None)
        self._cancelling.discard(job_id)

    def cancelled(self, job_id: str) -> bool:
        """Whether the job's cancellation came through the API (else it is the gateway stopping)."""
        return job_id in self._cancelling

    def cancel_here(self, job_id: str) -> bool:
        """Cancel the job if it runs in this process; False when it does not."""
        task = self._tasks.get(job_id)
        if task is None:
            return False
        self._cancelling.add(job_id)
        task.cancel()
        return True

    async def request_cancel(self, job_id: str) -> None:
        """Ask whichever replica runs the job to cancel it."""
        await self.store.set(cancel_key(job_id), b"1", 3600)

    async def watch_cancel(self, job_id: str) -> None:
        """Until cancelled itself: a cancel asked through another replica reaches the job here."""
        while True:
            await asyncio.sleep(CANCEL_POLL_SECONDS)
            if await self.store.get(cancel_key(job_id)) is not None:
                self.cancel_here(job_id)
                return

    async def heartbeat(self) -> None:
        """Keep this instance's liveness key fresh while it runs."""
        while True:
            await self.store.set(self.instance_key, b"1", self.heartbeat_seconds * 3)
            await asyncio.sleep(self.heartbeat_seconds)

    async def owner_alive(self, owner: str) -> bool:
        """Whether the replica named ``owner`` proved it was alive within the last three beats."""
        return owner == self.instance or await self.store.get(f"instance:{owner}") is not None

    @property
    def instance_key(self) -> str:
        return f"instance:{self.instance}"

    async def hand_back(self) -> None:
        """This replica is going: it no longer claims to be alive (the heartbeat must be stopped first)."""
        await self.store.delete(self.instance_key)
