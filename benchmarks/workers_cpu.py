"""What scaling over worker processes depends on: gateway CPU per chat request with ``--workers 2`` against one
worker, on Redis, at the same offered load.

    python benchmarks/workers_cpu.py [--duration 8] [--repeats 3] [--connections 16] [--delay-ms 20]
                                     [--redis-url redis://127.0.0.1:6379/0]

Two cores cannot show throughput scaling with the load generator beside the gateway, so this measures what it
rests on: the CPU each request costs when the work is spread over two processes (each with its own event loop,
upstream pool and Redis connection) instead of one. On run.py's harness (stdlib only): the mock upstream and wrk
on core 0, the gateway (supervisor and workers) on core 1, on Redis with a key prefix of its own (deleted at the
end). wrk is paced (``wrk_paced.lua``: each of N connections waits the delay before each request), so both
configurations get the same offered load, below what one worker can serve. CPU is user + system of the gateway's
process tree, from /proc, around each measured run; runs alternate 1, 2, 2, 1, ... so a drift hits both alike.

Prints CPU per request for each and the ratio (two workers / one; the target is <= 1.1) and writes
benchmarks/results/workers-latest.json. Every process it starts is stopped by its PID.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as base  # noqa: E402
import side_by_side  # noqa: E402
from run import BenchError, Processes, log  # noqa: E402

TARGET_RATIO = 1.1
RESULTS_FILE = base.RESULTS / "workers-latest.json"
PACED_SCRIPT = base.BENCH_DIR / "wrk_paced.lua"


def start_gateway(procs: Processes, workdir: Path, mock_port: int, workers: int, args: argparse.Namespace,
                  prefix: str) -> tuple[base.Proc, int]:
    config = workdir / "gateway-workers-bench.yaml"
    config.write_text(base.GATEWAY_CATALOG.format(port=mock_port))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(GATEWAY_REDIS_URL=args.redis_url, GATEWAY_REDIS_PREFIX=prefix)
    port = base.free_port()
    argv = [str(base.GATEWAY_PYTHON), "-m", "gateway", "--config", str(config), "--host", "127.0.0.1",
            "--port", str(port), "--workers", str(workers)]
    proc = procs.start(f"gateway-{workers}w", argv, base.TARGET_CORE, env, cwd=base.REPO)
    base.wait_first_answer(proc, port, True, 60)
    time.sleep(1.0)  # every worker up (the first answer may come from the first one only)
    return proc, port


def paced(wrk: str, port: int, args: argparse.Namespace, seconds: float) -> dict:
    extra = {"BENCH_DIR": str(base.BENCH_DIR), "BENCH_DELAY_MS": str(args.delay_ms)}
    return base.run_wrk(wrk, port, base.CHAT_BODY, True, args.connections, seconds, script=PACED_SCRIPT,
                        extra_env=extra)


def measure(args: argparse.Namespace, procs: Processes, workdir: Path, mock_port: int, wrk: str, workers: int,
            prefix: str) -> dict:
    proc, port = start_gateway(procs, workdir, mock_port, workers, args, prefix)
    try:
        paced(wrk, port, args, args.warmup)
        cpu0, t0 = base.cpu_seconds(proc.pid), time.monotonic()
        res = paced(wrk, port, args, args.duration)
        elapsed = time.monotonic() - t0
        cpu = base.cpu_seconds(proc.pid) - cpu0
        res["cpu_us_per_request"] = cpu / res["requests"] * 1e6 if res["requests"] else float("nan")
        res["cpu_pct"] = 100.0 * cpu / elapsed
        res["processes"] = 1 + len(base._children(proc.pid))
        log(f"    {workers} worker(s)  {res['rps']:>7.0f} req/s  {res['cpu_us_per_request']:6.0f} µs CPU/request  "
            f"p50 {res['p50_us'] / 1000:5.2f} ms  errors {res['error_count']}  processes {res['processes']}")
        if res["error_count"]:
            raise BenchError(f"{res['error_count']} errors with {workers} worker(s)")
        return res
    finally:
        procs.stop(proc)


def forget(redis_url: str, prefix: str) -> None:
    """Delete the run's keys (through the gateway's venv, which has a Redis client)."""
    code = ("import redis,sys; r=redis.Redis.from_url(sys.argv[1]); keys=list(r.scan_iter(match=sys.argv[2]+'*'));"
            " keys and r.delete(*keys)")
    subprocess.run([str(base.GATEWAY_PYTHON), "-c", code, redis_url, prefix], check=False, timeout=60)


def run_pairs(args: argparse.Namespace, wrk: str, python: Path) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {"1": [], "2": []}
    workdir = Path(tempfile.mkdtemp(prefix="gateway-workers-bench-"))
    procs = Processes(workdir)
    prefix = f"bench-workers:{uuid.uuid4().hex[:12]}:"
    try:
        mock, mock_port = side_by_side.start_mock(procs, python)
        for rep in range(args.repeats):
            order = (1, 2) if rep % 2 == 0 else (2, 1)
            log(f"[{rep + 1}/{args.repeats}] chat, {args.connections} paced connections, {args.delay_ms} ms apart")
            for workers in order:
                results[str(workers)].append(measure(args, procs, workdir, mock_port, wrk, workers, prefix))
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
        forget(args.redis_url, prefix)
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=8, help="seconds measured per run (default 8)")
    p.add_argument("--warmup", type=int, default=2, help="seconds of warm-up before each run (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="pairs of runs (default 3)")
    p.add_argument("--connections", type=int, default=16, help="paced wrk connections (default 16)")
    p.add_argument("--delay-ms", type=int, default=20, help="pause of each connection before a request (default 20)")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="the Redis both configurations share")
    args = p.parse_args(argv)
    if args.duration < 1 or args.repeats < 1 or args.warmup < 0 or args.connections < 1 or args.delay_ms < 1:
        p.error("--duration, --repeats, --connections and --delay-ms must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, base._raise_interrupt)
    try:
        wrk, python = side_by_side.prepare()
        results = run_pairs(args, wrk, python)
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    cpu = {k: statistics.median(r["cpu_us_per_request"] for r in v) for k, v in results.items()}
    rps = {k: statistics.median(r["rps"] for r in v) for k, v in results.items()}
    ratio = cpu["2"] / cpu["1"]
    spread = {k: [round(r["cpu_us_per_request"]) for r in v] for k, v in results.items()}
    base.RESULTS.mkdir(exist_ok=True)
    RESULTS_FILE.write_text(json.dumps({"args": vars(args), "cpu_us_per_request": cpu, "rps": rps, "ratio": ratio,
                                        "target": TARGET_RATIO, "runs": results}, indent=2, default=str))
    print(f"paced chat, medians of {args.repeats}: one worker {cpu['1']:.0f} µs CPU/request at {rps['1']:.0f} req/s "
          f"(runs {spread['1']}), two workers {cpu['2']:.0f} µs at {rps['2']:.0f} req/s (runs {spread['2']}); "
          f"2/1 = {ratio:.3f} (target <= {TARGET_RATIO}: {'met' if ratio <= TARGET_RATIO else 'MISSED'})")
    return 0 if ratio <= TARGET_RATIO else 2


if __name__ == "__main__":
    sys.exit(main())
