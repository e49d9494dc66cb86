"""Redis Streams with consumer groups, as the in-memory store holds them: the same semantics as ``XADD``,
``XREADGROUP`` (new entries, ``>``), ``XACK`` and ``XAUTOCLAIM`` for one process.

An entry read by a consumer is pending (in the group's pending list, with its consumer and the time it was
delivered) until acknowledged; ``claim`` hands entries pending longer than an idle time to another consumer,
which is how the work of a consumer that died is taken over.
"""

import asyncio
import time
from dataclasses import dataclass, field

Entry = tuple[str, dict[str, bytes]]


@dataclass(slots=True)
class _Pending:
    consumer: str
    delivered: float  # monotonic time of the last delivery


@dataclass(slots=True)
class _Group:
    next_index: int = 0  # the first entry never delivered to this group
    pending: dict[str, _Pending] = field(default_factory=dict)  # entry id -> who holds it, in delivery order


class MemoryStream:
    """One stream: entries in order (ids ``<n>-0``), and its consumer groups."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.index: dict[str, int] = {}
        self.groups: dict[str, _Group] = {}
        self._sequence = 0
        self._trimmed = 0  # entries dropped from the start (positions count from the stream's first entry)
        self.added = asyncio.Event()  # set by every add: a blocked reader wakes up

    def add(self, fields: dict[str, bytes], max_length: int | None = None) -> str:
        """Append an entry; with ``max_length``, the oldest beyond it are dropped (``XADD MAXLEN``)."""
        self._sequence += 1
        entry_id = f"{self._sequence}-0"
        self.index[entry_id] = self._trimmed + len(self.entries)
        self.entries.append((entry_id, dict(fields)))
        if max_length is not None and len(self.entries) > max_length:
            self._trim(len(self.entries) - max_length)
        self.added.set()
        return entry_id

    def _trim(self, count: int) -> None:
        for entry_id, _ in self.entries[:count]:
            del self.index[entry_id]
            for group in self.groups.values():
                group.pending.pop(entry_id, None)  # as XAUTOCLAIM drops entries deleted from the stream
        del self.entries[:count]
        self._trimmed += count

    def group(self, name: str) -> _Group:
        """The group, created (from the stream's start) if new."""
        group = self.groups.get(name)
        if group is None:
            group = self.groups[name] = _Group()
        return group

    def read(self, group_name: str, consumer: str, count: int) -> list[Entry]:
        """Entries the group has not seen yet, now pending for ``consumer``."""
        group = self.group(group_name)
        start = max(0, group.next_index - self._trimmed)
        out = self.entries[start : start + count]
        group.next_index = self._trimmed + start + len(out)
        now = time.monotonic()
        for entry_id, _ in out:
            group.pending[entry_id] = _Pending(consumer, now)
        return [(entry_id, dict(fields)) for entry_id, fields in out]

    def ack(self, group_name: str, ids: tuple[str, ...]) -> int:
        group = self.group(group_name)
        return sum(group.pending.pop(entry_id, None) is not None for entry_id in ids)

    def claim(self, group_name: str, consumer: str, min_idle: float, count: int) -> list[Entry]:
        """Up to ``count`` entries pending for longer than ``min_idle`` seconds, now ``consumer``'s."""
        group = self.group(group_name)
        now = time.monotonic()
        out: list[Entry] = []
        for entry_id, pending in list(group.pending.items()):
            if len(out) >= count:
                break
            if now - pending.delivered >= min_idle:
                group.pending[entry_id] = _Pending(consumer, now)
                out.append((entry_id, dict(self.entries[self.index[entry_id] - self._trimmed][1])))
        return out
