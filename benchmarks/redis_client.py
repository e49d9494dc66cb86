"""One measurement of a Redis client's CPU cost per script call, in a process of its own (run_engine.py's
`redis-client` suite starts one per client, workload and repeat, pinned on the gateway's core).

    python benchmarks/redis_client.py CLIENT WORKLOAD REDIS_URL KEY_PREFIX  ->  one JSON line

CLIENT: `redis-py` (redis.asyncio as the store configured it: socket timeout 5 s, health checks, a pool of
up to 512 connections, EVALSHA through `register_script`), `redis-py-no-timeout` (the same without the
per-command socket timeout and health checks), `resp` (the gateway's own `gateway.store.resp.RespClient`).
WORKLOAD: `c1` one caller, sequential calls of a one-key script (allow_list's check); `c64` 64 concurrent
callers of it; `c64-batch` 64 concurrent callers of a script shaped like the chain's composed call before the
upstream (8 keys, 20 args, a nested reply). CPU is `time.process_time()` of the whole process around the
timed calls only, after a warm-up; uvloop, as the gateway runs.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SMALL = "return redis.call('HEXISTS', KEYS[1], ARGV[1])"
BATCH = """
local out = {}
for i = 1, #KEYS do out[#out + 1] = redis.call('HEXISTS', KEYS[i], ARGV[i]) end
return {out, {tonumber(ARGV[9]), tonumber(ARGV[10])}}
"""
WORKLOADS = {"c1": (1, 20_000, SMALL), "c64": (64, 100_000, SMALL), "c64-batch": (64, 100_000, BATCH)}
Call = Callable[[list[str], list[Any]], Awaitable[Any]]


def call_args(lua: str, prefix: str, i: int) -> tuple[list[str], list[Any]]:
    if lua is SMALL:
        return [prefix + "h"], [f"f{i % 3}"]
    keys = [f"{prefix}h{k}" for k in range(8)]
    return keys, [f"f{(i + k) % 3}" for k in range(8)] + [i, i * 7] + [f"x{k}" for k in range(10)]


async def client(name: str, url: str, lua: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    if name.startswith("redis-py"):
        try:
            import redis.asyncio as aioredis
        except ImportError:
            raise SystemExit("redis-py is a test dependency of the gateway: run `make install-dev` first") from None

        options: dict[str, Any] = {"socket_connect_timeout": 2, "socket_timeout": 5, "health_check_interval": 30,
                                   "max_connections": 512}
        if name == "redis-py-no-timeout":
            options.update(socket_timeout=None, health_check_interval=0)
        r = aioredis.Redis.from_url(url, **options)
        script = r.register_script(lua)

        async def call(keys: list[str], args: list[Any]) -> Any:
            return await script(keys=keys, args=args)

        return call, r.aclose
    if name == "resp":
        from gateway.store.resp import RespClient, script_sha

        c = RespClient(url)
        sha = script_sha(lua)

        async def call(keys: list[str], args: list[Any]) -> Any:
            return await c.evalsha(sha, lua, keys, args)

        return call, c.close
    raise SystemExit(f"unknown client {name!r}")


async def measure(name: str, workload: str, url: str, prefix: str) -> dict[str, Any]:
    concurrency, total, lua = WORKLOADS[workload]
    call, close = await client(name, url, lua)
    try:
        async def worker(start: int, count: int) -> None:
            for i in range(start, start + count):
                await call(*call_args(lua, prefix, i))

        per = max(1, 2000 // concurrency)
        await asyncio.gather(*(worker(w * per, per) for w in range(concurrency)))  # warm-up, loads the script
        per = total // concurrency
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(w * per, per) for w in range(concurrency)))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        await close()
    calls = per * concurrency
    return {"client": name, "workload": workload, "calls": calls, "cpu_us": cpu / calls * 1e6,
            "ops_per_s": calls / wall}


def main() -> int:
    name, workload, url, prefix = sys.argv[1:5]
    print(json.dumps(uvloop.run(measure(name, workload, url, prefix))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
