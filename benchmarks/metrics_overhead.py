"""What Prometheus metrics cost: chat at concurrency 64 through the gateway with metrics on and off, side by side.

    python benchmarks/metrics_overhead.py [--duration 6] [--repeats 3] [--concurrency 64] [--warmup 1] [--together]

On run.py's harness (stdlib only; its helpers, pinning and background-CPU check): one mock upstream, then per
repeat a fresh gateway with metrics on (``GATEWAY_METRICS_ENABLED=true``, the default) and one with them off, in
alternating order (on, off, off, on, ...) so that a drift of the machine hits both alike. Each gateway is the
benchmark's (``python -m gateway``, in-memory store, no policies), pinned on core 1; wrk and the mock share core 0.
After each "on" run the script scrapes ``/metrics`` once and checks that the requests were counted. With
``--together`` each repeat starts both gateways at once on core 1, each under its own wrk for the same seconds
(benchmarks/side_by_side.py): the ratio of their throughputs is that of their CPU per request, whatever the
host's speed does meanwhile.

Prints the medians and their ratio (on / off; the target is ≥ 0.97) and writes
benchmarks/results/metrics-latest.json. Every process it starts is stopped by its PID, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as base  # noqa: E402
import side_by_side  # noqa: E402
from run import BenchError, Processes, log  # noqa: E402
from side_by_side import measure_together  # noqa: E402

TARGET_RATIO = 0.97
RESULTS_FILE = base.RESULTS / "metrics-latest.json"


def gateway_env(metrics: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env["GATEWAY_METRICS_ENABLED"] = "true" if metrics else "false"
    return env


def start_gateway(procs: Processes, workdir: Path, mock_port: int, metrics: bool) -> tuple[base.Proc, int]:
    return side_by_side.start_gateway(procs, workdir, mock_port, gateway_env(metrics))


def counted_requests(port: int) -> float:
    """The sum of ``gateway_requests_total`` on a gateway's /metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        answer = conn.getresponse()
        text = answer.read().decode()
    finally:
        conn.close()
    if answer.status != 200:
        raise BenchError(f"/metrics answered {answer.status}")
    lines = text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("gateway_requests_total{"))


def measure(args: argparse.Namespace, procs: Processes, workdir: Path, mock: base.Proc, mock_port: int,
            wrk: str, metrics: bool) -> dict:
    if args.budget.left > 0:
        base.wait_quiet({os.getpid(), mock.pid}, args.max_background, args.budget, 20)
    proc, port = start_gateway(procs, workdir, mock_port, metrics)
    try:
        res = base.measure_scenario(wrk, proc, mock, port, True, False, args.concurrency, args)
        if metrics and counted_requests(port) < res["requests"]:
            raise BenchError("the gateway with metrics on did not count the requests it answered")
        log(f"    metrics {'on ' if metrics else 'off'}  {res['rps']:>9.0f} req/s  p50 {res['p50_us'] / 1000:6.2f} ms  "
            f"p99 {res['p99_us'] / 1000:6.2f} ms  errors {res['error_count']}  cpu {res['cpu_pct']:.0f}%  "
            f"background {res['background_pct']:.0f}%")
        return res
    finally:
        procs.stop(proc)


def run_pairs(args: argparse.Namespace, wrk: str, python: Path) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {"on": [], "off": []}
    workdir = Path(tempfile.mkdtemp(prefix="gateway-metrics-bench-"))
    procs = Processes(workdir)
    try:
        mock, mock_port = side_by_side.start_mock(procs, python)
        for rep in range(args.repeats):
            order = (True, False) if rep % 2 == 0 else (False, True)
            log(f"[{rep + 1}/{args.repeats}] chat c{args.concurrency}")
            if args.together:
                envs = {"on": gateway_env(True), "off": gateway_env(False)}
                both = measure_together(wrk, procs, workdir, mock_port, envs, args, check_counted)
                for name in ("on", "off"):
                    res = both[name]
                    results[name].append(res)
                    log(f"    metrics {name:<3}  {res['rps']:>9.0f} req/s  p50 {res['p50_us'] / 1000:6.2f} ms  "
                        f"errors {res['error_count']}  cpu {res['cpu_pct']:.0f}%")
                continue
            for metrics in order:
                results["on" if metrics else "off"].append(
                    measure(args, procs, workdir, mock, mock_port, wrk, metrics)
                )
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def check_counted(name: str, port: int, res: dict) -> None:
    if name == "on" and counted_requests(port) < res["requests"]:
        raise BenchError("the gateway with metrics on did not count the requests it answered")


def summary(results: dict[str, list[dict]], together: bool = False) -> dict:
    """The medians and their ratio; run together, the ratio is the median of the rounds' ratios (each round's two
    gateways shared the same seconds of the same core, so their ratio is free of the host's drift)."""
    med = {k: statistics.median(r["rps"] for r in v) for k, v in results.items()}
    cpu = {k: statistics.median(r["cpu_pct"] for r in v) for k, v in results.items()}
    rounds = [on["rps"] / off["rps"] for on, off in zip(results["on"], results["off"], strict=True) if off["rps"]]
    if together:
        ratio = statistics.median(rounds) if rounds else 0.0
    else:
        ratio = med["on"] / med["off"] if med["off"] else 0.0
    return {"rps": med, "cpu_pct": cpu, "ratio": ratio, "round_ratios": [round(r, 3) for r in rounds],
            "target": TARGET_RATIO, "met": ratio >= TARGET_RATIO}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=6, help="seconds measured per run (default 6)")
    p.add_argument("--warmup", type=int, default=1, help="seconds of warm-up before each run (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="pairs of runs, on and off (default 3)")
    p.add_argument("--concurrency", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--max-background", type=float, default=10.0, help="as run.py (%% of a core, default 10)")
    p.add_argument("--retries", type=int, default=2, help="as run.py (default 2)")
    p.add_argument("--quiet-budget", type=float, default=120.0, help="as run.py, seconds (default 120)")
    p.add_argument("--together", action="store_true",
                   help="both gateways at once on core 1, each under its own wrk (robust to a drifting host)")
    args = p.parse_args(argv)
    args.connections = args.concurrency
    if args.duration < 1 or args.repeats < 1 or args.warmup < 0 or args.concurrency < 1:
        p.error("--duration, --repeats and --concurrency must be ≥ 1, --warmup ≥ 0")
    args.budget = base.QuietBudget(args.quiet_budget)
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
    out = summary(results, args.together)
    base.RESULTS.mkdir(exist_ok=True)
    RESULTS_FILE.write_text(json.dumps({"args": {"duration": args.duration, "repeats": args.repeats,
                                                 "concurrency": args.concurrency, "together": args.together},
                                        **out, "runs": results}, indent=2))
    print(f"chat c{args.concurrency}, medians of {args.repeats}: metrics on {out['rps']['on']:.0f} req/s "
          f"(cpu {out['cpu_pct']['on']:.0f}%), off {out['rps']['off']:.0f} req/s (cpu {out['cpu_pct']['off']:.0f}%); "
          f"on/off = {out['ratio']:.3f} (target ≥ {TARGET_RATIO}: {'met' if out['met'] else 'MISSED'}); "
          f"rounds {out['round_ratios']}")
    return 0 if out["met"] else 2


if __name__ == "__main__":
    sys.exit(main())
