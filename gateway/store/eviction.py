"""The in-memory store's bound: the approximate bytes of its evictable keys, and which key goes first.

The store is told which key namespaces hold data a reader can do without (stored responses and their event
logs: an evicted one reads as an expired one) and how many bytes of them it may hold. Every write to such a
key records the value's approximate size and makes the key the newest; past the limit the oldest keys are
dropped until the total is back under it. Keys of every other namespace (idempotency claims, budget holds,
counters) are neither counted nor ever evicted. A stream in progress appends to its log every 250 ms at most,
each append making it the newest again, so only a limit smaller than what the whole gateway writes in that time
could take a log from under a running stream.

Cost: an ``OrderedDict`` keeps the keys oldest first, so recording, forgetting and evicting a key are O(1)
each and a write pays only for the evictions it causes (amortised O(1)); nothing is ever scanned.
"""

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

log = logging.getLogger("gateway.store")

SETTING = "GATEWAY_MEMORY_STORE_MAX_BYTES"
# What CPython spends besides the payload, measured with tracemalloc (tests/test_store_eviction.py checks it):
# per key, its str and its entries in the values, expiry and ledger dicts (the ledger's linked-list node
# included); per bytes object, its header; per log entry, that header and the list's slot.
KEY_OVERHEAD = 400
BYTES_OVERHEAD = 33
ENTRY_OVERHEAD = BYTES_OVERHEAD + 8


def size_of(value: Any) -> int:
    """Approximate bytes a value holds: a bytes value, or a log (a list of bytes); anything else is small."""
    if isinstance(value, bytes):
        return len(value) + BYTES_OVERHEAD
    if isinstance(value, list):
        return 56 + log_growth(value)
    return 64


def log_growth(entries: list[bytes]) -> int:
    """What appending ``entries`` to a log adds."""
    return sum(map(len, entries)) + ENTRY_OVERHEAD * len(entries)


class EvictionLedger:
    """Sizes of the evictable keys, oldest write first, and the eviction of the oldest past ``limit`` bytes.

    ``drop(key)`` removes an evicted key's value (the store's job); the newest key is never evicted, so one
    value larger than the limit is kept on its own (the total passes the limit by at most that value)."""

    def __init__(self, limit: int, prefixes: tuple[str, ...], drop: Callable[[str], object]) -> None:
        if limit <= 0 or not prefixes:
            raise ValueError("an eviction ledger needs a positive limit and at least one key prefix")
        self.limit = limit
        self.prefixes = prefixes
        self.total = 0
        self.evicted = 0  # keys evicted so far
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._drop = drop

    def record(self, key: str, value_size: int) -> None:
        """``key`` now holds a value of ``value_size`` bytes and is the newest; evict the oldest past the limit."""
        self._set(key, value_size + len(key) + KEY_OVERHEAD)

    def grow(self, key: str, added: int) -> None:
        """``key``'s value grew in place by ``added`` bytes (an appended log); it is the newest now."""
        self._set(key, self._sizes.get(key, len(key) + KEY_OVERHEAD) + added)

    def forget(self, key: str) -> None:
        """``key`` was deleted or expired."""
        self.total -= self._sizes.pop(key, 0)

    def _set(self, key: str, size: int) -> None:
        self.total += size - self._sizes.pop(key, 0)
        self._sizes[key] = size
        if self.total > self.limit:
            self._evict()

    def _evict(self) -> None:
        sizes = self._sizes
        while self.total > self.limit and len(sizes) > 1:
            key, size = sizes.popitem(last=False)
            self.total -= size
            self._drop(key)
            if not self.evicted:
                log.warning(
                    "the in-memory store reached its limit for stored responses and event logs, %s=%d: from now "
                    "on the oldest are evicted first (they then read as expired); raise it, or use Redis, to keep "
                    "more",
                    SETTING,
                    self.limit,
                )
            self.evicted += 1
