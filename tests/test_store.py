"""The Store contract, run against both implementations: in-memory and a real Redis."""

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from gateway.errors import StoreUnavailable
from gateway.store import Halt, MemoryStore, Store
from gateway.store.redis import RedisStore


@pytest.fixture(params=["memory", "redis"])
async def store(request, redis_url: str, redis_prefix: str) -> AsyncIterator[Store]:
    s: Store = MemoryStore() if request.param == "memory" else RedisStore(redis_url, redis_prefix)
    yield s
    await s.close()


def k() -> str:
    return "t:" + uuid.uuid4().hex


async def test_get_set_ttl_and_delete(store: Store):
    key = k()
    assert await store.get(key) is None
    await store.set(key, b"v", ttl=0.2)
    assert await store.get(key) == b"v"
    await asyncio.sleep(0.3)
    assert await store.get(key) is None
    await store.set(key, b"w")
    assert await store.delete(key, k()) == 1
    assert await store.get(key) is None


async def test_set_nx_claims_once_even_under_concurrency(store: Store):
    key = k()
    results = await asyncio.gather(*(store.set_nx(key, str(i).encode(), ttl=5) for i in range(20)))
    assert results.count(True) == 1


async def test_counters(store: Store):
    key = k()
    assert await store.incr(key, 5, ttl=10) == 5
    assert await store.incr(key) == 6
    assert sum(await asyncio.gather(*(store.incr(key) for _ in range(10)))) > 0
    assert await store.incr(key, 0) == 16


async def test_hashes(store: Store):
    key = k()
    assert await store.hset(key, "a", b"1") is True
    assert await store.hset(key, "a", b"2") is False
    assert await store.hsetnx(key, "a", b"3") is False
    assert await store.hsetnx(key, "b", b"4") is True
    assert await store.hget(key, "a") == b"2"
    assert await store.hgetall(key) == {"a": b"2", "b": b"4"}
    assert await store.hdel(key, "a") is True
    assert await store.hdel(key, "a") is False
    assert await store.hgetall(k()) == {}


async def test_append_only_log(store: Store):
    key = k()
    assert [await store.append(key, f"e{i}".encode(), ttl=10) for i in range(4)] == [0, 1, 2, 3]
    assert await store.read_log(key) == [b"e0", b"e1", b"e2", b"e3"]
    assert await store.read_log(key, 2) == [b"e2", b"e3"]
    assert await store.read_log(key, 1, 2) == [b"e1", b"e2"]
    assert await store.read_log(k()) == []
    assert await store.extend(key, [b"e4", b"e5"], ttl=10) == 6
    assert await store.read_log(key, 4) == [b"e4", b"e5"]


async def test_get_many(store: Store):
    a, b = k(), k()
    await store.set(a, b"1")
    assert await store.get_many([a, b, a]) == [b"1", None, b"1"]
    assert await store.get_many([]) == []


async def test_scripts_run_atomically_with_the_same_result_on_both(store: Store):
    # reserve ARGV[1] against limit ARGV[2]: the shape budgets will use
    lua = """
    local v = tonumber(redis.call('GET', KEYS[1]) or '0')
    if v + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return 0 end
    redis.call('SET', KEYS[1], v + tonumber(ARGV[1]))
    return 1
    """

    def reserve(data, keys, args):
        v = int(data.get(keys[0]) or 0)
        if v + int(args[0]) > int(args[1]):
            return 0
        data.put(keys[0], str(v + int(args[0])).encode())
        return 1

    script = store.script(lua, reserve)
    key = k()
    results = await asyncio.gather(*(script([key], [3, 10]) for _ in range(10)))
    assert sum(results) == 3
    assert int(await store.get(key)) == 9


# add ARGV[1] to KEYS[1] and return the new value; a result above ARGV[2] halts a batch
_ADD_LUA = """
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
return v
"""


def _add(data, keys, args):
    value = int(data.get(keys[0]) or 0) + int(args[0])
    data.put(keys[0], str(value).encode())  # as Redis keeps it
    return value


async def test_a_batch_runs_its_calls_in_order_in_one_unit(store: Store):
    halting = store.script(_ADD_LUA, _add, Halt("r > 10", lambda r: int(r) > 10))
    plain = store.script("return redis.call('GET', KEYS[1])", lambda data, keys, args: data.get(keys[0]))
    claim = store.script(
        "if redis.call('SET', KEYS[1], ARGV[1], 'NX') then return false end return redis.call('GET', KEYS[1])",
        lambda data, keys, args: None if data.get(keys[0]) is None and data.put(keys[0], args[0]) is None else 1,
    )
    a, b, c = k(), k(), k()
    assert await store.batch([]) == []
    # a false (nil) result keeps its place; each call sees its own keys and args, and the earlier calls' writes
    results = await store.batch([(claim, [c], [b"x"]), (halting, [a], [4]), (plain, [a], []), (halting, [b], [1])])
    assert [r if r is None else int(r) for r in results] == [None, 4, 4, 1]
    # the second call halts (12 > 10): the third and fourth do not run
    results = await store.batch([(halting, [a], [1]), (halting, [a], [7]), (halting, [b], [100]), (plain, [a], [])])
    assert [int(r) for r in results] == [5, 12]
    assert int(await store.get(b) or 0) == 1
    # a single call is the script's own result
    assert [int(r) for r in await store.batch([(halting, [b], [2])])] == [3]


async def test_batches_are_atomic_under_concurrency(store: Store):
    add = store.script(_ADD_LUA, _add, Halt("r > 10", lambda r: int(r) > 10))
    key, other = k(), k()
    # each batch adds 1 to both keys unless the first addition went over 10: exactly 10 batches get through
    results = await asyncio.gather(*(store.batch([(add, [key], [1]), (add, [other], [1])]) for _ in range(30)))
    assert sum(len(r) == 2 for r in results) == 10
    assert int(await store.get(other) or 0) == 10


async def test_unreachable_redis_raises_store_unavailable():
    s = RedisStore("redis://127.0.0.1:1/0")
    with pytest.raises(StoreUnavailable):
        await s.get("x")
    await s.close()


# --- streams with consumer groups (the executions queue) ---


async def test_a_group_delivers_each_entry_to_one_consumer_until_acknowledged(store: Store):
    key = "q:" + uuid.uuid4().hex
    ids = [await store.stream_add(key, {"id": str(i).encode()}) for i in range(3)]
    first = await store.stream_read(key, "g", "a", 2, 0)
    second = await store.stream_read(key, "g", "b", 5, 0)
    assert [e for e, _ in first + second] == ids
    assert [f["id"] for _, f in first + second] == [b"0", b"1", b"2"]
    assert await store.stream_read(key, "g", "a", 5, 0) == []  # nothing new
    assert await store.stream_ack(key, "g", ids[0], ids[1]) == 2
    assert await store.stream_ack(key, "g", ids[0]) == 0
    other = await store.stream_read(key, "h", "c", 10, 0)  # another group sees everything
    assert len(other) == 3


async def test_a_blocking_read_wakes_up_for_an_entry_added_meanwhile(store: Store):
    key = "q:" + uuid.uuid4().hex
    await store.stream_read(key, "g", "a", 1, 0)  # the group exists from here on: it gets what comes next
    reader = asyncio.ensure_future(store.stream_read(key, "g", "a", 1, 2.0))
    await asyncio.sleep(0.05)
    entry = await store.stream_add(key, {"id": b"x"})
    assert [e for e, _ in await asyncio.wait_for(reader, 5)] == [entry]
    assert await store.stream_read(key, "g", "a", 1, 0.05) == []  # waits the block time, then nothing


async def test_entries_left_pending_are_claimed_by_another_consumer_after_their_idle_time(store: Store):
    key = "q:" + uuid.uuid4().hex
    entry = await store.stream_add(key, {"id": b"1"})
    await store.stream_read(key, "g", "dead", 1, 0)
    assert await store.stream_claim(key, "g", "alive", 60, 10) == []  # not idle long enough
    await asyncio.sleep(0.12)
    claimed = await store.stream_claim(key, "g", "alive", 0.1, 10)
    assert claimed == [(entry, {"id": b"1"})]
    assert await store.stream_claim(key, "g", "third", 0.1, 10) == []  # just claimed: not idle any more
    await store.stream_ack(key, "g", entry)
    await asyncio.sleep(0.12)
    assert await store.stream_claim(key, "g", "third", 0.1, 10) == []


async def test_the_in_memory_stream_keeps_at_most_its_max_length_and_drops_the_trimmed_pending():
    store = MemoryStore()
    stream = store.data.stream("q")
    first = stream.add({"id": b"0"}, 3)
    assert [e for e, _ in await store.stream_read("q", "g", "a", 1, 0)] == [first]
    later = [stream.add({"id": str(i).encode()}, 3) for i in range(1, 5)]
    assert [e for e, _ in stream.entries] == later[-3:]
    assert [e for e, _ in await store.stream_read("q", "g", "a", 10, 0)] == later[-3:]
    await asyncio.sleep(0.02)
    claimed = await store.stream_claim("q", "g", "b", 0.01, 10)
    assert [e for e, _ in claimed] == later[-3:]  # the trimmed pending entry is gone, as XAUTOCLAIM drops it
