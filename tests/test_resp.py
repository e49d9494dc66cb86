"""The lean Redis client (gateway/store/resp.py) against a real Redis, plus silent and password-protected servers."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
import redis
import uvloop

from gateway.errors import StoreUnavailable
from gateway.store.resp import RespClient, RespError, script_sha
from tests.servers import free_port, redis_process


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[RespClient]:
    c = RespClient(redis_url)
    yield c
    await c.close()


@pytest.fixture
def key(redis_prefix: str) -> str:
    return f"{redis_prefix}resp:{uuid.uuid4().hex}"


def with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


async def test_get_set_incr_round_trip(client: RespClient, key: str):
    assert await client.execute("GET", key) is None
    assert await client.execute("SET", key, "héllo") == b"OK"
    assert await client.execute("GET", key) == "héllo".encode()
    assert await client.execute("SET", key, 41) == b"OK"
    assert await client.execute("INCR", key) == 42
    assert await client.execute("INCRBYFLOAT", key, 0.5) == b"42.5"
    assert await client.execute("DEL", key.encode()) == 1


async def test_arguments_that_cannot_be_encoded_are_refused_before_sending(client: RespClient, key: str):
    with pytest.raises(TypeError):
        await client.execute("SET", key, True)
    with pytest.raises(TypeError):
        await client.execute("SET", key, None)
    with pytest.raises(ValueError):
        await client.execute()
    assert await client.execute("PING") == b"PONG"


async def test_many_concurrent_commands_get_their_own_replies(client: RespClient, key: str):
    echoes = await asyncio.gather(*(client.execute("ECHO", f"m{i}") for i in range(200)))
    assert echoes == [f"m{i}".encode() for i in range(200)]
    counts = await asyncio.gather(*(client.execute("INCR", key) for _ in range(200)))
    assert sorted(counts) == list(range(1, 201))
    await client.execute("DEL", key)


async def test_execute_many_runs_a_transaction_on_one_connection(client: RespClient, key: str):
    replies = await client.execute_many(
        [("MULTI",), ("INCRBY", key, 5), ("PEXPIRE", key, 60_000), ("INCRBY", key, 2), ("EXEC",)]
    )
    assert replies == [b"OK", b"QUEUED", b"QUEUED", b"QUEUED", [5, 1, 7]]
    assert 0 < await client.execute("PTTL", key) <= 60_000
    assert await client.execute_many([]) == []
    await client.execute("DEL", key)


async def test_error_replies_raise_or_land_in_the_list_and_the_connection_stays_usable(client: RespClient, key: str):
    await client.execute("SET", key, "text")
    with pytest.raises(RespError) as caught:
        await client.execute("INCR", key)
    assert caught.value.message.startswith("ERR")
    with pytest.raises(RespError):
        await client.execute("NO-SUCH-COMMAND")
    replies = await client.execute_many([("GET", key), ("INCR", key), ("ECHO", "after")])
    assert replies[0] == b"text" and isinstance(replies[1], RespError) and replies[2] == b"after"
    replies = await client.execute_many([("MULTI",), ("INCR", key), ("EXEC",)])
    assert isinstance(replies[2][0], RespError)  # an error inside EXEC's array
    assert await asyncio.gather(*(client.execute("PING") for _ in range(4))) == [b"PONG"] * 4
    await client.execute("DEL", key)


async def test_a_server_that_cannot_serve_now_is_store_unavailable():
    """Out of memory under noeviction and a read-only replica (a failover not finished) are the store being
    unavailable, not a bug in the command: StoreUnavailable, the server's reply as the cause."""
    with redis_process() as server:
        client = RespClient(server.url)
        admin = redis.Redis.from_url(server.url)
        try:
            await client.execute("SET", "k", "1")
            with pytest.raises(RespError, match="^WRONGTYPE"):  # a wrong command stays a RespError
                await client.execute("HGET", "k", "f")
            admin.config_set("maxmemory", "1")
            for command in (("SET", "k", "2"), ("EVAL", "return redis.call('SET', KEYS[1], '3')", 1, "k")):
                with pytest.raises(StoreUnavailable) as caught:
                    await client.execute(*command)
                cause = caught.value.__cause__
                assert isinstance(cause, RespError) and cause.message.startswith("OOM")
            admin.config_set("maxmemory", "0")
            admin.replicaof("127.0.0.1", str(free_port()))  # a replica of a primary that is not there
            with pytest.raises(StoreUnavailable) as caught:
                await client.execute("SET", "k", "4")
            cause = caught.value.__cause__
            assert isinstance(cause, RespError) and cause.message.startswith("READONLY")
            assert await client.execute("GET", "k") == b"1"  # reads still work
        finally:
            admin.close()
            await client.close()


async def test_evalsha_falls_back_to_eval_on_noscript(client: RespClient, key: str):
    lua = f"-- {uuid.uuid4().hex}\nreturn {{KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}}"
    sha = script_sha(lua)
    assert await client.execute("SCRIPT", "EXISTS", sha) == [0]
    assert await client.evalsha(sha, lua, [key], ["a", 41]) == [key.encode(), b"a", 42]
    assert await client.execute("SCRIPT", "EXISTS", sha) == [1]  # the EVAL cached it
    assert await client.evalsha(sha, lua, [key.encode()], [b"b", 1]) == [key.encode(), b"b", 2]
    with pytest.raises(RespError):  # a script's own error is not mistaken for NOSCRIPT
        bad = f"-- {uuid.uuid4().hex}\nreturn redis.error_reply('nope')"
        await client.evalsha(script_sha(bad), bad, [], [])


async def test_a_cancelled_caller_does_not_desynchronise_later_replies(redis_url: str, key: str):
    client = RespClient(redis_url, connections=1)
    try:
        blocked = asyncio.ensure_future(client.execute("BLPOP", key, 0.2))
        batch = asyncio.ensure_future(client.execute_many([("ECHO", "x"), ("ECHO", "y")]))
        await asyncio.sleep(0.05)
        blocked.cancel()
        batch.cancel()
        # Queued behind the BLPOP: must get their own replies, not the dropped ones.
        assert await asyncio.gather(client.execute("ECHO", "after"), client.execute("INCR", key)) == [b"after", 1]
        assert await client.execute_many([("ECHO", "z")]) == [b"z"]
        await client.execute("DEL", key)
    finally:
        await client.close()


async def test_connection_refused_is_store_unavailable_quickly():
    client = RespClient(f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="unreachable"):
        await client.execute("PING")
    with pytest.raises(StoreUnavailable):  # the next call tries again, and fails the same way
        await client.execute_many([("PING",)])
    assert time.monotonic() - started < 1
    await client.close()


async def test_a_silent_server_times_out_then_a_restarted_redis_works():
    """No reply within reply_timeout (one periodic check, not a timer per command) fails the connection."""
    port = free_port()

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", port)
    client = RespClient(f"redis://127.0.0.1:{port}", connections=1, reply_timeout=0.3)
    # Over TLS the handshake gets no answer either: that is the connect timeout.
    tls = RespClient(f"rediss://127.0.0.1:{port}", connect_timeout=0.2, reply_timeout=30)
    started = time.monotonic()
    results = await asyncio.gather(client.execute("PING"), client.execute("PING"), return_exceptions=True)
    assert all(isinstance(r, StoreUnavailable) for r in results)
    assert 0.25 < time.monotonic() - started < 1.0
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await tls.execute("PING")
    assert 0.15 < time.monotonic() - started < 1.0
    await tls.close()
    server.close()
    await server.wait_closed()
    with redis_process(port=port):
        assert await client.execute("PING") == b"PONG"
    await client.close()


async def test_a_connection_killed_by_the_server_fails_its_callers_and_the_next_call_reconnects(
    redis_url: str, key: str
):
    client = RespClient(redis_url, connections=1)
    client_id = await client.execute("CLIENT", "ID")
    waiting = asyncio.ensure_future(client.execute("BLPOP", key, 2))
    await asyncio.sleep(0.05)
    admin = redis.Redis.from_url(redis_url)
    admin.client_kill_filter(_id=client_id)
    admin.close()
    with pytest.raises(StoreUnavailable):
        await waiting
    assert await client.execute("ECHO", "back") == b"back"
    assert await client.execute("CLIENT", "ID") != client_id
    await client.close()


async def test_close_fails_waiting_callers_and_a_later_call_reconnects(redis_url: str, key: str):
    client = RespClient(redis_url)
    waiting = asyncio.ensure_future(client.execute("BLPOP", key, 2))
    await asyncio.sleep(0.05)
    await client.close()
    with pytest.raises(StoreUnavailable):
        await waiting
    assert await client.execute("PING") == b"PONG"
    await client.close()


async def test_the_db_in_the_url_is_selected(redis_url: str, key: str):
    client = RespClient(with_db(redis_url, 1))
    sync_db1 = redis.Redis.from_url(with_db(redis_url, 1))
    sync_db0 = redis.Redis.from_url(with_db(redis_url, 0))
    try:
        assert await asyncio.gather(*(client.execute("SET", key, "in-db-1") for _ in range(3))) == [b"OK"] * 3
        assert sync_db1.get(key) == b"in-db-1"
        assert sync_db0.get(key) is None
    finally:
        sync_db1.delete(key)
        sync_db1.close()
        sync_db0.close()
        await client.close()


async def test_password_auth_wrong_is_unavailable_right_works(tmp_path: Path):
    password = "s3cret:@/ pass"
    socket_path = tmp_path / "redis.sock"
    with redis_process("--requirepass", password, "--unixsocket", str(socket_path)) as server:
        port = server.port
        # A refused AUTH fails the connection: the store is as good as unreachable (cause: the WRONGPASS reply).
        wrong = RespClient(f"redis://:wrong@127.0.0.1:{port}")
        with pytest.raises(StoreUnavailable) as caught:
            await wrong.execute("PING")
        assert isinstance(caught.value.__cause__, RespError)
        await wrong.close()
        # Without any password Redis answers each command with a NOAUTH error reply.
        anonymous = RespClient(f"redis://127.0.0.1:{port}")
        with pytest.raises(RespError, match="NOAUTH"):
            await anonymous.execute("PING")
        await anonymous.close()
        for url in (
            f"redis://:{quote(password, safe='')}@127.0.0.1:{port}/2",
            f"redis://default:{quote(password, safe='')}@127.0.0.1:{port}",
            f"unix://:{quote(password, safe='')}@{socket_path}?db=3",
        ):
            right = RespClient(url)
            assert await asyncio.gather(right.execute("PING"), right.execute("ECHO", "ok")) == [b"PONG", b"ok"]
            await right.close()


async def uvloop_scenario(redis_url: str, key: str) -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    client = RespClient(redis_url, connections=1)
    try:
        assert await asyncio.gather(*(client.execute("ECHO", i) for i in range(100))) == [b"%d" % i for i in range(100)]
        assert await client.execute_many([("MULTI",), ("INCRBY", key, 3), ("PEXPIRE", key, 5000), ("EXEC",)]) == [
            b"OK",
            b"QUEUED",
            b"QUEUED",
            [3, 1],
        ]
        blocked = asyncio.ensure_future(client.execute("BLPOP", key + ":list", 0.1))
        await asyncio.sleep(0.02)
        blocked.cancel()
        with pytest.raises(RespError):
            await client.execute("HGET", key, "field")  # wrong type
        assert await client.execute("ECHO", "after") == b"after"
        await client.execute("DEL", key)
    finally:
        await client.close()
    with pytest.raises(StoreUnavailable):
        await RespClient(f"redis://127.0.0.1:{free_port()}").execute("PING")
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    silent = RespClient(f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}", reply_timeout=0.2)
    with pytest.raises(StoreUnavailable):
        await silent.execute("PING")
    await silent.close()
    server.close()


def test_the_same_behaviour_on_uvloop(redis_url: str, key: str):
    """The gateway runs on uvloop; its transports differ from asyncio's, so run the essentials there too."""
    with ThreadPoolExecutor(1) as pool:  # a loop of its own, away from the tests' shared asyncio loop
        pool.submit(uvloop.run, uvloop_scenario(redis_url, key)).result(timeout=10)
