"""Skill executions through the queue: executions per second through one worker process and through two, and the
queue latency (from the 201 to ``running``) at p50 and p99.

    .venv/bin/python benchmarks/executions.py [--executions 500] [--concurrency 32] [--rate 0] [--workers 1,2]

Runs with the gateway's own venv, on a Redis (``GATEWAY_REDIS_URL``, default ``redis://127.0.0.1:6379/0``) under
a prefix of its own, deleted at the end. One gateway process serves the API with no worker of its own
(``GATEWAY_EXECUTIONS_WORKER=false``); each measured phase starts N ``python -m gateway worker`` processes, submits
the executions (``--concurrency`` at a time), waits until every one has ended, and reads the times from each
execution's event log (the ``at`` of ``execution.queued``, ``.running`` and its end, written by the processes
themselves). The skill is one model turn on the gateway's fake ``echo`` deployment (it answers the inputs
document, which is valid outputs), so the gateway's own work is what is measured. With ``--rate 0`` the
executions are submitted at once (throughput, and the latency of a backlog); with a rate the worker keeps up
with, the latency of a queue that is not backed up. Not part of the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import free_port  # noqa: E402  (the harness's own: stdlib only)

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-bench-skills"
SPACE = "33333333-3333-4333-8333-333333333333"
SKILL = {
    "slug": "echo",
    "version": "1",
    "inputs": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    "outputs": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    "instructions": "Repeat {{ text }}.",
}


def catalogue() -> dict:
    return {
        "tenants": [
            {
                "id": "11111111-1111-4111-8111-111111111111",
                "name": "bench",
                "policies": [{"use": "allow_list"}, {"use": "cost"}],
                "models": [
                    {
                        "id": "22222222-2222-4222-8222-222222222222",
                        "alias": "echo",
                        "deployment": {"type": "fake", "model": "echo"},
                    }
                ],
                "skills": [SKILL],
                "spaces": [{"id": SPACE, "models": ["echo"], "default_model": "echo", "skills": ["echo"]}],
                "api_keys": [{"name": "bench", "sha256": hashlib.sha256(KEY.encode()).hexdigest(), "principal": "b"}],
            }
        ]
    }


def start(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "gateway", *command], env=env, cwd=ROOT)


def wait_ready(base: str) -> None:
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the gateway did not start")


async def submit(base: str, count: int, concurrency: int, rate: float) -> list[str]:
    url = f"{base}/v1/spaces/{SPACE}/skills/echo/executions"
    headers = {"Authorization": f"Bearer {KEY}"}
    ids: list[str] = []
    slots = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> None:
            if rate:
                await asyncio.sleep(i / rate)  # submitted at a steady rate: the latency of a queue that keeps up
            async with slots, session.post(url, json={"inputs": {"text": f"t{i}"}}, headers=headers) as answer:
                assert answer.status == 201, await answer.text()
                ids.append((await answer.json())["data"]["id"])

        await asyncio.gather(*(one(i) for i in range(count)))
    return ids


def times(client: redis.Redis, prefix: str, execution_id: str) -> dict[str, float]:
    events = [json.loads(e) for e in client.lrange(f"{prefix}execution:{execution_id}:events", 0, -1)]
    return {e["event"].removeprefix("execution."): e["at"] for e in events}


def wait_ended(client: redis.Redis, prefix: str, ids: list[str], timeout: float = 600) -> list[dict[str, float]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [times(client, prefix, i) for i in ids]
        if all(("succeeded" in t or "failed" in t) for t in found):
            return found
        time.sleep(0.2)
    raise RuntimeError("executions did not end in time")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def phase(base: str, env: dict[str, str], prefix: str, workers: int, args: argparse.Namespace) -> dict:
    client = redis.Redis.from_url(env["GATEWAY_REDIS_URL"])
    procs = [start(["worker", "--config", env["GATEWAY_CONFIG"]], env) for _ in range(workers)]
    try:
        time.sleep(2.0)  # the workers' start (imports, catalogue)
        ids = asyncio.run(submit(base, args.executions, args.concurrency, args.rate))
        found = wait_ended(client, prefix, ids)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        client.close()
    failed = sum("failed" in t for t in found)
    latency = [(t["running"] - t["queued"]) * 1000 for t in found]
    first, last = min(t["queued"] for t in found), max(t.get("succeeded", t.get("failed", 0)) for t in found)
    return {
        "workers": workers,
        "executions": len(found),
        "failed": failed,
        "per_second": len(found) / (last - first),
        "queue_p50_ms": percentile(latency, 50),
        "queue_p99_ms": percentile(latency, 99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executions", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, default=0.0, help="executions submitted per second (0: at once)")
    parser.add_argument("--workers", default="1,2", help="worker processes per phase, comma-separated")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    config = folder / "gateway.yaml"
    config.write_text(json.dumps(catalogue()))
    redis_url = os.environ.get("GATEWAY_REDIS_URL", "redis://127.0.0.1:6379/0")
    results = []
    for workers in [int(n) for n in args.workers.split(",")]:
        prefix = f"bench:{uuid.uuid4().hex[:8]}:"
        port = free_port()
        env = {
            **os.environ,
            "GATEWAY_CONFIG": str(config),
            "GATEWAY_REDIS_URL": redis_url,
            "GATEWAY_REDIS_PREFIX": prefix,
            "GATEWAY_EXECUTIONS_WORKER": "false",
            "GATEWAY_LOG_LEVEL": "warning",
            "GATEWAY_REQUEST_LOG": "false",
        }
        api = start(["--port", str(port)], env)
        try:
            wait_ready(f"http://127.0.0.1:{port}")
            results.append(phase(f"http://127.0.0.1:{port}", env, prefix, workers, args))
        finally:
            api.terminate()
            api.wait(30)
            client = redis.Redis.from_url(redis_url)
            keys = list(client.scan_iter(match=prefix + "*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()
    print(f"{'workers':>7} {'executions':>10} {'failed':>6} {'exec/s':>8} {'queue p50 ms':>12} {'queue p99 ms':>12}")
    for r in results:
        print(
            f"{r['workers']:>7} {r['executions']:>10} {r['failed']:>6} {r['per_second']:>8.1f} "
            f"{r['queue_p50_ms']:>12.1f} {r['queue_p99_ms']:>12.1f}"
        )


if __name__ == "__main__":
    main()
