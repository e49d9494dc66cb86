"""Where a request's Python goes, counted, not timed: the bytecodes each function of the gateway runs per chat
request, with traces off and on (or metrics off and on), and the difference per function. A count does not
drift with the host's load as a time does, so it tells one change's worth apart where the side-by-side ratios
(traces_overhead.py, metrics_overhead.py) cannot; on these requests the bytecodes a feature adds have tracked
its CPU within a few percent (docs/benchmarks.md).

    python3 benchmarks/bytecodes.py [--feature traces|metrics] [--seconds 4] [--top 40] [--lines request_trace.py]

Each gateway runs on core 1 under wrk (chat, 16 connections; 2 s of warm-up, then ``--seconds`` counted) with
``bytecode_counter/sitecustomize.py`` loaded, which counts between two signals. Traces go to a loopback OTLP
receiver (otlp_sink.py). Stdlib only (run.py's helpers); needs the repository's .venv and wrk. Every process is
stopped by its PID.
"""

from __future__ import annotations

import argparse
import linecache
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as base  # noqa: E402
import side_by_side  # noqa: E402
import traces_overhead  # noqa: E402

COUNTER = base.BENCH_DIR / "bytecode_counter"

Counts = dict[tuple[str, str], float]


def count(
    wrk: str, procs: base.Processes, workdir: Path, mock_port: int, env: dict[str, str], seconds: float, name: str
) -> tuple[Counts, int]:
    """One gateway's bytecodes per request, by (function, where), and the requests counted."""
    out = workdir / f"{name}.tsv"
    env = {**env, "PYTHONPATH": str(COUNTER), "BYTECODES_OUT": str(out)}
    proc, port = side_by_side.start_gateway(procs, workdir, mock_port, env)
    try:
        base.run_wrk(wrk, port, base.CHAT_BODY, True, 16, 2)
        os.kill(proc.pid, signal.SIGUSR1)
        time.sleep(0.2)
        base.run_wrk(wrk, port, base.CHAT_BODY, True, 16, seconds)
        time.sleep(0.5)  # the last answers sent
        os.kill(proc.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while not out.exists():
            if time.monotonic() > deadline:
                raise base.BenchError("the counter wrote nothing")
            time.sleep(0.1)
    finally:
        procs.stop(proc)
    rows: dict[tuple[str, str], int] = {}
    for line in out.read_text().splitlines():
        n, function, where = line.split("\t")
        rows[(function, where)] = int(n)
    requests = rows.pop(("<requests>", ":0"), 0)
    if not requests:
        raise base.BenchError("no request was counted")
    return {key: n / requests for key, n in rows.items()}, requests


def short(where: str) -> str:
    path, _, line = where.rpartition(":")
    parts = Path(path).parts
    for anchor in ("gateway", "policies", "config", "site-packages"):
        if anchor in parts:
            parts = parts[parts.index(anchor) + (anchor == "site-packages") :]
            break
    return f"{'/'.join(parts)}:{line}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--feature", choices=("traces", "metrics"), default="traces")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of load counted per gateway")
    parser.add_argument("--top", type=int, default=40, help="functions shown, by the difference")
    parser.add_argument("--lines", default="", help="file name fragments whose lines are also counted (with on)")
    args = parser.parse_args(argv)
    wrk, bench_python = side_by_side.prepare()
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bytecodes-"))
    procs = base.Processes(workdir)
    try:
        mock, mock_port = side_by_side.start_mock(procs, bench_python)
        plain = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        if args.feature == "traces":
            on, off = traces_overhead.traced_env(plain, traces_overhead.start_sink(procs)), plain
        else:
            on, off = plain, {**plain, "GATEWAY_METRICS_ENABLED": "false"}
        before, n_off = count(wrk, procs, workdir, mock_port, off, args.seconds, "off")
        after, n_on = count(wrk, procs, workdir, mock_port, {**on, "BYTECODES_LINES": args.lines}, args.seconds, "on")
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    functions = {k for k in before.keys() | after.keys() if k[0] != "<line>"}
    total_off = sum(v for k, v in before.items() if k[0] != "<line>")
    total_on = sum(v for k, v in after.items() if k[0] != "<line>")
    print(
        f"{args.feature}: off {total_off:,.0f} bytecodes per request ({n_off} requests), on {total_on:,.0f} "
        f"({n_on} requests): {total_on - total_off:+,.0f}, {total_on / total_off:.3f}x"
    )
    print(f"\n{'diff':>8} {'off':>7} {'on':>7}  function")
    ranked = sorted(functions, key=lambda k: -abs(after.get(k, 0) - before.get(k, 0)))
    for key in ranked[: args.top]:
        a, b = before.get(key, 0.0), after.get(key, 0.0)
        print(f"{b - a:+8.1f} {a:7.1f} {b:7.1f}  {key[0]}  {short(key[1])}")
    if args.lines:
        print("\nper line (on):")
        lines = sorted(
            (k[1].rpartition(":")[0], int(k[1].rpartition(":")[2]), v) for k, v in after.items() if k[0] == "<line>"
        )
        for path, number, n in lines:
            if n >= 0.5:
                print(f"{n:7.1f}  {short(f'{path}:{number}')}  {linecache.getline(path, number).strip()[:100]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
