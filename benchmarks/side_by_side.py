"""Two gateways measured side by side at the same time: both started on the target core, each loaded by its own
wrk for the same seconds. Each gets about half the core, so each one's throughput is the inverse of its CPU per
request, and a host whose speed drifts (other work on a shared machine) slows both alike: the ratio of their
throughputs is that of their CPU per request. Used by traces_overhead.py and metrics_overhead.py (--together).
Stdlib only (run.py's helpers)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import run as base


def prepare() -> tuple[str, Path]:
    """What these benchmarks need, checked and made once: taskset and two cores (the gateways on core 1, the load
    and the upstream on core 0), the repository's .venv, wrk, and the benchmarks' own venv, whose Python runs
    the mock upstream and the passthrough. Returns (wrk, that Python)."""
    if not shutil.which("taskset") or (os.cpu_count() or 1) < 2:
        raise base.BenchError("needs taskset and at least 2 cores (gateway on core 1; load and upstream on core 0)")
    if not base.GATEWAY_PYTHON.exists():
        raise base.BenchError("the repository's .venv is missing (make install)")
    return base.ensure_wrk(), base.ensure_venv(base.BENCH_VENV, base.BENCH_DIR / "requirements.txt")


def start_mock(procs: base.Processes, python: Path, delay_ms: float = 0.0) -> tuple[base.Proc, int]:
    """The mock upstream on core 0 (``python``: the benchmarks' venv's), once it answers."""
    port = base.free_port()
    argv = [str(python), str(base.BENCH_DIR / "mock_upstream.py"), "--port", str(port), "--chunks", str(base.CHUNKS),
            "--chunk-delay-ms", str(delay_ms)]
    mock = procs.start("mock", argv, base.LOAD_CORE)
    base.wait_first_answer(mock, port, False, 30)
    return mock, port


def start_gateway(procs: base.Processes, workdir: Path, mock_port: int, env: dict[str, str]) -> tuple[base.Proc, int]:
    port = base.free_port()
    config = workdir / "gateway-bench.yaml"
    config.write_text(base.GATEWAY_CATALOG.format(port=mock_port))
    argv = [
        str(base.GATEWAY_PYTHON),
        "-m",
        "gateway",
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    proc = procs.start("gateway", argv, base.TARGET_CORE, env, cwd=base.REPO)
    base.wait_first_answer(proc, port, True, 60)
    return proc, port


def load_together(
    wrk: str,
    ports: dict[str, int],
    seconds: float,
    connections: int,
    script: Path = base.WRK_SCRIPT,
    envs: dict[str, dict[str, str]] | None = None,
) -> dict[str, dict]:
    """One wrk per gateway (chat, with ``script`` and its gateway's ``envs``), all at once (in threads); the first
    failure is raised."""
    results: dict[str, dict] = {}
    failed: list[BaseException] = []

    def load(name: str) -> None:
        try:
            extra = (envs or {}).get(name)
            results[name] = base.run_wrk(
                wrk, ports[name], base.CHAT_BODY, True, connections, seconds, script=script, extra_env=extra
            )
        except BaseException as exc:  # re-raised by the main thread
            failed.append(exc)

    threads = [threading.Thread(target=load, args=(name,)) for name in ports]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failed:
        raise failed[0]
    return results


def measure_together(
    wrk: str,
    procs: base.Processes,
    workdir: Path,
    mock_port: int,
    envs: dict[str, dict[str, str]],
    args: Any,
    check: Callable[[str, int, dict], None] | None = None,
) -> dict[str, dict]:
    """Both gateways started, then loaded at the same time, each by its own wrk (``args.warmup`` then
    ``args.duration`` seconds at ``args.connections``); ``check(name, port, result)`` runs on each before it
    stops."""
    started = {name: start_gateway(procs, workdir, mock_port, env) for name, env in envs.items()}
    ports = {name: port for name, (_, port) in started.items()}
    try:
        for port in ports.values():
            base.validate(port, True)
        warm = load_together(wrk, ports, args.warmup, args.connections) if args.warmup > 0 else {}
        cpu0 = {name: base.cpu_seconds(proc.pid) for name, (proc, _) in started.items()}
        t0 = time.monotonic()
        results = load_together(wrk, ports, args.duration, args.connections)
        elapsed = time.monotonic() - t0
        for name, (proc, _) in started.items():
            res = results[name]
            res["cpu_pct"] = 100.0 * (base.cpu_seconds(proc.pid) - cpu0[name]) / elapsed
            res["all_requests"] = res["requests"] + warm.get(name, {}).get("requests", 0) + 3
            if check is not None:
                check(name, ports[name], res)
        return results
    finally:
        for proc, _ in started.values():
            procs.stop(proc)
