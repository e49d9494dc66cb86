"""The server-side tool loop's cost: gateway CPU per model call of a three-round loop (two rounds of MCP tool
calls, then the answer) against one plain Responses call, and 200 loops at once on one worker.

    .venv/bin/python benchmarks/tool_loop.py [--requests 300] [--concurrency 8] [--burst 200] [--repeats 5]

Runs with the gateway's own venv (it needs the ``mcp`` SDK for the tool server). Everything on loopback: the
gateway (``python -m gateway``, one worker, in-memory store, the catalogue below) pinned on core 1; the scripted
upstream (tests/fakes/scripted.py) and an MCP server (the SDK's, streamable HTTP) and the load on core 0. CPU is
the gateway process's own (user + system from /proc), read around each measured phase; each phase is run after a
warm-up. The plain and the loop phases alternate ``--repeats`` times (two shared cores drift by ±20% over a
minute; in a pair the drift mostly cancels); the verdict is the median pair's ratio (CPU per round ≤ 1.5× a plain
call's). Not part of the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from run import cpu_seconds, free_port  # noqa: E402  (the harness's own: stdlib only)

KEY = "sk-bench-loop"


def catalogue(upstream: str) -> dict:
    import hashlib

    return {
        "tenants": [
            {
                "id": "11111111-1111-4111-8111-111111111111",
                "name": "bench",
                "policies": [{"use": "allow_list"}, {"use": "cost"}],
                "models": [
                    {
                        "id": "22222222-2222-4222-8222-222222222222",
                        "alias": "up",
                        "deployment": {"type": "openai", "model": "m", "base_url": upstream + "/v1"},
                        "pricing": {"input_per_mtok": "1", "output_per_mtok": "2"},
                    }
                ],
                "spaces": [
                    {
                        "id": "33333333-3333-4333-8333-333333333333",
                        "models": ["up"],
                        "default_model": "up",
                        "mcp": {"allowed_servers": ["http://127.0.0.1*"], "allow_private": ["127.0.0.1"]},
                    }
                ],
                "api_keys": [
                    {
                        "name": "bench",
                        "sha256": hashlib.sha256(KEY.encode()).hexdigest(),
                        "principal": "b",
                        "default_space": "33333333-3333-4333-8333-333333333333",
                    }
                ],
            }
        ]
    }


SERVERS = """
import sys, uvicorn
sys.path.insert(0, sys.argv[3])
if sys.argv[1] == "upstream":
    from tests.fakes.scripted import Scripted
    app = Scripted()
elif sys.argv[1] == "light":
    sys.path.insert(0, sys.argv[3] + "/benchmarks")
    from light_mcp import LightMcp
    app = LightMcp(sys.argv[4])
else:
    from mcp.server.mcpserver import MCPServer
    server = MCPServer("bench")

    @server.tool()
    def add(a: int, b: int) -> int:
        \"\"\"Add two numbers.\"\"\"
        return a + b

    app = server.streamable_http_app(json_response=len(sys.argv) > 4 and sys.argv[4] == "json")
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", lifespan="on")
"""


def start(cmd: list[str], core: int, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(["taskset", "-c", str(core), *cmd], env=env, stdout=subprocess.DEVNULL)


async def wait_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise SystemExit(f"port {port} did not open")


async def wait_up(url: str) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            try:
                async with s.get(url) as r:
                    if r.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def body(mcp_url: str, rounds: int) -> dict:
    steps: list = [[["bench__add", {"a": i, "b": 1}]] for i in range(rounds - 1)] + ["sum {outputs}"]
    tools = [{"type": "mcp", "server_label": "bench", "server_url": mcp_url, "require_approval": "never"}]
    request = {"model": "up", "input": json.dumps({"script": steps}), "store": False}
    return {**request, "tools": tools} if rounds > 1 else request


async def drive(base: str, payload: dict, n: int, concurrency: int) -> tuple[int, int]:
    """``n`` requests, ``concurrency`` at a time; returns (ok, failed)."""
    ok = failed = 0
    queue = iter(range(n))
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

        async def worker() -> None:
            nonlocal ok, failed
            for _ in queue:
                async with s.post(base + "/v1/responses", json=payload, headers=headers) as r:
                    answer = await r.json()
                    good = r.status == 200 and answer.get("status") == "completed"
                    if not good and failed == 0:
                        print("first failure:", r.status, str(answer)[:300], file=sys.stderr)
                    ok, failed = ok + good, failed + (not good)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok, failed


async def measure(base: str, pid: int, payload: dict, n: int, concurrency: int) -> dict:
    await drive(base, payload, max(n // 10, 10), concurrency)  # warm-up
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    ok, failed = await drive(base, payload, n, concurrency)
    return {"ok": ok, "failed": failed, "cpu_s": cpu_seconds(pid) - cpu0, "wall_s": time.monotonic() - t0}


def busy(phase: dict) -> str:
    """The gateway's CPU over the phase's wall time: near 100% when the gateway, not a server, is the bottleneck."""
    return f"{100 * phase['cpu_s'] / phase['wall_s']:.0f}%"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5, help="plain/loop pairs; the verdict is the median ratio")
    parser.add_argument("--mcp-answers", choices=["sse", "json"], default="sse", help="how the MCP server answers")
    parser.add_argument(
        "--mcp-server",
        choices=["light", "sdk"],
        default="light",
        help="benchmarks/light_mcp.py, or the SDK's (which starves the gateway on two cores: see light_mcp.py)",
    )
    args = parser.parse_args()
    up_port, mcp_port, gw_port = free_port(), free_port(), free_port()
    procs = [
        start([sys.executable, "-c", SERVERS, "upstream", str(up_port), str(ROOT)], 0),
        start([sys.executable, "-c", SERVERS, args.mcp_server, str(mcp_port), str(ROOT), args.mcp_answers], 0),
    ]
    workdir = Path(tempfile.mkdtemp(prefix="gateway-loop-bench-"))
    config = workdir / "catalogue.json"
    config.write_text(json.dumps(catalogue(f"http://127.0.0.1:{up_port}")))
    env = {**os.environ, "GATEWAY_CONFIG": str(config), "GATEWAY_PORT": str(gw_port), "GATEWAY_DEMO": "1"}
    gateway = start([sys.executable, "-m", "gateway"], 1, env)
    procs.append(gateway)
    base, mcp_url = f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{mcp_port}/mcp"
    try:
        await wait_port(up_port)
        await wait_port(mcp_port)
        await wait_up(base + "/healthz")
        spy = None
        if os.environ.get("LOOP_PROFILE"):  # a py-spy profile of the gateway during the loop phases
            spy = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "-p",
                    str(gateway.pid),
                    "-o",
                    os.environ["LOOP_PROFILE"],
                    "-f",
                    "raw",
                    "-r",
                    "200",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        pairs = []  # side by side, alternating: the machine's drift between phases cancels out of each pair
        for _ in range(args.repeats):
            plain = await measure(base, gateway.pid, body(mcp_url, 1), args.requests, args.concurrency)
            loop = await measure(base, gateway.pid, body(mcp_url, 3), args.requests, args.concurrency)
            pairs.append((plain, loop))
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        burst = await measure(base, gateway.pid, body(mcp_url, 3), args.burst, args.burst)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(10)
    print(
        "| pair | plain: failed | plain µs / request | gateway busy | loop: failed | loop µs / request "
        "| µs / model call | gateway busy | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    ratios = []
    for i, (plain, loop) in enumerate(pairs, 1):
        per_plain = plain["cpu_s"] / args.requests * 1e6
        per_round = loop["cpu_s"] / (args.requests * 3) * 1e6
        ratios.append(per_round / per_plain)
        print(
            f"| {i} | {plain['failed']} | {per_plain:.0f} | {busy(plain)} | {loop['failed']} | {per_round * 3:.0f} | "
            f"{per_round:.0f} | {busy(loop)} | {ratios[-1]:.2f} |"
        )
    ratio = statistics.median(ratios)
    print(
        f"\n{args.burst} loops at once: {burst['failed']} failed (target 0), "
        f"{burst['cpu_s'] / (args.burst * 3) * 1e6:.0f} µs / model call"
    )
    print(
        f"CPU per round / plain call, median of {len(ratios)}: {ratio:.2f} (target <= 1.5: "
        f"{'met' if ratio <= 1.5 else 'MISSED'}); failed requests: "
        f"{sum(p['failed'] + lp['failed'] for p, lp in pairs)}"
    )


if __name__ == "__main__":
    asyncio.run(main())
