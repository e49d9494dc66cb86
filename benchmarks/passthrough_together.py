"""The gateway against the bare aiohttp passthrough at chat c64, side by side: both started at once on core 1,
each under its own wrk for the same seconds (benchmarks/side_by_side.py).

    python benchmarks/passthrough_together.py [--rounds 5] [--duration 5] [--warmup 1] [--concurrency 64]

run.py measures its targets one after the other, each alone on core 1; on a shared host whose speed drifts by
tens of percent within minutes, the ratio of two such medians moves with the drift. Here each gets about half
of the core at the same moments, so the ratio of their throughputs is that of their CPU per request. The
gateway is the benchmark's (``python -m gateway``, in-memory store, its default chain, metrics on); the
passthrough is ``passthrough.py --client aiohttp``. The mock upstream and both wrk share core 0.

Prints each round and one line ``BENCH_RESULT {json}`` with the median of the rounds' ratios (gateway /
passthrough; the product target is ≥ 0.60) and writes benchmarks/results/passthrough-together-latest.json.
Every process it starts is stopped by its PID, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
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

TARGET_RATIO = base.TARGET_THROUGHPUT_VS_PASSTHROUGH
RESULTS_FILE = base.RESULTS / "passthrough-together-latest.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="fresh pairs measured (default 5)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured per round (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per round (default 1)")
    p.add_argument("--concurrency", type=int, default=64, help="connections of each wrk (default 64)")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.duration < 1 or args.warmup < 0 or args.concurrency < 1:
        p.error("--rounds, --duration and --concurrency must be ≥ 1, --warmup ≥ 0")
    return args


def one_round(args: argparse.Namespace, procs: Processes, workdir: Path, wrk: str, python: Path,
              mock_port: int) -> dict[str, dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    gateway, gateway_port = side_by_side.start_gateway(procs, workdir, mock_port, env)
    passthrough_port = base.free_port()
    argv = [str(python), str(base.BENCH_DIR / "passthrough.py"), "--upstream", f"http://127.0.0.1:{mock_port}",
            "--port", str(passthrough_port), "--client", "aiohttp"]
    passthrough = procs.start("passthrough", argv, base.TARGET_CORE, env)
    try:
        base.wait_first_answer(passthrough, passthrough_port, False, 30)
        base.validate(gateway_port, True)
        base.validate(passthrough_port, False)
        ports = {"gateway": gateway_port, "passthrough": passthrough_port}
        if args.warmup > 0:
            side_by_side.load_together(wrk, ports, args.warmup, args.concurrency)
        results = side_by_side.load_together(wrk, ports, args.duration, args.concurrency)
    finally:
        procs.stop(gateway)
        procs.stop(passthrough)
    for name, res in results.items():
        if res["error_count"]:
            raise BenchError(f"{name} answered {res['error_count']} errors")
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, base._raise_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="gateway-passthrough-together-"))
    procs = Processes(workdir)
    rounds: list[dict[str, dict]] = []
    try:
        wrk, python = side_by_side.prepare()
        mock, mock_port = side_by_side.start_mock(procs, python)
        for n in range(1, args.rounds + 1):
            res = one_round(args, procs, workdir, wrk, python, mock_port)
            rounds.append(res)
            log(f"[{n}/{args.rounds}] chat c{args.concurrency}: gateway {res['gateway']['rps']:.0f} req/s, "
                f"passthrough {res['passthrough']['rps']:.0f} req/s, "
                f"ratio {res['gateway']['rps'] / res['passthrough']['rps']:.3f}")
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    ratios = [round(r["gateway"]["rps"] / r["passthrough"]["rps"], 3) for r in rounds]
    out = {
        "rps_gateway": statistics.median(r["gateway"]["rps"] for r in rounds),
        "rps_passthrough": statistics.median(r["passthrough"]["rps"] for r in rounds),
        "ratio": statistics.median(ratios),
        "round_ratios": ratios,
        "target": TARGET_RATIO,
    }
    out["met"] = out["ratio"] >= TARGET_RATIO
    base.RESULTS.mkdir(exist_ok=True)
    RESULTS_FILE.write_text(json.dumps({"args": vars(args), **out, "runs": rounds}, indent=2))
    print("BENCH_RESULT " + json.dumps(out))
    return 0 if out["met"] else 2


if __name__ == "__main__":
    sys.exit(main())
