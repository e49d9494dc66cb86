"""Each caller's collection of uploaded files (``POST /v1/files``): the file objects of one API key's principal
in its tenant, and the limits that keep it bounded.

A collection is one store hash (file id → the file object as OpenAI shows it, plus its owner), beside two byte
counters: the collection's and every collection's together. Adding a file checks the three limits (files per
collection, bytes per collection, bytes in all) and records it in one atomic script, so concurrent uploads on
any replica never overshoot; deleting one gives its bytes back in another. The bytes themselves are written
before the record (``gateway.files.blobs``) and removed after it: a file that is listed can always be read.
"""

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from config import Settings
from gateway.files.blobs import Blobs
from gateway.store import MemoryData, Store

JSON = dict[str, Any]
TOTAL_KEY = "files-bytes"
ORDER = "created_ns"  # kept beside the file object, never shown: orders files of the same second


def _public(kept: JSON) -> JSON:
    kept.pop(ORDER, None)
    return kept


_ADD = """
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then return 1 end
local size = tonumber(ARGV[3])
if tonumber(redis.call('GET', KEYS[2]) or '0') + size > tonumber(ARGV[5]) then return 2 end
if tonumber(redis.call('GET', KEYS[3]) or '0') + size > tonumber(ARGV[6]) then return 3 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCRBY', KEYS[2], size)
redis.call('INCRBY', KEYS[3], size)
return 0
"""

_REMOVE = """
local found = redis.call('HGET', KEYS[1], ARGV[1])
if not found then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
local size = tonumber(ARGV[2])
redis.call('DECRBY', KEYS[2], size)
redis.call('DECRBY', KEYS[3], size)
return found
"""


def _add_fallback(data: MemoryData, keys: Sequence[str], args: Sequence[Any]) -> int:
    index = data.get(keys[0]) or {}
    size = int(args[2])
    if len(index) >= int(args[3]):
        return 1
    if int(data.get(keys[1]) or 0) + size > int(args[4]):
        return 2
    if int(data.get(keys[2]) or 0) + size > int(args[5]):
        return 3
    if not index:
        data.put(keys[0], index)
    index[str(args[0])] = args[1] if isinstance(args[1], bytes) else str(args[1]).encode()
    for key in keys[1:]:
        data.put(key, int(data.get(key) or 0) + size)
    return 0


def _remove_fallback(data: MemoryData, keys: Sequence[str], args: Sequence[Any]) -> bytes | None:
    index = data.get(keys[0]) or {}
    found: bytes | None = index.pop(str(args[0]), None)
    if found is None:
        return None
    if not index:
        data.delete(keys[0])
    for key in keys[1:]:
        data.put(key, int(data.get(key) or 0) - int(args[1]))
    return found


class CollectionFull(Exception):
    """An upload the limits refuse; the message names the limit."""


@dataclass(frozen=True, slots=True)
class Owner:
    tenant_id: str
    principal_id: str

    @property
    def index(self) -> str:
        return f"files:{self.tenant_id}:{self.principal_id}"

    @property
    def used(self) -> str:
        return f"files-bytes:{self.tenant_id}:{self.principal_id}"


class Files:
    def __init__(self, store: Store, blobs: Blobs, settings: Settings) -> None:
        self.store = store
        self.blobs = blobs
        self.max_files = settings.files_collection_max_files
        self.max_collection = settings.files_collection_max_bytes
        self.max_total = settings.files_total_max_bytes
        self._add = store.script(_ADD, _add_fallback)
        self._remove = store.script(_REMOVE, _remove_fallback)

    async def add(self, owner: Owner, filename: str, purpose: str, data: bytes) -> JSON:
        """Keep ``data`` as a new file of the collection and return its file object; ``CollectionFull`` when a
        limit refuses it (nothing is kept then)."""
        file_id = "file-" + os.urandom(12).hex()
        now = time.time_ns()
        record = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": now // 1_000_000_000,
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }
        await self.blobs.put(file_id, data)
        kept = orjson.dumps({**record, ORDER: now})
        args = [file_id, kept, len(data), self.max_files, self.max_collection, self.max_total]
        try:
            refused = int(await self._add([owner.index, owner.used, TOTAL_KEY], args))
        except BaseException:
            await self.blobs.delete(file_id)
            raise
        if refused:
            await self.blobs.delete(file_id)
            raise CollectionFull(self._limit_message(refused))
        return record

    def _limit_message(self, refused: int) -> str:
        if refused == 1:
            return f"Your collection holds its limit of {self.max_files} files; delete some first."
        if refused == 2:
            return f"This file would take your collection past its limit of {self.max_collection} bytes."
        return "The gateway's file storage is full; delete files first or ask the operator to raise the limit."

    async def get(self, owner: Owner, file_id: str) -> JSON | None:
        raw = await self.store.hget(owner.index, file_id)
        return _public(orjson.loads(raw)) if raw is not None else None

    async def records(self, owner: Owner) -> list[JSON]:
        """Every file of the collection, newest first (ties by id, so pages are stable)."""
        kept = [orjson.loads(raw) for raw in (await self.store.hgetall(owner.index)).values()]
        kept.sort(key=lambda r: (r.get(ORDER, 0), r["id"]), reverse=True)
        return [_public(r) for r in kept]

    async def content(self, owner: Owner, file_id: str) -> tuple[JSON, bytes] | None:
        record = await self.get(owner, file_id)
        if record is None:
            return None
        data = await self.blobs.get(file_id)
        return (record, data) if data is not None else None

    async def delete(self, owner: Owner, file_id: str) -> bool:
        record = await self.get(owner, file_id)
        if record is None:
            return False
        if await self._remove([owner.index, owner.used, TOTAL_KEY], [file_id, record["bytes"]]) is None:
            return False  # deleted meanwhile by another request
        await self.blobs.delete(file_id)
        return True

    async def find(self, owner: Owner, names: Sequence[str]) -> tuple[list[tuple[JSON, bytes]], list[str]]:
        """The files ``names`` name (a file id, or a filename: its newest file), with their bytes, and the names
        that name none (skipped, as the seed says of ``file_source_ids``)."""
        records = await self.records(owner)
        by_id = {r["id"]: r for r in records}
        by_name: dict[str, JSON] = {}
        for record in records:  # newest first: the first of a name is its newest
            by_name.setdefault(record["filename"], record)
        found: list[tuple[JSON, bytes]] = []
        missing: list[str] = []
        for name in dict.fromkeys(names):
            named = by_id.get(name) or by_name.get(name)
            data = await self.blobs.get(named["id"]) if named is not None else None
            if named is None or data is None:
                missing.append(name)
            else:
                found.append((named, data))
        return found, missing
