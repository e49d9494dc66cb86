"""Shared state: the ``Store`` protocol, an in-memory store (one process) and a Redis store (replicas)."""

from gateway.store.base import Call, Halt, Script, Store
from gateway.store.memory import MemoryData, MemoryStore

__all__ = ["Call", "Halt", "MemoryData", "MemoryStore", "Script", "Store", "open_store"]


def open_store(
    redis_url: str | None, prefix: str = "gw:", memory_limit_bytes: int = 0, evictable: tuple[str, ...] = ()
) -> Store:
    """The Redis store when a URL is configured, else the embedded in-memory one, which holds at most about
    ``memory_limit_bytes`` (0: no limit) of the keys under the ``evictable`` prefixes (the oldest go first)."""
    if redis_url:
        from gateway.store.redis import RedisStore

        return RedisStore(redis_url, prefix=prefix)
    return MemoryStore(memory_limit_bytes, evictable)
