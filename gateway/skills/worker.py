"""The execution worker: reads the queue (a consumer group on ``executions:queue``), runs each execution
``queued → running → succeeded | failed | cancelled`` (``gateway.skills.runner``), and takes over the executions
of workers that died.

- Each gateway process runs one (``GATEWAY_EXECUTIONS_WORKER``, on by default); ``python -m gateway worker``
  runs workers as processes of their own. They are consumers of one group, named by their replica
  (``Jobs.instance``), whose liveness key says whether they are alive.
- An entry is acknowledged once its execution has ended (or was found ended). An execution is started by
  moving its lease ``queued → running|<me>|1``, a compare-and-set: two workers reading the same entry (a
  redelivery) never both run it.
- Every ``claim_idle`` seconds a worker claims the entries pending longer than that (``XAUTOCLAIM``). An
  execution whose owner is still alive is left to it; one whose owner is dead is run again (a new attempt,
  its lease moved from the dead owner's) up to ``max_attempts``, then failed with ``worker_lost``: never stuck.
  Only the lease's holder can end it, so an execution ends at most once.
- A cancel through the API cancels the execution's task here or, from another replica, through
  ``Jobs.request_cancel``. At shutdown the worker stops reading, gives its executions the grace, then stops the
  rest without ending them: their entries stay pending and another worker takes them over.
"""

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson

from gateway.errors import StoreUnavailable
from gateway.jobs import cancel_key
from gateway.skills.records import GROUP, QUEUE, TERMINAL, Execution, iso_now
from gateway.skills.runner import Failed, Totals, failure_fields

if TYPE_CHECKING:
    from gateway.runtime import Gateway

log = logging.getLogger("gateway.skills")
READ_BLOCK_SECONDS = 1.0
OUTPUTS_PATH = "outputs/outputs.json"  # the outputs document, as an artifact


class _Interrupted(Exception):
    """The gateway is stopping under the execution: it is left running, for another worker to take over."""


class ExecutionWorker:
    def __init__(self, gw: "Gateway") -> None:
        s = gw.settings
        self.gw = gw
        self.records = gw.executions
        self.runner = gw.runner
        self.concurrency = s.executions_concurrency
        self.max_attempts = s.executions_max_attempts
        self.claim_idle = s.executions_claim_idle_seconds
        self.running: dict[str, asyncio.Task[None]] = {}  # execution id -> its task here
        self._loop: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(self.concurrency)

    @property
    def me(self) -> str:
        return self.gw.jobs.instance

    def start(self) -> None:
        self._loop = asyncio.ensure_future(self._consume())

    async def stop(self, grace: float = 0.0) -> None:
        """Stop reading; the executions running here get ``grace`` seconds, the rest are handed back."""
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        tasks = list(self.running.values())
        if tasks and grace > 0:
            await asyncio.wait(tasks, timeout=grace)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _consume(self) -> None:
        store = self.gw.store
        next_claim = time.monotonic() + self.claim_idle
        while True:
            try:
                if time.monotonic() >= next_claim:
                    next_claim = time.monotonic() + self.claim_idle / 2
                    for entry_id, fields in await store.stream_claim(QUEUE, GROUP, self.me, self.claim_idle, 16):
                        await self._dispatch(entry_id, fields)
                await self._slots.acquire()
                self._slots.release()
                free = self.concurrency - len(self.running)
                block = min(READ_BLOCK_SECONDS, max(0.0, next_claim - time.monotonic()))
                for entry_id, fields in await store.stream_read(QUEUE, GROUP, self.me, max(1, free), block):
                    await self._dispatch(entry_id, fields)
            except StoreUnavailable as exc:
                log.warning("execution worker: the store is unreachable (%s); retrying", exc.message)
                await asyncio.sleep(1.0)
            except Exception:  # a defect must not stop the worker for good
                log.exception("execution worker: reading the queue failed; retrying")
                await asyncio.sleep(1.0)

    async def _dispatch(self, entry_id: str, fields: dict[str, bytes]) -> None:
        execution_id = fields.get("id", b"").decode()
        if execution_id in self.running:
            return  # ours, running: an entry claimed back
        await self._slots.acquire()
        task = asyncio.ensure_future(self._handle(entry_id, execution_id))
        self.running[execution_id] = task
        task.add_done_callback(lambda _: self._done(execution_id))

    def _done(self, execution_id: str) -> None:
        self.running.pop(execution_id, None)
        self._slots.release()

    async def _handle(self, entry_id: str, execution_id: str) -> None:
        try:
            lease = await self._take(execution_id)
            if lease is None:
                await self.gw.store.stream_ack(QUEUE, GROUP, entry_id)
            elif lease:
                if await self._execute(execution_id, lease):
                    await self.gw.store.stream_ack(QUEUE, GROUP, entry_id)
        except StoreUnavailable as exc:  # the entry stays pending: taken over later
            log.warning("execution %s: the store is unreachable (%s)", execution_id[:64], exc.message)
        except Exception:
            log.exception("execution %s: the worker failed", execution_id[:64])

    async def _take(self, execution_id: str) -> str | None:
        """The lease this worker now holds on the execution; "" when another live worker holds it (the entry
        stays pending), None when there is nothing to run (ended, expired, or failed here as lost)."""
        records = self.records
        for _ in range(3):  # the lease moved under us: look again
            lease = await records.lease(execution_id)
            execution = await records.load(execution_id)
            if lease is None or lease in TERMINAL or execution is None:
                return None
            attempt = 0
            if lease.startswith("running|"):
                _, owner, number = lease.split("|")
                if owner != self.me and await self.gw.jobs.owner_alive(owner):
                    return ""
                attempt = int(number)
                if attempt >= self.max_attempts:
                    await self._lost(execution, lease)
                    return None
            if await self.gw.store.get(cancel_key(execution_id)) is not None:  # asked while no worker ran it
                await self._end(execution, lease, "cancelled", failure_reason="cancelled")
                return None
            taken = f"running|{self.me}|{attempt + 1}"
            execution.data.update(state="running", started_at=execution.data["started_at"] or iso_now())
            execution.run["attempt"] = attempt + 1
            if await records.transition(execution, lease, taken):
                await records.append_event(execution_id, "execution.running", attempt=attempt + 1)
                return taken
        return ""

    async def _lost(self, execution: Execution, lease: str) -> None:
        message = f"The worker running it stopped {self.max_attempts} time(s); it is not run again."
        await self._end(execution, lease, "failed", failure_reason="worker_lost", error={"message": message})

    async def _end(self, execution: Execution, lease: str, state: str, **fields: Any) -> bool:
        execution.data.update(state=state, finished_at=iso_now(), **fields)
        if not await self.records.transition(execution, lease, state):
            return False  # no longer ours: another worker took it over
        await self.records.append_event(execution.id, f"execution.{state}", execution=execution.data)
        return True

    async def _execute(self, execution_id: str, lease: str) -> bool:
        """Run the execution under ``lease`` and end it; False when it was left running (a shutdown)."""
        jobs = self.gw.jobs
        execution = await self.records.load(execution_id)
        if execution is None:
            return True
        jobs.started(execution_id)
        watcher = asyncio.ensure_future(jobs.watch_cancel(execution_id))
        totals, started = Totals(), time.monotonic()
        try:
            state, fields = await self._traced(execution, totals)
        except _Interrupted:
            return False
        finally:
            watcher.cancel()
            jobs.ended(execution_id)
        fields["resource_usage"] = totals.usage(int((time.monotonic() - started) * 1000))
        fields["sub_executions"] = totals.subs
        fields.setdefault("artifacts", [*execution.data["artifacts"], *totals.artifacts])  # a failed run's too
        return await self._end(execution, lease, state, **fields)

    async def _traced(self, execution: Execution, totals: Totals) -> tuple[str, dict[str, Any]]:
        """The run, in a trace of its own when traces are on (its id is the record's ``langfuse_trace_id``)."""
        tracing = self.gw.tracing
        if tracing is None:
            return await self._outcome(execution, totals)
        data = execution.data
        attributes = {"gateway.execution.id": execution.id, "gateway.skill": data["skill_slug"]}
        attributes.update({"gateway.skill.version": data["skill_version"], "gateway.space.id": data["space_id"]})
        with tracing.job(f"execution {data['skill_slug']}", attributes) as trace:
            data["langfuse_trace_id"] = trace.trace_id
            return await self._outcome(execution, totals)

    async def _outcome(self, execution: Execution, totals: Totals) -> tuple[str, dict[str, Any]]:
        data = execution.data
        skill = await self.gw.skills.find(data["space_id"], data["skill_slug"], data["skill_version"])
        if skill is None:
            error = {"code": "skill_unavailable", "message": "The space no longer has this skill version."}
            return "failed", {"failure_reason": "skill_unavailable", "error": error}

        async def emit(kind: str, **event: Any) -> None:
            await self.records.append_event(execution.id, kind, **event)

        try:
            async with asyncio.timeout(skill.limits.timeout_seconds):
                outputs = await self.runner.run(execution, skill, totals, emit)
            document = orjson.dumps(outputs, option=orjson.OPT_INDENT_2)
            artifact = await self.records.save_artifact(execution, OUTPUTS_PATH, "application/json", document)
            artifacts = [*data["artifacts"], *totals.artifacts, artifact]
            fields = {"outputs": outputs, "artifacts": artifacts, "sub_executions": totals.subs}
            return "succeeded", fields
        except asyncio.CancelledError:
            if not self.gw.jobs.cancelled(execution.id):
                raise  # the worker is stopping: left running, taken over by another
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            return "cancelled", {"failure_reason": "cancelled"}
        except Exception as exc:
            return self._failure(execution, skill, exc)

    def _failure(self, execution: Execution, skill: Any, exc: Exception) -> tuple[str, dict[str, Any]]:
        """How an execution that raised ends; raises what leaves it running (a shutdown, the store gone)."""
        if isinstance(exc, Failed) and self.gw.draining and exc.reason == "upstream_error":
            raise _Interrupted from None
        fields = failure_fields(exc, skill.limits.timeout_seconds)
        if fields is not None:
            return "failed", fields
        if isinstance(exc, StoreUnavailable):
            raise exc  # left running: taken over once the store is back
        log.exception("execution %s failed in the worker", execution.id, exc_info=exc)
        error = {"code": "internal_error", "message": "The worker hit an internal error."}
        return "failed", {"failure_reason": "internal_error", "error": error}
