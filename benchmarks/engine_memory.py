"""The `memory` suite of benchmarks/run_engine.py: the gateway's peak RSS under the Responses scenarios.

One fresh gateway per configuration (the in-memory store with its limit off, at its default and at a small one;
then Redis), each put through the same load: `--repeats` rounds of the four Responses scenarios of the
`responses` and `store` suites, `--duration` s each after `--warmup` s, on the same process, so that what the
store keeps adds up. Peak RSS is the kernel's high-water mark of the gateway process (`VmHWM` in
/proc/<pid>/status) at the end; VmRSS is also read after every round to show whether it levels off.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import engine_report as report
import run as base
from engine_suites import RESP_PLAIN, RESP_STREAM, check_responses, vm_kb
from run import BenchError, log

if TYPE_CHECKING:
    from run_engine import Bench

SETTING = "GATEWAY_MEMORY_STORE_MAX_BYTES"
DEFAULT_LIMIT = 256 * 1024 * 1024  # config/settings.py's default, named in the table
EVICTION_LOG = f"{SETTING}="  # the store's one-time WARNING names the setting and its value
SCENARIOS = [  # name, path, body, connections, stores a response
    ("responses stream c32", "/v1/responses", RESP_STREAM, 32, True),
    ("responses stream c32, store false", "/v1/responses", {**RESP_STREAM, "store": False}, 32, False),
    ("store true c1", "/v1/responses", {**RESP_PLAIN, "store": True}, 1, True),
    ("store false c1", "/v1/responses", {**RESP_PLAIN, "store": False}, 1, False),
]
TARGET_PEAK_OVER_LIMIT = 1.5
# The store before it had a limit (commit 1632305), measured once by this suite with `--memory-limits 0`.
BEFORE = ("Before the store had a limit, and before it kept an exact-size copy of each value (orjson's output "
          "holds its whole working\nbuffer: 16 KiB for a 1.5 KB record), the same load took the gateway from 59 to "
          "1,103 MB (438 → 783 → 1103 MB after\neach round, 61,052 responses stored; measured 2026-12-02 on this "
          "machine; Redis: 64 MB).")  # the peak RSS above idle, at most this many times the limit


def parse_limits(text: str) -> list[int | None]:
    """`--memory-limits`: bytes, `NMiB`, or `default` (the setting left unset), comma-separated; 0 = no limit."""
    out: list[int | None] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part == "default":
            out.append(None)
        elif part.lower().endswith("mib"):
            out.append(int(part[:-3]) * 1024 * 1024)
        else:
            out.append(int(part))
    return out


def label_of(limit: int | None) -> str:
    if limit == 0:
        return "in-memory store, no limit (`0`)"
    if limit is None:
        return f"in-memory store, default limit ({DEFAULT_LIMIT // 1024 // 1024} MiB)"
    return f"in-memory store, {limit / 1024 / 1024:g} MiB limit"


def _load(b: Bench, proc: base.Proc, port: int, res: dict) -> None:
    """One round: every scenario once, warm-up then measured; the wrk results are appended to `res`."""
    for name, path, body, conc, stores in SCENARIOS:
        if b.args.warmup > 0:
            warm = base.run_wrk(b.wrk, port, body, True, conc, b.args.warmup, path)
            res["stored"] += warm["requests"] if stores else 0
        # One run per scenario, never taken again (a retry would store more in this configuration than in
        # the others); the foreign CPU it saw is reported all the same.
        ours = {os.getpid(), *b.our_pids()}
        snap0, cpu0, t0 = base.cpu_snapshot(), base.cpu_seconds(proc.pid), time.monotonic()
        run = base.run_wrk(b.wrk, port, body, True, conc, b.args.duration, path)
        elapsed = time.monotonic() - t0
        run["cpu_pct"] = 100.0 * (base.cpu_seconds(proc.pid) - cpu0) / elapsed
        run["background_pct"] = 100.0 * base.background_cpu(snap0, base.cpu_snapshot(), ours) / elapsed
        res["stored"] += run["requests"] if stores else 0
        res["scenarios"][name].append(run)
        log(f"    {name:<34} {run['rps']:>8.0f} req/s  p99 {run['p99_us'] / 1000:6.2f} ms  "
            f"errors {run['error_count']}  RSS {vm_kb(proc.pid, 'VmRSS') / 1000:.0f} MB")
        if proc.popen.poll() is not None:
            raise BenchError(f"{proc.name} exited during the run:\n{proc.log_tail()}")


def measure_config(b: Bench, mock_port: int, limit: int | None, redis: bool) -> dict:
    env = {} if limit is None or redis else {SETTING: str(limit)}
    proc, port = b.start_gateway(mock_port, redis_url=b.redis_url() if redis else None, name="memory", env=env)
    try:
        check_responses(port)
        time.sleep(1.0)
        res: dict = {"limit": limit, "redis": redis, "idle_rss_mb": vm_kb(proc.pid, "VmRSS") / 1000,
                     "rss_after_round_mb": [], "stored": 0, "scenarios": {s[0]: [] for s in SCENARIOS}}
        for rnd in range(1, b.args.repeats + 1):
            log(f"  round {rnd}/{b.args.repeats}")
            _load(b, proc, port, res)
            res["rss_after_round_mb"].append(vm_kb(proc.pid, "VmRSS") / 1000)
        res["peak_rss_mb"] = vm_kb(proc.pid, "VmHWM") / 1000
        res["eviction_logs"] = proc.log_path.read_text(errors="replace").count(EVICTION_LOG)
    finally:
        b.stop(proc, redis=redis)
    log(f"    idle {res['idle_rss_mb']:.0f} MB, peak (VmHWM) {res['peak_rss_mb']:.0f} MB, "
        f"{res['stored']:,} responses stored, eviction warnings in the log: {res['eviction_logs']}")
    return res


def suite_memory(b: Bench) -> dict:
    out: dict = {"configs": {}, "setting": SETTING}
    mock, mock_port = b.start_mock()
    configs = [(label_of(limit), limit, False) for limit in b.args.memory_limits] + [("Redis", None, True)]
    for label, limit, redis in configs:
        log(f"[memory] gateway, {label}")
        out["configs"][label] = measure_config(b, mock_port, limit, redis)
    b.procs.stop(mock)
    out["redis"] = b.redis
    return out


# ------------------------------------------------------------------------------------------------- report


def checks(data: dict) -> list[dict]:
    """With a limit, the peak RSS above idle stays within TARGET_PEAK_OVER_LIMIT × the limit."""
    out = []
    for label, c in data["configs"].items():
        limit = DEFAULT_LIMIT if c["limit"] is None else c["limit"]
        if c["redis"] or not limit:
            continue
        growth = c["peak_rss_mb"] - c["idle_rss_mb"]
        ratio = growth * 1e6 / limit
        out.append(report._check(f"{label}: (peak − idle RSS) ÷ limit", ratio, "{:.2f}",
                                 f"≤ {TARGET_PEAK_OVER_LIMIT}", ratio <= TARGET_PEAK_OVER_LIMIT))
    return out


def _rss_table(data: dict) -> str:
    lines = ["| configuration | responses stored | idle RSS MB | RSS after each round MB | peak RSS (VmHWM) MB "
             "| eviction warnings logged |", "|---|---|---|---|---|---|"]
    for label, c in data["configs"].items():
        rounds = " → ".join(f"{v:.0f}" for v in c["rss_after_round_mb"])
        warned = "–" if c["redis"] else str(c["eviction_logs"])
        lines.append(f"| {label} | {c['stored']:,} | {c['idle_rss_mb']:.0f} | {rounds} | {c['peak_rss_mb']:.0f} "
                     f"| {warned} |")
    return "\n".join(lines)


def render(data: dict) -> str:
    meta = data["meta"]
    rows = [(label, name, report.summary(runs)) for label, c in data["configs"].items()
            for name, runs in c["scenarios"].items()]
    redis = f" Redis: {report.redis_desc(data['redis'])}." if data.get("redis") else ""
    return f"""### Memory: peak RSS of the gateway under the Responses scenarios

{report.preamble(meta)}
One fresh gateway per configuration, put through {meta["repeats"]} rounds of the four Responses scenarios of the
sections above (`POST /v1/responses` streamed at c32, with `"store": true` and `false`; not streamed at c1, with
`"store": true` and `false`), {meta["duration"]} s each after {meta["warmup"]} s of warm-up, on the same process so
that what the store keeps adds up. The in-memory store's limit is `{data["setting"]}` (`0`: no limit, as the
store was before it had one); on Redis the gateway keeps nothing itself.{redis} *Peak RSS* is the kernel's
high-water mark of the gateway process (`VmHWM`) at the end; *responses stored* counts the answered requests
with `"store": true`, warm-ups included. An *eviction warning* is the store's one-time log line when it first
evicts.

{_rss_table(data)}

{BEFORE}

The throughput below shows the load each gateway took, not a comparison: no measurement here is taken again
when other processes use the CPU (a retry would store more in one configuration than in the others), so the
background column says how busy the machine was meanwhile.

{report.scenario_table(rows)}

{report.checks_table(checks(data))}
"""
