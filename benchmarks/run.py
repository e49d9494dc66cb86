"""Side-by-side throughput and latency benchmark: mock upstream, passthrough proxies, the gateway, LiteLLM.

    python benchmarks/run.py [--duration 6] [--repeats 3] [--only gateway,passthrough] [--chunk-delay-ms 0]

Stdlib only: it can be started with any Python 3.11. It creates what it needs on first use:
  benchmarks/.venv-bench    the mock upstream and the passthrough proxies (benchmarks/requirements.txt)
  benchmarks/.venv-litellm  LiteLLM's proxy (benchmarks/requirements-litellm.txt)
The gateway runs from the repository's .venv (`make install`). The load generator is wrk.

Pinning: every target runs on core 1 (taskset -c 1); the mock upstream and wrk share core 0. All servers bind
127.0.0.1 on free ports; every process started here is stopped by its PID at the end, on errors and on
Ctrl-C. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DOCS = REPO / "docs" / "benchmarks.md"
RESULTS = BENCH_DIR / "results"
BENCH_VENV = BENCH_DIR / ".venv-bench"
LITELLM_VENV = BENCH_DIR / ".venv-litellm"
GATEWAY_PYTHON = REPO / ".venv" / "bin" / "python"
WRK_SCRIPT = BENCH_DIR / "wrk_post.lua"

TARGET_CORE = "1"
LOAD_CORE = "0"

API_KEY = "sk-gw-demo-admin"
MODEL = "bench-model"
CHAT_BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}
STREAM_BODY = {**CHAT_BODY, "stream": True}
CHUNKS = 20

# name, streaming, concurrency
SCENARIOS = [
    ("chat c1", False, 1),
    ("chat c64", False, 64),
    ("stream c1", True, 1),
    ("stream c32", True, 32),
]
ALL_TARGETS = ["direct", "passthrough", "passthrough-httpx", "gateway", "litellm"]
LABELS = {
    "direct": "direct to mock",
    "passthrough": "Starlette passthrough (aiohttp)",
    "passthrough-httpx": "Starlette passthrough (httpx)",
    "gateway": "gateway",
    "litellm": "LiteLLM proxy",
}
PASSTHROUGHS = ("passthrough", "passthrough-httpx")

GATEWAY_CATALOG = """\
tenants:
  - id: 7734c3ab-fb41-4904-9e4e-c8a379e089ac
    name: bench
    models:
      - id: c72a0d0e-4d59-484a-8eb2-e698c46393dc
        alias: bench-model
        deployment: {{type: openai, model: mock-model, base_url: "http://127.0.0.1:{port}/v1"}}
    spaces:
      - id: c05bf97d-8571-4526-8ad9-fe3f1c896d0b
        name: bench
        models: [bench-model]
        default_model: bench-model
    api_keys:
      - name: bench
        sha256: 11765d891df666fd89b04a73b5113ad8242697f8c5d1f2830a55d426e65bfa0e   # sha256 of "sk-gw-demo-admin"
        principal: bench
        role: admin
        spaces: ["*"]
        default_space: c05bf97d-8571-4526-8ad9-fe3f1c896d0b
"""

LITELLM_CONFIG = """\
model_list:
  - model_name: bench-model
    litellm_params:
      model: openai/mock-model
      api_base: http://127.0.0.1:{port}/v1
      api_key: sk-mock
"""

# The product targets, judged on the medians (see docs/benchmarks.md).
TARGET_THROUGHPUT_VS_PASSTHROUGH = 0.60
TARGET_THROUGHPUT_VS_LITELLM = 30.0
TARGET_ADDED_LATENCY_VS_PASSTHROUGH = 1.5
TARGET_STREAM_VS_PASSTHROUGH = 0.60
TARGET_IDLE_RSS_MB = 80.0
TARGET_START_S = 1.5


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- environments


def _stamp(requirements: Path) -> str:
    return hashlib.sha256(requirements.read_bytes()).hexdigest()


def ensure_venv(venv: Path, requirements: Path) -> Path:
    """Create `venv` from `requirements` if it is missing or was built from another version of the file."""
    python = venv / "bin" / "python"
    marker = venv / ".requirements-sha256"
    if python.exists() and marker.exists() and marker.read_text().strip() == _stamp(requirements):
        return python
    log(f"creating {venv.relative_to(REPO)} from {requirements.relative_to(REPO)} (once)...")
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-r", str(requirements)], check=True, timeout=1800
    )
    marker.write_text(_stamp(requirements) + "\n")
    return python


def ensure_wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk:
        return wrk
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log("wrk not found: installing Debian's wrk...")
        subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, timeout=600)
        wrk = shutil.which("wrk")
        if wrk:
            return wrk
    raise BenchError("wrk is needed as the load generator: apt-get install -y wrk")


def package_versions(python: Path, names: list[str]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    try:
        res = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True, timeout=60)
        return json.loads(res.stdout)
    except (OSError, ValueError, subprocess.SubprocessError):
        return {}


def python_version(python: Path) -> str:
    res = subprocess.run(
        [str(python), "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return res.stdout.strip()


def machine_info() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    wrk_version = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=10)
        wrk_version = (out.stdout or out.stderr).splitlines()[0].split(" [")[0].strip()
    return {
        "cores": str(os.cpu_count()),
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "cpu": cpu,
        "kernel": f"{platform.system()} {platform.release()}",
        "wrk": wrk_version,
    }


# ------------------------------------------------------------------------------------------------ processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    """All descendants of `pid` (from /proc/*/stat)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def rss_mb(pid: int) -> float:
    """VmRSS of the process and its descendants, in MB (10^6 bytes)."""
    total_kb = 0
    for p in [pid, *_children(pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
    return total_kb * 1024 / 1e6


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process and its descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in [pid, *_children(pid)]:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def cpu_snapshot() -> tuple[float, dict[int, float], float]:
    """(steal seconds of all cores, {pid: CPU seconds of the process and its reaped children}, time)."""
    ticks = os.sysconf("SC_CLK_TCK")
    steal = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        steal = int(Path("/proc/stat").read_text().split("\n", 1)[0].split()[8]) / ticks
    procs: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            procs[int(entry.name)] = sum(int(f) for f in fields[11:15]) / ticks
    return steal, procs, time.monotonic()


def background_cpu(before: tuple[float, dict[int, float], float],
                   after: tuple[float, dict[int, float], float], ours: set[int]) -> float:
    """CPU seconds used between two snapshots by everything but the benchmark's own processes, plus steal."""
    total = max(0.0, after[0] - before[0])
    for pid, secs in after[1].items():
        if pid not in ours:
            total += max(0.0, secs - before[1].get(pid, 0.0))
    # A process that exits hands its whole CPU time to its parent, some of it from before the window.
    return min(total, (after[2] - before[2]) * (os.cpu_count() or 1))


class QuietBudget:
    """Seconds the whole run may spend waiting for a quiet machine and measuring again, so it stays bounded."""

    def __init__(self, seconds: float) -> None:
        self.left = seconds

    def spend(self, seconds: float) -> None:
        self.left -= seconds


def wait_quiet(ours: set[int], limit_pct: float, budget: QuietBudget, timeout: float = 60.0) -> float:
    """Wait, within `timeout` s and the budget, for a 1 s window where others use ≤ `limit_pct`% of a core."""
    deadline = time.monotonic() + min(timeout, budget.left)
    while True:
        before = cpu_snapshot()
        time.sleep(1.0)
        pct = 100.0 * background_cpu(before, cpu_snapshot(), ours)
        if pct <= limit_pct or time.monotonic() >= deadline:
            return pct
        budget.spend(1.0)
        log(f"    waiting for the machine to be quiet: other processes use {pct:.0f}% of a core")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path
    started: float

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Processes:
    """Every process this run starts; all are stopped by PID in `stop_all`, whatever happens."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []

    def start(self, name: str, argv: list[str], core: str, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> Proc:
        log_path = self.workdir / f"{name}-{len(self.procs)}.log"
        with open(log_path, "wb") as out:
            started = time.monotonic()
            popen = subprocess.Popen(
                ["taskset", "-c", core, *argv],  # taskset execs the command: the PID is the target's
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(cwd or self.workdir),
                start_new_session=True,  # Ctrl-C reaches this script only; it stops the rest
            )
        proc = Proc(name, popen, log_path, started)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 10.0) -> None:
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.popen.wait(5)
        # Anything the target left behind in its own process group (the group's id is the target's PID).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            with contextlib.suppress(Exception):
                self.stop(proc)


# -------------------------------------------------------------------------------------------------- HTTP


def post(port: int, body: dict, auth: bool, timeout: float) -> tuple[int, bytes, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {API_KEY}"
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read(), resp.getheader("content-type", "")
    finally:
        conn.close()


def wait_first_answer(proc: Proc, port: int, auth: bool, deadline_s: float) -> float:
    """Poll until the first chat completion is answered 200; return seconds since the process started."""
    deadline = proc.started + deadline_s
    last = ""
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise BenchError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        try:
            status, body, _ = post(port, CHAT_BODY, auth, timeout=max(1.0, deadline - time.monotonic()))
        except (ConnectionError, OSError, http.client.HTTPException) as exc:
            last = repr(exc)
            time.sleep(0.01)
            continue
        if status == 200:
            return time.monotonic() - proc.started
        last = f"HTTP {status}: {body[:300]!r}"
        time.sleep(0.05)
    raise BenchError(f"{proc.name} did not answer within {deadline_s:.0f} s (last: {last}):\n{proc.log_tail()}")


def validate(port: int, auth: bool) -> None:
    """The target answers what a client expects: a completion, and a whole 20-chunk stream ending in [DONE]."""
    status, body, _ = post(port, CHAT_BODY, auth, timeout=30)
    if status != 200:
        raise BenchError(f"chat: HTTP {status}: {body[:300]!r}")
    doc = json.loads(body)
    if not doc.get("choices") or not doc["choices"][0].get("message", {}).get("content"):
        raise BenchError(f"chat: no answer in {body[:300]!r}")
    status, body, ctype = post(port, STREAM_BODY, auth, timeout=30)
    if status != 200 or not ctype.startswith("text/event-stream"):
        raise BenchError(f"stream: HTTP {status} {ctype}: {body[:300]!r}")
    datas = [line[5:].strip() for line in body.decode().splitlines() if line.startswith("data:")]
    if not datas or datas[-1] != "[DONE]":
        raise BenchError(f"stream: does not end with [DONE]: {body[-300:]!r}")
    content = 0
    for data in datas[:-1]:
        for choice in json.loads(data).get("choices") or []:
            if (choice.get("delta") or {}).get("content"):
                content += 1
    if content != CHUNKS:
        raise BenchError(f"stream: {content} content chunks, expected {CHUNKS}")


# -------------------------------------------------------------------------------------------------- load


def run_wrk(wrk: str, port: int, body: dict, auth: bool, connections: int, seconds: float,
            path: str = "/v1/chat/completions", script: Path = WRK_SCRIPT,
            extra_env: dict[str, str] | None = None) -> dict:
    env = dict(os.environ)
    env["BENCH_BODY"] = json.dumps(body, separators=(",", ":"))
    env["BENCH_AUTH"] = f"Bearer {API_KEY}" if auth else ""
    env.update(extra_env or {})
    argv = [
        "taskset", "-c", LOAD_CORE, wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
        "-s", str(script), f"http://127.0.0.1:{port}{path}",
    ]
    res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=seconds + 60)
    for line in res.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            out = json.loads(line[len("BENCH_RESULT "):])
            out["rps"] = out["requests"] / (out["duration_us"] / 1e6) if out["duration_us"] else 0.0
            out["error_count"] = sum(out["errors"].values())
            return out
    raise BenchError(f"wrk gave no result (exit {res.returncode}): {res.stdout[-500:]} {res.stderr[-500:]}")


# ------------------------------------------------------------------------------------------------ targets


@dataclass
class Sample:
    start_s: float | None = None
    rss_mb: float | None = None
    scenarios: dict[str, dict] = field(default_factory=dict)
    error: str | None = None


def start_target(name: str, procs: Processes, mock_port: int, mock: Proc, pythons: dict[str, Path],
                 workdir: Path) -> tuple[Proc, int, bool, float]:
    """Start one target; return (process, port, needs auth, seconds to first answer)."""
    if name == "direct":
        return mock, mock_port, False, mock.start_s  # type: ignore[attr-defined]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_REDIS_URL", "DATABASE_URL")}
    upstream = f"http://127.0.0.1:{mock_port}"
    if name in PASSTHROUGHS:
        client = "httpx" if name == "passthrough-httpx" else "aiohttp"
        argv = [str(pythons["bench"]), str(BENCH_DIR / "passthrough.py"), "--upstream", upstream,
                "--port", str(port), "--client", client]
        proc = procs.start(name, argv, TARGET_CORE, env)
        return proc, port, False, wait_first_answer(proc, port, False, 30)
    if name == "gateway":
        config = workdir / "gateway-bench.yaml"
        config.write_text(GATEWAY_CATALOG.format(port=mock_port))
        argv = [str(pythons["gateway"]), "-m", "gateway", "--config", str(config),
                "--host", "127.0.0.1", "--port", str(port)]
        proc = procs.start(name, argv, TARGET_CORE, env, cwd=REPO)
        return proc, port, True, wait_first_answer(proc, port, True, 60)
    if name == "litellm":
        config = workdir / "litellm-bench.yaml"
        config.write_text(LITELLM_CONFIG.format(port=mock_port))
        env.update({"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"})
        argv = [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1",
                "--port", str(port), "--num_workers", "1"]
        proc = procs.start(name, argv, TARGET_CORE, env)
        return proc, port, True, wait_first_answer(proc, port, True, 240)
    raise BenchError(f"unknown target {name}")


def measure_scenario(wrk: str, proc: Proc, mock: Proc, port: int, auth: bool, stream: bool, conc: int,
                     args: argparse.Namespace) -> dict:
    """One scenario: warm-up, then measure; measure again (up to --retries) when other processes interfered."""
    body = STREAM_BODY if stream else CHAT_BODY
    if args.warmup > 0:
        run_wrk(wrk, port, body, auth, conc, args.warmup)
    ours = {os.getpid(), proc.pid, mock.pid, *_children(proc.pid), *_children(mock.pid)}
    best: dict | None = None
    for attempt in range(1 + args.retries):
        snap0, cpu0, t0 = cpu_snapshot(), cpu_seconds(proc.pid), time.monotonic()
        res = run_wrk(wrk, port, body, auth, conc, args.duration)
        elapsed = time.monotonic() - t0
        res["cpu_pct"] = 100.0 * (cpu_seconds(proc.pid) - cpu0) / elapsed
        res["background_pct"] = 100.0 * background_cpu(snap0, cpu_snapshot(), ours) / elapsed
        res["attempts"] = attempt + 1
        if best is None or res["background_pct"] < best["background_pct"]:
            best = res
        if res["background_pct"] <= args.max_background or attempt == args.retries or args.budget.left <= 0:
            break
        log(f"    {'stream' if stream else 'chat'} c{conc}: other processes used {res['background_pct']:.0f}% "
            f"of a core (> {args.max_background:g}%): measuring again")
        wait_quiet(ours, args.max_background, args.budget)
        args.budget.spend(args.duration)
    assert best is not None
    return best


def measure_target(name: str, procs: Processes, wrk: str, mock_port: int, mock: Proc,
                   pythons: dict[str, Path], workdir: Path, args: argparse.Namespace) -> Sample:
    sample = Sample()
    proc = None
    try:
        if args.budget.left > 0:
            wait_quiet({os.getpid(), mock.pid}, args.max_background, args.budget)
        proc, port, auth, sample.start_s = start_target(name, procs, mock_port, mock, pythons, workdir)
        time.sleep(1.0)
        sample.rss_mb = rss_mb(proc.pid)
        validate(port, auth)
        for scen, stream, conc in SCENARIOS:
            res = measure_scenario(wrk, proc, mock, port, auth, stream, conc, args)
            sample.scenarios[scen] = res
            log(f"    {scen:<11} {res['rps']:>9.0f} req/s  p50 {res['p50_us'] / 1000:7.2f} ms  "
                f"p99 {res['p99_us'] / 1000:7.2f} ms  errors {res['error_count']}  cpu {res['cpu_pct']:.0f}%  "
                f"background {res['background_pct']:.0f}%")
            if proc.popen.poll() is not None:
                raise BenchError(f"{name} exited during the run:\n{proc.log_tail()}")
    except BenchError as exc:
        sample.error = str(exc)
        log(f"  {name}: FAILED: {exc}")
    finally:
        if proc is not None and name != "direct":
            procs.stop(proc)
    return sample


# -------------------------------------------------------------------------------------------------- report


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(samples: dict[str, list[Sample]]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name, runs in samples.items():
        good = [s for s in runs if s.error is None]
        row: dict = {
            "runs": len(runs),
            "failed_runs": len(runs) - len(good),
            "errors": [s.error for s in runs if s.error],
            "start_s": median([s.start_s for s in good]),
            "rss_mb": median([s.rss_mb for s in good]),
            "scenarios": {},
        }
        for scen, _, _ in SCENARIOS:
            rs = [s.scenarios[scen] for s in good if scen in s.scenarios]
            if not rs:
                continue
            row["scenarios"][scen] = {
                "rps": median([r["rps"] for r in rs]),
                "rps_min": min(r["rps"] for r in rs),
                "rps_max": max(r["rps"] for r in rs),
                "p50_ms": median([r["p50_us"] / 1000 for r in rs]),
                "p99_ms": median([r["p99_us"] / 1000 for r in rs]),
                "errors": sum(r["error_count"] for r in rs),
                "requests": sum(r["requests"] for r in rs),
                "cpu_pct": median([r["cpu_pct"] for r in rs]),
                "background_pct": max(r["background_pct"] for r in rs),
                "repeats": len(rs),
            }
        out[name] = row
    direct = out.get("direct", {}).get("scenarios", {})
    for row in out.values():
        for scen in ("chat c1", "stream c1"):
            mine, base = row["scenarios"].get(scen), direct.get(scen)
            if mine and base:
                mine["added_p50_ms"] = mine["p50_ms"] - base["p50_ms"]
    return out


def _get(summary: dict, target: str, scen: str, key: str) -> float | None:
    return summary.get(target, {}).get("scenarios", {}).get(scen, {}).get(key)


def judge(summary: dict) -> list[dict]:
    """The product targets, each with its measured value and met / missed (None when not measured)."""
    passthroughs = [p for p in PASSTHROUGHS if _get(summary, p, "chat c64", "rps")]
    best_chat = max(passthroughs, key=lambda p: _get(summary, p, "chat c64", "rps"), default=None)
    best_stream = max(
        (p for p in PASSTHROUGHS if _get(summary, p, "stream c32", "rps")),
        key=lambda p: _get(summary, p, "stream c32", "rps"),
        default=None,
    )
    best_latency = min(
        (p for p in PASSTHROUGHS if _get(summary, p, "chat c1", "added_p50_ms") is not None),
        key=lambda p: _get(summary, p, "chat c1", "added_p50_ms"),
        default=None,
    )

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    gw = lambda scen, key: _get(summary, "gateway", scen, key)  # noqa: E731
    checks = [
        {
            "what": f"gateway chat c64 req/s ÷ best passthrough ({LABELS.get(best_chat, 'n/a')})",
            "value": ratio(gw("chat c64", "rps"), _get(summary, best_chat, "chat c64", "rps") if best_chat else None),
            "fmt": "{:.2f}", "target": f"≥ {TARGET_THROUGHPUT_VS_PASSTHROUGH:.2f}",
            "ok": lambda v: v >= TARGET_THROUGHPUT_VS_PASSTHROUGH,
        },
        {
            "what": "gateway chat c64 req/s ÷ LiteLLM",
            "value": ratio(gw("chat c64", "rps"), _get(summary, "litellm", "chat c64", "rps")),
            "fmt": "{:.1f}×", "target": f"≥ {TARGET_THROUGHPUT_VS_LITELLM:.0f}×",
            "ok": lambda v: v >= TARGET_THROUGHPUT_VS_LITELLM,
        },
        {
            "what": f"gateway added p50 at chat c1 ÷ passthrough added p50 ({LABELS.get(best_latency, 'n/a')})",
            "value": ratio(gw("chat c1", "added_p50_ms"),
                           _get(summary, best_latency, "chat c1", "added_p50_ms") if best_latency else None),
            "fmt": "{:.2f}", "target": f"≤ {TARGET_ADDED_LATENCY_VS_PASSTHROUGH:.1f}",
            "ok": lambda v: v <= TARGET_ADDED_LATENCY_VS_PASSTHROUGH,
        },
        {
            "what": f"gateway stream c32 req/s ÷ best passthrough ({LABELS.get(best_stream, 'n/a')})",
            "value": ratio(gw("stream c32", "rps"),
                           _get(summary, best_stream, "stream c32", "rps") if best_stream else None),
            "fmt": "{:.2f}", "target": f"≥ {TARGET_STREAM_VS_PASSTHROUGH:.2f}",
            "ok": lambda v: v >= TARGET_STREAM_VS_PASSTHROUGH,
        },
        {
            "what": "gateway idle RSS",
            "value": summary.get("gateway", {}).get("rss_mb"),
            "fmt": "{:.1f} MB", "target": f"< {TARGET_IDLE_RSS_MB:.0f} MB",
            "ok": lambda v: v < TARGET_IDLE_RSS_MB,
        },
        {
            "what": "gateway process start to first answered request",
            "value": summary.get("gateway", {}).get("start_s"),
            "fmt": "{:.2f} s", "target": f"< {TARGET_START_S:.1f} s",
            "ok": lambda v: v < TARGET_START_S,
        },
    ]
    for c in checks:
        v = c["value"]
        c["shown"] = c["fmt"].format(v) if v is not None else "n/a"
        c["met"] = None if v is None else bool(c["ok"](v))
        del c["ok"]
    return checks


def _ms(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _rps(v: float | None) -> str:
    return "–" if v is None else f"{v:,.0f}"


def results_table(summary: dict, targets: list[str]) -> str:
    head = (
        "| target | chat c1 req/s | chat c1 p50 / p99 ms | chat c64 req/s | chat c64 p50 / p99 ms "
        "| stream c1 req/s | stream c1 p50 / p99 ms | stream c32 req/s | stream c32 p50 / p99 ms "
        "| added p50 c1 chat / stream ms | idle RSS MB | start → first answer s | errors |"
    )
    lines = [head, "|" + "---|" * 13]
    for name in targets:
        row = summary.get(name)
        if row is None:
            continue
        cells = [LABELS[name]]
        errors = 0
        for scen, _, _ in SCENARIOS:
            s = row["scenarios"].get(scen)
            if s is None:
                cells += ["–", "–"]
                continue
            errors += s["errors"]
            cells += [_rps(s["rps"]), f"{_ms(s['p50_ms'])} / {_ms(s['p99_ms'])}"]
        if name == "direct":
            cells.append("(baseline)")
        else:
            cells.append(f"{_ms(_get(summary, name, 'chat c1', 'added_p50_ms'))} / "
                         f"{_ms(_get(summary, name, 'stream c1', 'added_p50_ms'))}")
        cells.append("–" if row["rss_mb"] is None else f"{row['rss_mb']:.1f}")
        cells.append("–" if row["start_s"] is None else f"{row['start_s']:.2f}")
        failed = f" ({row['failed_runs']} failed runs)" if row["failed_runs"] else ""
        cells.append(f"{errors}{failed}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_per_request(s: dict) -> float:
    """Microseconds of the target's CPU per answered request (median CPU share ÷ median throughput)."""
    return s["cpu_pct"] / 100 * 1e6 / s["rps"] if s.get("rps") else 0.0


def detail_table(summary: dict, targets: list[str]) -> str:
    lines = [
        "| target | scenario | req/s median (min – max) | p50 ms | p99 ms | requests | errors | target CPU "
        "| CPU µs / request | background CPU (max) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in targets:
        for scen, _, _ in SCENARIOS:
            s = _get(summary, name, scen, "rps") and summary[name]["scenarios"][scen]
            if not s:
                continue
            lines.append(
                f"| {LABELS[name]} | {scen} | {_rps(s['rps'])} ({_rps(s['rps_min'])} – {_rps(s['rps_max'])}) "
                f"| {_ms(s['p50_ms'])} | {_ms(s['p99_ms'])} | {s['requests']:,} | {s['errors']} "
                f"| {s['cpu_pct']:.0f}% | {cpu_per_request(s):.0f} | {s['background_pct']:.0f}% |"
            )
    return "\n".join(lines)


def checks_table(checks: list[dict]) -> str:
    lines = ["| product target | measured | target | verdict |", "|---|---|---|---|"]
    for c in checks:
        verdict = "not measured" if c["met"] is None else ("met" if c["met"] else "**missed**")
        lines.append(f"| {c['what']} | {c['shown']} | {c['target']} | {verdict} |")
    return "\n".join(lines)


def observations(summary: dict) -> str:
    """A few sentences read off the numbers (only those that were measured)."""
    out = []
    g64, p64 = _get(summary, "gateway", "chat c64", "rps"), _get(summary, "passthrough", "chat c64", "rps")
    l64 = _get(summary, "litellm", "chat c64", "rps")
    if g64 and p64:
        out.append(f"- At chat c64 the gateway serves {g64:,.0f} req/s, {100 * g64 / p64:.0f}% of the bare "
                   f"aiohttp passthrough ({p64:,.0f} req/s) on the same stack"
                   + (f", and {g64 / l64:.0f}× LiteLLM's proxy ({l64:,.0f} req/s)." if l64 else "."))
    ga = _get(summary, "gateway", "chat c1", "added_p50_ms")
    pa = _get(summary, "passthrough", "chat c1", "added_p50_ms")
    if ga is not None and pa is not None:
        out.append(f"- One request at a time, the gateway adds {ga:.2f} ms at p50 over calling the upstream "
                   f"directly; the passthrough adds {pa:.2f} ms.")
    g1 = summary.get("gateway", {}).get("scenarios", {}).get("chat c1")
    gc = summary.get("gateway", {}).get("scenarios", {}).get("chat c64")
    p1 = summary.get("passthrough", {}).get("scenarios", {}).get("chat c1")
    pc = summary.get("passthrough", {}).get("scenarios", {}).get("chat c64")
    if g1 and gc and p1 and pc:
        out.append(f"- CPU per chat request: the gateway {cpu_per_request(g1):.0f} µs at c1 and "
                   f"{cpu_per_request(gc):.0f} µs at c64; the passthrough {cpu_per_request(p1):.0f} µs and "
                   f"{cpu_per_request(pc):.0f} µs. Under concurrency the stack amortises its per-request work "
                   f"(fewer wake-ups and system calls per request), so this is where a gap shows first.")
    h1 = _get(summary, "passthrough-httpx", "chat c1", "rps")
    h64 = _get(summary, "passthrough-httpx", "chat c64", "rps")
    a1 = _get(summary, "passthrough", "chat c1", "rps")
    if h1 and h64 and a1 and p64:
        out.append(f"- The upstream client matters: with httpx in place of aiohttp the same passthrough goes from "
                   f"{h1:,.0f} req/s at c1 to {h64:,.0f} req/s at c64, where aiohttp goes from {a1:,.0f} to "
                   f"{p64:,.0f}: httpx's connection pool degrades under concurrency, which is why the gateway "
                   f"uses aiohttp.")
    return "\n".join(out)


def render_docs(meta: dict, summary: dict, checks: list[dict], targets: list[str]) -> str:
    m = meta["machine"]
    v = meta["versions"]

    def vers(d: dict) -> str:
        return ", ".join(f"{k} {val}" for k, val in d.items()) or "n/a"

    return f"""# Benchmarks

How fast the gateway is next to the thinnest proxy its own stack allows and next to LiteLLM's proxy, on one
core, against a loopback upstream that answers instantly. Everything here is produced by one command; this
file is rewritten by it.

```
{meta["command"]}
```

Measured {meta["date"]}: {meta["repeats"]} repeats of {meta["duration"]} s per scenario, each after
{meta["warmup"]} s of warm-up; medians shown. Upstream per-chunk delay: {meta["chunk_delay_ms"]} ms.

## Machine

| | |
|---|---|
| cores | {m["cores"]} |
| memory | {m["memory"]} |
| CPU | {m["cpu"]} |
| kernel | {m["kernel"]} |
| Python (gateway) | {meta["python"].get("gateway", "n/a")} |
| Python (harness) | {meta["python"].get("bench", "n/a")} |
| load generator | {m["wrk"]} |
| gateway stack | {vers(v.get("gateway", {}))} |
| harness stack | {vers(v.get("bench", {}))} |
| LiteLLM | {vers(v.get("litellm", {}))} |

## Results

{results_table(summary, targets)}

Latencies are wrk's, per request; a streamed request counts when its whole stream (20 chunks and `[DONE]`)
has been read. *Added p50* is the target's p50 minus the direct-to-mock p50 in the same scenario. *Idle
RSS* is VmRSS (process and children) one second after the first answer, before any load. *Start → first
answer* is from process start to the first answered chat completion.

### Product targets

{checks_table(checks)}

{observations(summary)}

### Every scenario

{detail_table(summary, targets)}

*Target CPU* is the CPU time the target process used during the measured interval, in % of one core:
near 100% means the target's core, not the load generator or the upstream, was the limit. *CPU µs /
request* divides it by the throughput. *Background CPU* is what every other process on the machine (and
the hypervisor's steal) used meanwhile, the worst of the repeats. A measurement during which it exceeded
{meta["max_background"]}% of a core was taken again once the machine was quiet (up to {meta["retries"]} times, within
{meta["quiet_budget"]} s for the whole run), keeping the quietest.

## Method

- **Pinning.** Each target runs alone on core 1 (`taskset -c 1`). The mock upstream and the load generator
  share core 0. The direct-to-mock row (mock and wrk together on core 0) is far above every proxy, so
  neither the upstream nor the load generator limits the proxied numbers.
- **Load.** wrk, one thread, closed loop: N keep-alive connections each send the next request as soon as
  the previous answer has been read, for a fixed time. `POST /v1/chat/completions` with
  `{json.dumps(CHAT_BODY)}`
  (plus `"stream": true` for streaming). Scenarios: chat at concurrency 1 and 64, streaming at
  concurrency 1 and 32.
- **Upstream.** `benchmarks/mock_upstream.py`: asyncio on uvloop with the httptools parser, prebuilt
  answers: a small `chat.completion` with `usage`, or 20 `chat.completion.chunk` SSE events (a usage chunk
  when `stream_options.include_usage` is set) and `[DONE]`, chunked, HTTP/1.1 keep-alive.
- **Targets.** Each is started fresh for every repeat, and repeats go round the targets in turn.
  - *direct to mock*: no proxy; the baseline for added latency.
  - *Starlette passthrough (aiohttp)*: `benchmarks/passthrough.py`, one route, one shared aiohttp
    `ClientSession` (connection limit 1000, no cookie jar), body bytes forwarded unchanged, JSON answers
    read whole, SSE relayed with `StreamingResponse`; uvicorn with httptools and uvloop, one worker, no
    access log. The practical limit of the gateway's stack.
  - *Starlette passthrough (httpx)*: the same proxy with one shared `httpx.AsyncClient` (pool of 1000)
    in place of aiohttp, to show what the choice of upstream client costs.
  - *gateway*: `python -m gateway --config <catalogue> --host 127.0.0.1 --port <port>`, one tenant, one
    model (`type: openai`, `base_url` the mock), one space, one admin API key; the default policy chain
    (allow-list); the in-memory store.
  - *LiteLLM proxy*: `litellm --config <config> --num_workers 1`, one model `openai/mock-model` with
    `api_base` the mock, no database, `LITELLM_LOCAL_MODEL_COST_MAP=True`, `LITELLM_LOG=ERROR`, otherwise
    its defaults (which include uvicorn's access log). Installed with `opentelemetry-sdk`: without it,
    LiteLLM's proxy tries, and fails, to import `opentelemetry.sdk` on every request, a cost that a
    deployment with the package does not pay.
- **Checks.** Before it is measured, each target must answer a chat completion with content and a whole
  20-chunk stream ending in `[DONE]`; wrk counts socket errors, timeouts (10 s) and non-2xx answers as
  errors.
- **Noise.** A small virtual machine with other services in the background: the spread between repeats
  (min – max above) can reach ±30% for the same target, so medians over fresh starts are reported, and
  ratios are only compared within one run.
"""


# ---------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=6, help="seconds measured per scenario (default 6)")
    p.add_argument("--warmup", type=int, default=1, help="seconds of warm-up before each scenario (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="fresh starts of each target (default 3)")
    p.add_argument("--only", default=",".join(ALL_TARGETS),
                   help=f"comma-separated targets among {','.join(ALL_TARGETS)} (direct is always run)")
    p.add_argument("--chunk-delay-ms", type=float, default=0.0, help="mock upstream delay before each SSE event")
    p.add_argument("--max-background", type=float, default=10.0,
                   help="re-measure a scenario when other processes used more than this %% of a core (default 10)")
    p.add_argument("--retries", type=int, default=2, help="re-measurements allowed per scenario (default 2)")
    p.add_argument("--quiet-budget", type=float, default=300.0,
                   help="seconds the run may spend in all waiting for quiet and re-measuring (default 300)")
    p.add_argument("--from-results", action="store_true",
                   help="measure nothing: print and write the report of the last run (benchmarks/results/latest.json)")
    p.add_argument("--docs", choices=("auto", "yes", "no"), default="auto",
                   help="rewrite docs/benchmarks.md: auto = only when every target ran (default)")
    args = p.parse_args(argv)
    targets = [t.strip() for t in args.only.split(",") if t.strip()]
    unknown = [t for t in targets if t not in ALL_TARGETS]
    if unknown:
        p.error(f"unknown target(s): {', '.join(unknown)}")
    args.budget = QuietBudget(args.quiet_budget)
    args.targets = ["direct", *[t for t in ALL_TARGETS if t in targets and t != "direct"]]
    if args.duration < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--duration and --repeats must be ≥ 1, --warmup ≥ 0")
    return args


# docs/benchmarks.md also holds the sections of benchmarks/run_engine.py, between these two lines: a rewrite
# by this script keeps them as they are.
ENGINE_BEGIN = "<!-- run_engine.py: begin -->"
ENGINE_END = "<!-- run_engine.py: end -->"


TRACES_BEGIN = "<!-- traces_overhead.py: begin -->"
TRACES_END = "<!-- traces_overhead.py: end -->"


def write_docs(text: str) -> None:
    """Write docs/benchmarks.md, keeping the blocks written by others (run_engine.py's sections, the traces'
    measurement) when there are some."""
    old = DOCS.read_text() if DOCS.exists() else ""
    for begin, end_marker in ((ENGINE_BEGIN, ENGINE_END), (TRACES_BEGIN, TRACES_END)):
        start, end = old.find(begin), old.find(end_marker)
        if start >= 0 and end > start:
            text = text.rstrip("\n") + "\n\n" + old[start:end + len(end_marker)] + "\n"
    DOCS.parent.mkdir(exist_ok=True)
    DOCS.write_text(text)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def prepare(args: argparse.Namespace) -> tuple[str, dict[str, Path]]:
    """Check the machine and create what the run needs; return wrk's path and the Pythons by role."""
    if not shutil.which("taskset"):
        raise BenchError("taskset (util-linux) is needed to pin processes to cores")
    if (os.cpu_count() or 1) < 2:
        raise BenchError("needs at least 2 cores: targets on core 1, upstream and load on core 0")
    wrk = ensure_wrk()
    pythons: dict[str, Path] = {"bench": ensure_venv(BENCH_VENV, BENCH_DIR / "requirements.txt")}
    if "litellm" in args.targets:
        ensure_venv(LITELLM_VENV, BENCH_DIR / "requirements-litellm.txt")
    if "gateway" in args.targets:
        if GATEWAY_PYTHON.exists():
            pythons["gateway"] = GATEWAY_PYTHON
        else:
            log("the repository's .venv is missing (make install): the gateway is skipped")
            args.targets.remove("gateway")
    return wrk, pythons


def describe(args: argparse.Namespace, pythons: dict[str, Path]) -> dict:
    stack = ["starlette", "uvicorn", "httptools", "uvloop", "aiohttp", "orjson"]
    litellm = LITELLM_VENV / "bin" / "python"
    return {
        "command": "python benchmarks/run.py" + ("" if not sys.argv[1:] else " " + shlex.join(sys.argv[1:])),
        "date": time.strftime("%Y-%m-%d"),
        "duration": args.duration,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "chunk_delay_ms": f"{args.chunk_delay_ms:g}",
        "max_background": f"{args.max_background:g}",
        "retries": args.retries,
        "quiet_budget": f"{args.quiet_budget:g}",
        "machine": machine_info(),
        "python": {k: python_version(v) for k, v in pythons.items()},
        "versions": {
            "gateway": package_versions(pythons["gateway"], stack) if "gateway" in pythons else {},
            "bench": package_versions(pythons["bench"], [*stack, "httpx"]),
            "litellm": package_versions(litellm, ["litellm", "opentelemetry-sdk"]) if "litellm" in args.targets else {},
        },
        "targets": args.targets,
    }


def run_rounds(args: argparse.Namespace, wrk: str, pythons: dict[str, Path]) -> dict[str, list[Sample]]:
    """Every repeat: a fresh mock upstream, then every target in turn, each started fresh and stopped."""
    samples: dict[str, list[Sample]] = {t: [] for t in args.targets}
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    procs = Processes(workdir)
    try:
        for rep in range(1, args.repeats + 1):
            mock_port = free_port()
            mock = procs.start(
                "mock",
                [str(pythons["bench"]), str(BENCH_DIR / "mock_upstream.py"), "--port", str(mock_port),
                 "--chunks", str(CHUNKS), "--chunk-delay-ms", str(args.chunk_delay_ms)],
                LOAD_CORE,
            )
            mock.start_s = wait_first_answer(mock, mock_port, False, 30)  # type: ignore[attr-defined]
            for name in args.targets:
                log(f"[{rep}/{args.repeats}] {LABELS[name]}")
                samples[name].append(measure_target(name, procs, wrk, mock_port, mock, pythons, workdir, args))
            procs.stop(mock)
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return samples


def report(args: argparse.Namespace, meta: dict, samples: dict[str, list[Sample]]) -> None:
    summary = summarize(samples)
    checks = judge(summary)
    RESULTS.mkdir(exist_ok=True)
    raw = {
        "meta": meta,
        "summary": summary,
        "checks": checks,
        "samples": {k: [s.__dict__ for s in v] for k, v in samples.items()},
    }
    (RESULTS / "latest.json").write_text(json.dumps(raw, indent=2) + "\n")
    print()
    print(results_table(summary, args.targets))
    print()
    print(checks_table(checks))
    print()
    print(detail_table(summary, args.targets))
    failed = {k: v["errors"] for k, v in summary.items() if v["errors"]}
    for name, errs in failed.items():
        print(f"\n{name}: {len(errs)} failed run(s); first: {errs[0][:2000]}")
    if args.docs == "yes" or (args.docs == "auto" and args.targets == ALL_TARGETS and not failed):
        write_docs(render_docs(meta, summary, checks, args.targets))
        log(f"\nwrote {DOCS.relative_to(REPO)}")
    else:
        log(f"\n{DOCS.relative_to(REPO)} not rewritten (--docs yes to force)")


def rerender(args: argparse.Namespace) -> int:
    """The report of the last run again, e.g. after a change to its layout."""
    raw = json.loads((RESULTS / "latest.json").read_text())
    meta, summary, targets = raw["meta"], raw["summary"], raw["meta"]["targets"]
    checks = judge(summary)
    print(results_table(summary, targets), checks_table(checks), detail_table(summary, targets), sep="\n\n")
    if args.docs != "no":
        write_docs(render_docs(meta, summary, checks, targets))
        log(f"\nwrote {DOCS.relative_to(REPO)} from {(RESULTS / 'latest.json').relative_to(REPO)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_results:
        return rerender(args)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    wrk, pythons = prepare(args)
    meta = describe(args, pythons)
    per_round = len(SCENARIOS) * (args.duration + args.warmup + 0.5) * len(args.targets)
    log(f"targets: {', '.join(args.targets)}; about {per_round * args.repeats / 60:.0f} min of load plus start-ups")
    t_start = time.monotonic()
    try:
        samples = run_rounds(args, wrk, pythons)
    except KeyboardInterrupt:
        log("interrupted: every process started was stopped")
        return 130
    log(f"done in {(time.monotonic() - t_start) / 60:.1f} min")
    report(args, meta, samples)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        log(f"error: {exc}")
        sys.exit(1)
