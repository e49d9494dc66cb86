"""The ``Store`` protocol: everything shared state needs, on one process or across replicas.

Values are bytes; TTLs are seconds. Operations that must be atomic across replicas either are single
commands (``set_nx``, ``incr``, ``append``) or a ``Script``: Lua on Redis, the same logic in Python on the
in-memory store (where a synchronous function is atomic by construction on the event loop).
Any failure to reach the store raises ``gateway.errors.StoreUnavailable``.

Several script calls go to the store in one round trip with ``batch``: one atomic unit on Redis (the scripts
are composed into one), run in order, stopping after the first whose result meets its ``Halt`` condition.
That is how the policy chain pays one round trip for all its policies' store work before the upstream call
and one after it.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

ScriptFallback = Callable[[Any, Sequence[str], Sequence[Any]], Any]


@dataclass(frozen=True, slots=True)
class Halt:
    """When a script's result stops the rest of a batch: a Lua condition on its result ``r``, and the same
    test in Python for the in-memory store (on the result as the fallback returns it)."""

    lua: str
    test: Callable[[Any], bool]


class Script(Protocol):
    halt: Halt | None

    async def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run atomically with ``keys`` (store keys, unprefixed) and ``args``."""
        ...


Call = tuple[Script, Sequence[str], Sequence[Any]]


class Store(Protocol):
    """Key-value with TTL, atomic claims, counters, hashes, append-only logs and atomic scripts."""

    remote: bool  # whether an operation is a round trip over the network (traces and metrics time only those)

    async def ping(self) -> None:
        """Raise StoreUnavailable when the store cannot be reached."""

    async def close(self) -> None: ...

    async def get(self, key: str) -> bytes | None: ...

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        """Several values in one round trip, in the order asked."""
        ...

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None: ...

    async def set_nx(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        """Set only if absent; True when this call claimed the key."""
        ...

    async def delete(self, *keys: str) -> int: ...

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Add ``amount`` and return the new value; ``ttl`` is set when the counter is created."""
        ...

    async def hset(self, key: str, field: str, value: bytes) -> bool:
        """Set a hash field; True when the field is new."""
        ...

    async def hsetnx(self, key: str, field: str, value: bytes) -> bool:
        """Set a hash field only if absent; True when this call added it."""
        ...

    async def hget(self, key: str, field: str) -> bytes | None: ...

    async def hgetall(self, key: str) -> dict[str, bytes]: ...

    async def hdel(self, key: str, field: str) -> bool:
        """Remove a hash field; True when it existed."""
        ...

    async def append(self, key: str, value: bytes, ttl: float | None = None) -> int:
        """Append to an ordered log and return the new entry's 0-based index; ``ttl`` refreshes the log's TTL."""
        ...

    async def extend(self, key: str, values: list[bytes], ttl: float | None = None) -> int:
        """Append several entries in one step; returns the log's new length."""
        ...

    async def read_log(self, key: str, start: int = 0, end: int = -1) -> list[bytes]:
        """Entries ``start`` through ``end`` inclusive (negative counts from the end)."""
        ...

    # --- streams with consumer groups (a durable work queue; in memory: ``gateway.store.streams``) ---
    async def stream_add(self, key: str, fields: dict[str, bytes]) -> str:
        """``XADD key * field value …``: append an entry; returns its id."""
        ...

    async def stream_read(
        self, key: str, group: str, consumer: str, count: int, block_seconds: float
    ) -> list[tuple[str, dict[str, bytes]]]:
        """``XREADGROUP GROUP group consumer COUNT count BLOCK ms STREAMS key >``: entries new to the group (the
        group and the stream are created on first use), now pending for ``consumer``; waits up to
        ``block_seconds`` for one (0: does not wait)."""
        ...

    async def stream_ack(self, key: str, group: str, *ids: str) -> int:
        """``XACK``: the entries are done; returns how many were pending."""
        ...

    async def stream_claim(
        self, key: str, group: str, consumer: str, min_idle_seconds: float, count: int
    ) -> list[tuple[str, dict[str, bytes]]]:
        """``XAUTOCLAIM``: up to ``count`` entries pending for longer than ``min_idle_seconds`` (their consumer
        died, or is slow), now ``consumer``'s; entries trimmed from the stream meanwhile are acknowledged."""
        ...

    def script(self, lua: str, fallback: ScriptFallback, halt: Halt | None = None) -> Script:
        """Register an atomic script: ``lua`` runs on Redis, ``fallback(data, keys, args)`` in memory.

        The Lua is a script body that reads ``KEYS`` and ``ARGV``; a batch runs it as a function of those two.
        ``halt`` says which of its results stop a batch.
        """
        ...

    async def batch(self, calls: Sequence[Call]) -> list[Any]:
        """Run script calls (of this store's scripts) in order, atomically together, in one round trip.

        Returns their results in order; a call whose result meets its script's ``Halt`` is the last one run,
        so the list is shorter when one halted.
        """
        ...
