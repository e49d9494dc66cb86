"""Execution records in the store, their lease, their event log and the queue they wait in.

- ``execution:<id>`` holds the record: ``data`` (the seed's execution object, every field) and ``run`` (what a
  worker needs and no caller sees: a reference to the key that started it, never the key; the model asked for).
- ``execution:<id>:lease`` says who may write it: ``queued``, ``running|<owner>|<attempt>``, or the terminal
  state. Every worker write is a compare-and-set on the lease (``transition``), so a worker that lost its
  execution (declared dead, then back) can neither overwrite it nor finish it: one execution ends at most once.
- ``execution:<id>:events`` is its event log (SSE ids are the entries' indexes).
- ``execution-index:<space id>`` lists a space's executions in creation order (the list route pages over it).
- ``executions:queue`` is the stream the workers' consumer group reads (``gateway.skills.worker``).

Creating an execution is one script: the record, its lease, its first event, the space index and the queue
entry together, so no execution is ever recorded without being queued.
"""

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.store import MemoryData, Store

JSON = dict[str, Any]
QUEUE = "executions:queue"
GROUP = "workers"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
# what the in-memory store may evict past its limit (an evicted execution reads as an expired one); the queue is not
EVICTABLE = ("execution:", "execution-index:", "artifact:")
QUEUE_MAX_LENGTH = 100_000  # entries kept in the stream (approximately): far more than are ever pending

# KEYS: record, lease, events, space index, queue, tool-call index; ARGV: record, TTL ms, id, first event, id,
# queue length, first lease (queued: the entry is queued), tool call id ('' for none)
_CREATE_LUA = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[7], 'PX', ARGV[2])
redis.call('RPUSH', KEYS[3], ARGV[4])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
redis.call('RPUSH', KEYS[4], ARGV[5])
redis.call('PEXPIRE', KEYS[4], ARGV[2])
if ARGV[7] == 'queued' then redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[6], '*', 'id', ARGV[3]) end
if ARGV[8] ~= '' then redis.call('SET', KEYS[6], ARGV[3], 'PX', ARGV[2]) end
return 1
"""
# KEYS: lease, record; ARGV: expected lease, new lease, record ('' keeps it), TTL ms. 1, or the lease there.
_TRANSITION_LUA = """
local current = redis.call('GET', KEYS[1])
if current ~= ARGV[1] then return current or false end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[4])
if ARGV[3] ~= '' then redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4]) end
return 1
"""


def _create_in_memory(data: MemoryData, keys: Sequence[str], args: Sequence[Any]) -> int:
    ttl = int(args[1]) / 1000
    data.put(keys[0], args[0], ttl)
    data.put(keys[1], args[6], ttl)
    for key, value in ((keys[2], args[3]), (keys[3], args[4])):
        log = data.get(key)
        if log is None:
            data.put(key, [value], ttl)
        else:
            log.append(value)
            data.expire(key, ttl)
            data.grew(key, [value])
    if args[6] == b"queued":
        data.stream(keys[4]).add({"id": args[2]}, int(args[5]))
    if args[7]:
        data.put(keys[5], args[2], ttl)
    return 1


def _transition_in_memory(data: MemoryData, keys: Sequence[str], args: Sequence[Any]) -> Any:
    current = data.get(keys[0])
    if current != args[0]:
        return current if current is not None else False
    ttl = int(args[3]) / 1000
    data.put(keys[0], args[1], ttl)
    if args[2]:
        data.put(keys[1], args[2], ttl)
    return 1


def iso_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_key(execution_id: str) -> str:
    return f"execution:{execution_id}"


def lease_key(execution_id: str) -> str:
    return f"execution:{execution_id}:lease"


def events_key(execution_id: str) -> str:
    return f"execution:{execution_id}:events"


def index_key(space_id: str) -> str:
    return f"execution-index:{space_id}"


def tool_call_key(space_id: str, tool_call_id: str) -> str:
    return f"execution:by-tool-call:{space_id}:{tool_call_id}"


def artifact_key(artifact_id: str) -> str:
    return f"artifact:{artifact_id}"


def new_execution(**fields: Any) -> dict[str, Any]:
    """The seed's execution object, every field present, queued."""
    data: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "tenant_id": None,
        "space_id": None,
        "principal_id": None,
        "skill_slug": None,
        "skill_version": None,
        "source": "standalone",
        "state": "queued",
        "parent_execution_id": None,
        "created_at": iso_now(),
        "started_at": None,
        "finished_at": None,
        "failure_reason": None,
        "resource_usage": {
            "input_tokens": 0,
            "output_tokens": 0,
            "cost_usd": "0.000000",
            "wallclock_ms": None,
            "iteration_count": 0,
        },
        "inputs": {},
        "outputs": None,
        "error": None,
        "artifacts": [],
        "sub_executions": [],
        "chat_thread_id": None,
        "chat_message_id": None,
        "chat_tool_call_id": None,
        "workspace_archive_id": None,
        "langfuse_trace_id": None,
        "idempotency_key": None,
    }
    data.update(fields)
    return data


@dataclass
class Execution:
    """One execution as stored: ``data`` is what callers see; ``run`` what the worker needs (``key_ref``: the
    catalogue's reference to the API key that started it, ``model``: the alias asked for, ``attempt``)."""

    data: dict[str, Any]
    run: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return str(self.data["id"])

    @property
    def state(self) -> str:
        return str(self.data["state"])

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def dumps(self) -> bytes:
        return orjson.dumps({"data": self.data, "run": self.run})

    @classmethod
    def loads(cls, raw: bytes) -> "Execution":
        stored = orjson.loads(raw)
        return cls(stored["data"], stored.get("run") or {})


def event(kind: str, **data: Any) -> bytes:
    return orjson.dumps({"event": kind, "at": time.time(), **data})


class ExecutionRecords:
    """The store side of executions (see the module docstring); ``ttl`` is how long they are kept."""

    def __init__(self, store: Store, ttl_seconds: int) -> None:
        self.store = store
        self.ttl = ttl_seconds
        self._create = store.script(_CREATE_LUA, _create_in_memory)
        self._transition = store.script(_TRANSITION_LUA, _transition_in_memory)

    async def create(self, execution: Execution, lease: str = "queued", tool_call_id: str | None = None) -> None:
        """Record the execution, its first event, list it in its space and queue it, atomically; a
        sub-execution starts ``running`` under its caller's lease instead, not queued, and is found by the
        tool call that started it."""
        eid = execution.id
        space_id = execution.data["space_id"]
        call_key = tool_call_key(space_id, tool_call_id or "")
        keys = [record_key(eid), lease_key(eid), events_key(eid), index_key(space_id), QUEUE, call_key]
        first = event(f"execution.{execution.state}", execution=execution.data)
        ident = eid.encode()
        args = [execution.dumps(), self.ttl * 1000, ident, first, ident, QUEUE_MAX_LENGTH, lease.encode()]
        await self._create(keys, [*args, (tool_call_id or "").encode()])

    async def load(
        self, execution_id: str, tenant_id: str | None = None, space_id: str | None = None
    ) -> Execution | None:
        """The execution, or None when it does not exist or belongs to another tenant or space."""
        raw = await self.store.get(record_key(execution_id))
        if raw is None:
            return None
        execution = Execution.loads(raw)
        data = execution.data
        if (tenant_id is not None and data["tenant_id"] != tenant_id) or (
            space_id is not None and data["space_id"] != space_id
        ):
            return None
        return execution

    async def lease(self, execution_id: str) -> str | None:
        raw = await self.store.get(lease_key(execution_id))
        return None if raw is None else raw.decode()

    async def transition(self, execution: Execution, expected: str, new: str, save: bool = True) -> bool:
        """Move the lease from ``expected`` to ``new`` (writing the record with it); False when the lease is no
        longer ``expected`` (someone else moved it)."""
        eid = execution.id
        record = execution.dumps() if save else b""
        result = await self._transition(
            [lease_key(eid), record_key(eid)], [expected.encode(), new.encode(), record, self.ttl * 1000]
        )
        return bool(result == 1)

    async def append_event(self, execution_id: str, kind: str, **data: Any) -> None:
        await self.store.append(events_key(execution_id), event(kind, **data), self.ttl)

    async def events(self, execution_id: str, after: int) -> list[bytes]:
        """The log's entries after index ``after`` (-1: all)."""
        return await self.store.read_log(events_key(execution_id), after + 1, -1)

    async def save_artifact(self, execution: Execution, relpath: str, document_type: str, body: bytes) -> JSON:
        """Keep a document the execution wrote (as long as the execution) and return its entry for
        ``artifacts``; its ``download_url`` is the native route that checks the caller's rights."""
        artifact_id = str(uuid.uuid4())
        data = execution.data
        meta = {"execution_id": execution.id, "document_type": document_type, "relpath": relpath}
        await self.store.set(artifact_key(artifact_id), orjson.dumps({**meta, "body": body.decode()}), self.ttl)
        url = f"/v1/spaces/{data['space_id']}/skills/executions/{execution.id}/artifacts/{artifact_id}"
        return {
            "artifact_id": artifact_id,
            "relpath_in_workspace": relpath,
            "document_type": document_type,
            "download_url": url,
            "size_bytes": len(body),
        }

    async def artifact(self, execution: Execution, artifact_id: str) -> tuple[str, bytes] | None:
        """An artifact of ``execution`` (its document type and bytes), or None when it has no such artifact."""
        if all(a.get("artifact_id") != artifact_id for a in execution.data["artifacts"]):
            return None
        raw = await self.store.get(artifact_key(artifact_id))
        if raw is None:
            return None
        stored = orjson.loads(raw)
        if stored["execution_id"] != execution.id:
            return None
        return stored["document_type"], stored["body"].encode()

    async def by_tool_call(self, tenant_id: str, space_id: str, tool_call_id: str) -> Execution | None:
        """The execution a chat tool call of the space started, if it has one."""
        raw = await self.store.get(tool_call_key(space_id, tool_call_id))
        return None if raw is None else await self.load(raw.decode(), tenant_id, space_id)

    async def scan(self, space_id: str, start: int, count: int) -> tuple[list[tuple[int, Execution]], bool]:
        """Up to ``count`` executions of the space from position ``start`` on, in creation order, each with its
        position (an expired record is skipped), and whether the list ended within them."""
        ids = await self.store.read_log(index_key(space_id), start, start + count - 1)
        raws = await self.store.get_many([record_key(i.decode()) for i in ids])
        found = [(start + n, Execution.loads(r)) for n, r in enumerate(raws) if r is not None]
        return found, len(ids) < count
