"""What tracing costs: chat c64 through the gateway with traces off and with traces exported at 100 % sampling
to a loopback OTLP/HTTP receiver, measured side by side in one run (alternating, each gateway started fresh; or,
with --together, both gateways at once on the same core).

    python benchmarks/traces_overhead.py [--duration 5] [--warmup 1] [--rounds 2] [--sample-ratio 1] [--together]

Prints each measurement, then one line ``BENCH_RESULT {json}`` with the medians, their ratio (traces on / off;
the target is >= 0.90; with --together, the median of the rounds' ratios) and each round's ratio, and the
spans the receiver got against the requests answered.
Alternating, the gateway runs alone on core 1; with --together both gateways share core 1 (each gets half of it,
so each one's throughput is the inverse of its CPU per request, and a host whose speed drifts slows both alike).
The mock upstream, wrk and the receiver (benchmarks/otlp_sink.py) share core 0. Stdlib only (run.py's helpers);
needs the repository's .venv (`make install`) and wrk. Every process is stopped by its PID.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as base  # noqa: E402
import side_by_side  # noqa: E402
from side_by_side import measure_together, start_gateway  # noqa: E402

TARGET_RATIO = 0.90


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2, help="off/on pairs")
    parser.add_argument("--sample-ratio", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--together",
        action="store_true",
        help="run both gateways at once on the same core, each under its own wrk, so that a machine whose speed "
        "drifts (other work on the host) slows both alike: the ratio of their throughputs is that of their CPU "
        "per request",
    )
    return parser.parse_args(argv)


def sink_stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as answer:
        return json.loads(answer.read())


def wait_sink(port: int, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            sink_stats(port)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise base.BenchError("the OTLP receiver did not start") from None
            time.sleep(0.05)


def start_sink(procs: base.Processes) -> int:
    """The loopback OTLP receiver on core 0, once it answers; returns its port."""
    port = base.free_port()
    argv = [str(base.GATEWAY_PYTHON), str(base.BENCH_DIR / "otlp_sink.py"), "--port", str(port)]
    procs.start("otlp-sink", argv, base.LOAD_CORE)
    wait_sink(port)
    return port


def traced_env(plain: dict[str, str], sink_port: int, sample_ratio: float = 1.0) -> dict[str, str]:
    """``plain`` with traces on, exported to the receiver at ``sink_port``."""
    return {
        **plain,
        "GATEWAY_TRACES": "true",
        "GATEWAY_TRACES_ENDPOINT": f"http://127.0.0.1:{sink_port}/v1/traces",
        "GATEWAY_TRACES_SAMPLE_RATIO": str(sample_ratio),
    }


def measure(
    wrk: str, procs: base.Processes, workdir: Path, mock_port: int, env: dict[str, str], args: argparse.Namespace
) -> dict:
    proc, port = start_gateway(procs, workdir, mock_port, env)
    try:
        base.validate(port, True)
        warm = base.run_wrk(wrk, port, base.CHAT_BODY, True, args.connections, args.warmup) if args.warmup > 0 else {}
        cpu0, t0 = base.cpu_seconds(proc.pid), time.monotonic()
        res = base.run_wrk(wrk, port, base.CHAT_BODY, True, args.connections, args.duration)
        res["cpu_pct"] = 100.0 * (base.cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
        res["all_requests"] = res["requests"] + warm.get("requests", 0) + 3  # + the first answer and validate's two
        return res
    finally:
        procs.stop(proc)  # SIGTERM: the gateway exports its last spans before it exits


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk, bench_python = side_by_side.prepare()
    workdir = Path(tempfile.mkdtemp(prefix="gateway-traces-"))
    procs = base.Processes(workdir)
    results: dict[str, list[dict]] = {"off": [], "on": []}
    try:
        mock, mock_port = side_by_side.start_mock(procs, bench_python)
        sink_port = start_sink(procs)
        plain = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        traced = traced_env(plain, sink_port, args.sample_ratio)
        answered = 0
        for n in range(1, args.rounds + 1):
            together = (
                measure_together(wrk, procs, workdir, mock_port, {"off": plain, "on": traced}, args)
                if args.together
                else {}
            )
            for name, env in (("off", plain), ("on", traced)):
                res = together[name] if args.together else measure(wrk, procs, workdir, mock_port, env, args)
                results[name].append(res)
                if name == "on":
                    answered += res["all_requests"]
                base.log(
                    f"[{n}/{args.rounds}] traces {name:<3} {res['rps']:>8.0f} req/s  p50 {res['p50_us'] / 1000:6.2f} ms"
                    f"  p99 {res['p99_us'] / 1000:6.2f} ms  errors {res['error_count']}  cpu {res['cpu_pct']:.0f}%"
                )
        stats = sink_stats(sink_port)
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    off = statistics.median(r["rps"] for r in results["off"])
    on = statistics.median(r["rps"] for r in results["on"])
    pairs = [b["rps"] / a["rps"] for a, b in zip(results["off"], results["on"], strict=True) if a["rps"]]
    # together, each round's two gateways shared the same seconds of the same core: the median of the rounds'
    # ratios is free of the host's drift, the ratio of the medians is not
    ratio = statistics.median(pairs) if args.together and pairs else (on / off if off else 0.0)
    summary = {
        "mode": "together" if args.together else "alternating",
        "rps_off": round(off),
        "rps_on": round(on),
        "ratio": round(ratio, 3),
        "round_ratios": [round(r, 3) for r in pairs],  # each round's on / off: the spread
        "target": TARGET_RATIO,
        "met": ratio >= TARGET_RATIO,
        "sample_ratio": args.sample_ratio,
        "receiver": stats,
        "traced_requests": answered,  # spans expected: about 6 per chat (server, chat, attempt, allow_list, store)
        "spans_per_traced_request": round(stats["spans"] / answered, 2) if answered else None,
    }
    print("BENCH_RESULT " + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
