"""The suites of benchmarks/run_engine.py: what each one starts, checks and measures (see its docstring)."""

from __future__ import annotations

import http.client
import json
import os
import resource
import secrets
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import engine_report as report
import run as base
from engine_redis import relay_stats
from run import BenchError, log
from side_by_side import load_together

if TYPE_CHECKING:
    from run_engine import Bench

IDEM_SCRIPT = base.BENCH_DIR / "wrk_idem.lua"
RESP_STREAM = {"model": base.MODEL, "input": "hello", "stream": True}
RESP_PLAIN = {"model": base.MODEL, "input": "hello"}

ALLOW_ONLY = "[{use: allow_list}]"
ALL_FIVE = (
    "[{use: idempotency, ttl_seconds: 900}, {use: allow_list}, "
    "{use: rate_limit, space: {requests_per_minute: 100000000}}, "
    "{use: budget, limits: [{scope: space, period: day, usd: \"1000000\"}]}, {use: cost}]"
)
# governance targets: name -> (policy chain, uses Redis)
GOV_TARGETS = {
    "allow-mem": (ALLOW_ONLY, False),
    "allow-redis": (ALLOW_ONLY, True),
    "all-redis": (ALL_FIVE, True),
    "all-mem": (ALL_FIVE, False),
}

CATALOG = base.GATEWAY_CATALOG.replace(
    "    models:\n      - id: c72a0d0e",
    "    policies: {policies}\n    models:\n      - id: c72a0d0e",
).replace(
    '/v1"}}\n',
    '/v1"}}\n        pricing: {{input_per_mtok: "0.15", output_per_mtok: "0.60"}}\n',
)
assert "pricing" in CATALOG and "{policies}" in CATALOG


# ------------------------------------------------------------------------------------------------- checks


def request(port: int, path: str, body: dict | None = None, headers: dict | None = None,
            method: str = "POST") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        hdrs = {"Authorization": f"Bearer {base.API_KEY}", "Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=hdrs)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def check_responses(port: int) -> None:
    """A whole Responses stream (20 deltas, ends in response.completed); store true is stored, false is not."""
    status, hdrs, body = request(port, "/v1/responses", RESP_STREAM)
    events = [line[6:].strip() for line in body.decode().splitlines() if line.startswith("event:")]
    if status != 200 or not hdrs.get("content-type", "").startswith("text/event-stream"):
        raise BenchError(f"responses stream: HTTP {status}: {body[:300]!r}")
    if not events or events[-1] != "response.completed" or events.count("response.output_text.delta") != base.CHUNKS:
        raise BenchError(f"responses stream: unexpected events {events[:3]}…{events[-3:]}")
    for store, found in ((True, 200), (False, 404)):
        status, _, body = request(port, "/v1/responses", {**RESP_PLAIN, "store": store})
        doc = json.loads(body)
        if status != 200 or doc.get("status") != "completed" or doc.get("store") is not store:
            raise BenchError(f"responses store={store}: HTTP {status}: {body[:300]!r}")
        got = request(port, f"/v1/responses/{doc['id']}", method="GET")[0]
        if got != found:
            raise BenchError(f"GET of a response with store={store}: HTTP {got}, expected {found}")


def check_governance(port: int, all_five: bool) -> None:
    """Chat answers; with every policy on: the cost and rate-limit headers, and a replay for a repeated key."""
    key = {"Idempotency-Key": f"check-{secrets.token_hex(8)}"}
    status, hdrs, body = request(port, "/v1/chat/completions", base.CHAT_BODY, key)
    if status != 200:
        raise BenchError(f"chat: HTTP {status}: {body[:300]!r}")
    if all_five:
        missing = [h for h in ("x-gateway-cost-usd", "x-ratelimit-limit-requests") if h not in hdrs]
        if missing or float(hdrs["x-gateway-cost-usd"]) <= 0:
            raise BenchError(f"governance: missing or zero {missing or 'x-gateway-cost-usd'} in {hdrs}")
        for _ in range(20):  # the answer is recorded just after it was sent: until then, 409 in progress
            status, again, body = request(port, "/v1/chat/completions", base.CHAT_BODY, key)
            if status != 409:
                break
            time.sleep(0.05)
        if status != 200 or again.get("idempotent-replayed") != "true":
            raise BenchError(f"governance: a repeated Idempotency-Key was not replayed: HTTP {status} {body[:200]!r}")


# ------------------------------------------------------------------------------------------------- suites


def suite_responses(b: Bench) -> dict:
    scen = [("chat stream c32", "/v1/chat/completions", base.STREAM_BODY),
            ("responses stream c32", "/v1/responses", RESP_STREAM),
            ("responses stream c32, store false", "/v1/responses", {**RESP_STREAM, "store": False})]
    out: dict = {"scenarios": {name: [] for name, _, _ in scen}, "rss_after_mb": []}
    mock, mock_port = b.start_mock()
    for rep in range(1, b.args.repeats + 1):
        log(f"[responses {rep}/{b.args.repeats}] gateway, in-memory store")
        proc, port = b.start_gateway(mock_port)
        base.validate(port, True)
        check_responses(port)
        order = scen if rep % 2 else scen[::-1]  # alternate the order: the in-memory store grows as it runs
        for name, path, body in order:
            out["scenarios"][name].append(b.measure(proc, port, path, body, 32, name))
        out["rss_after_mb"].append(base.rss_mb(proc.pid))
        b.stop(proc)
    b.procs.stop(mock)
    return out


def suite_store(b: Bench) -> dict:
    out: dict = {"backends": {}}
    mock, mock_port = b.start_mock()
    for backend in ("memory", "redis"):
        url = b.redis_url() if backend == "redis" else None
        log(f"[store] gateway, {backend} store")
        proc, port = b.start_gateway(mock_port, redis_url=url)
        check_responses(port)
        res: dict = {"store false": [], "store true": []}
        for store in (False, True):  # warm both paths once
            base.run_wrk(b.wrk, port, {**RESP_PLAIN, "store": store}, True, 1, max(1, b.args.warmup), "/v1/responses")
        for rnd in range(b.args.repeats):
            pair = (False, True) if rnd % 2 == 0 else (True, False)
            for store in pair:
                name = f"store {'true' if store else 'false'}"
                res[name].append(b.measure(proc, port, "/v1/responses", {**RESP_PLAIN, "store": store}, 1,
                                           f"{backend} {name} c1", warmup=False, redis=url is not None))
        out["backends"][backend] = res
        b.stop(proc, redis=url is not None)
    b.procs.stop(mock)
    out["redis"] = b.redis
    return out


def vm_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def suite_streams(b: Bench) -> dict:
    n, delay = b.args.streams, b.args.stream_delay_ms
    mock, mock_port = b.start_mock(delay)
    log(f"[streams] {n} Responses streams at once, upstream {base.CHUNKS + 2} events × {delay:g} ms")
    proc, port = b.start_gateway(mock_port)
    check_responses(port)
    time.sleep(1.0)
    idle_kb, cpu0 = vm_kb(proc.pid, "VmRSS"), base.cpu_seconds(proc.pid)
    client = b.procs.start("streams", [str(b.pythons["bench"]), str(base.BENCH_DIR / "open_streams.py"),
                                       "--port", str(port), "--streams", str(n), "--chunks", str(base.CHUNKS),
                                       "--timeout", str(b.args.stream_timeout)], base.LOAD_CORE)
    peak_kb, t0 = idle_kb, time.monotonic()
    while client.popen.poll() is None:
        if time.monotonic() - t0 > b.args.stream_timeout + 30:
            raise BenchError(f"the stream client did not finish within {b.args.stream_timeout + 30:.0f} s")
        if proc.popen.poll() is not None:
            raise BenchError(f"the gateway exited while holding the streams:\n{proc.log_tail()}")
        peak_kb = max(peak_kb, vm_kb(proc.pid, "VmRSS"))
        time.sleep(0.05)
    lines = [ln for ln in client.log_path.read_text().splitlines() if ln.startswith("BENCH_RESULT ")]
    if not lines:
        raise BenchError(f"the stream client gave no result:\n{client.log_tail()}")
    out = json.loads(lines[-1][len("BENCH_RESULT "):])
    out.update({"chunk_delay_ms": delay, "idle_rss_mb": idle_kb * 1024 / 1e6, "peak_rss_mb": peak_kb * 1024 / 1e6,
                "hwm_rss_mb": vm_kb(proc.pid, "VmHWM") * 1024 / 1e6,
                "gateway_cpu_s": base.cpu_seconds(proc.pid) - cpu0,
                "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0]})
    log(f"    completed {out['completed']}/{n}, errors {out['errors']}, peak open {out['peak_open']}, "
        f"wall {out['wall_s']:.1f} s, peak RSS {out['peak_rss_mb']:.0f} MB (idle {out['idle_rss_mb']:.0f} MB)")
    b.procs.stop(client)
    b.stop(proc)
    b.procs.stop(mock)
    return out


def count_round_trips(b: Bench, mock_port: int, name: str) -> dict:
    """Redis round trips per answered request, through the counting relay (a run of its own)."""
    policies, _ = GOV_TARGETS[name]
    port, stats_port = base.free_port(), base.free_port()
    relay = b.procs.start("relay", [str(b.pythons["bench"]), str(base.BENCH_DIR / "redis_relay.py"),
                                    "--port", str(port), "--stats-port", str(stats_port),
                                    "--redis-port", str(b.redis["port"]), "--prefix", b.prefix], base.LOAD_CORE)
    deadline = time.monotonic() + 10
    while True:
        try:
            relay_stats(stats_port)
            break
        except OSError:
            if time.monotonic() > deadline or relay.popen.poll() is not None:
                raise BenchError(f"the Redis relay did not start:\n{relay.log_tail()}") from None
            time.sleep(0.05)
    proc, gw_port = b.start_gateway(mock_port, policies, f"redis://127.0.0.1:{port}/0", name=f"{name}-relay")
    out: dict = {}
    try:
        for conc in (1, 64):
            base.run_wrk(b.wrk, gw_port, base.CHAT_BODY, True, conc, 1, script=IDEM_SCRIPT,
                         extra_env={"BENCH_KEY_PREFIX": f"{b.prefix}w{secrets.token_hex(4)}"})
            time.sleep(0.3)  # the warm-up's last answers finish their after() hooks
            before = relay_stats(stats_port)
            res = base.run_wrk(b.wrk, gw_port, base.CHAT_BODY, True, conc, b.args.count_seconds,
                               script=IDEM_SCRIPT, extra_env={"BENCH_KEY_PREFIX": f"{b.prefix}c{secrets.token_hex(4)}"})
            time.sleep(0.3)
            after = relay_stats(stats_port)
            answered = res["requests"] - res["errors"]["status"]
            kinds = {k: (v - before["kinds"].get(k, 0)) / answered for k, v in after["kinds"].items()
                     if v - before["kinds"].get(k, 0) > 0} if answered else {}
            trips = after["round_trips"] - before["round_trips"]
            out[f"c{conc}"] = {"requests": answered, "round_trips": trips,
                               "per_request": trips / answered if answered else None,
                               "kinds": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
                               "errors": res["error_count"], "rps_through_relay": res["rps"]}
            log(f"    {name} c{conc}: {trips} Redis round trips for {answered} answered requests")
    finally:
        b.stop(proc, redis=True)
        b.procs.stop(relay)
    return out


# all five on Redis against each allow_list-only gateway, measured at the same time on the same core
TOGETHER = {"allow-mem": ("all-redis", "allow-mem"), "allow-redis": ("all-redis", "allow-redis")}


def governance_together(b: Bench, mock_port: int, url: str) -> dict:
    """Chat c64 through all five policies on Redis and through allow_list only, both gateways started at once
    on core 1 and loaded at the same time, each by its own wrk (benchmarks/side_by_side.py): each gets about
    half the core, so the ratio of their throughputs is that of their CPU per request, whatever the host's speed
    does meanwhile. Per repeat and pair: both throughputs and their ratio."""
    out: dict = {pair: [] for pair in TOGETHER}
    for rep in range(1, b.args.repeats + 1):
        for pair, names in TOGETHER.items():
            log(f"[governance together {rep}/{b.args.repeats}] {report.GOV_LABELS[names[0]]} and "
                f"{report.GOV_LABELS[names[1]]}, at once")
            started: dict[str, tuple] = {}
            try:
                for name in names:
                    policies, redis = GOV_TARGETS[name]
                    started[name] = b.start_gateway(mock_port, policies, url if redis else None, name=f"{name}-both")
                ports = {name: port for name, (_, port) in started.items()}
                check_governance(ports["all-redis"], True)

                load_together(b.wrk, ports, max(1, b.args.warmup), 64, IDEM_SCRIPT, _key_prefixes(b, names))
                res = load_together(b.wrk, ports, b.args.duration, 64, IDEM_SCRIPT, _key_prefixes(b, names))
                errors = sum(res[n]["error_count"] for n in names)
                ratio = res[names[0]]["rps"] / res[names[1]]["rps"] if res[names[1]]["rps"] else None
                out[pair].append({"rps": {n: res[n]["rps"] for n in names}, "errors": errors, "ratio": ratio})
                log(f"    {res[names[0]]['rps']:.0f} and {res[names[1]]['rps']:.0f} req/s: ratio "
                    f"{ratio if ratio is None else round(ratio, 3)}, errors {errors}")
            finally:
                for name, (proc, _) in started.items():
                    b.stop(proc, redis=GOV_TARGETS[name][1])
    return out


def _key_prefixes(b: Bench, names: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """Each gateway's wrk its own Idempotency-Key prefix: every request a key of its own."""
    return {n: {"BENCH_KEY_PREFIX": f"{b.prefix}t{secrets.token_hex(4)}"} for n in names}


def suite_governance(b: Bench) -> dict:
    out: dict = {"targets": {t: {"chat c1": [], "chat c64": []} for t in GOV_TARGETS}, "round_trips": {},
                 "count_seconds": b.args.count_seconds}
    url = b.redis_url()
    mock, mock_port = b.start_mock()
    for rep in range(1, b.args.repeats + 1):
        for name, (policies, redis) in GOV_TARGETS.items():
            log(f"[governance {rep}/{b.args.repeats}] {report.GOV_LABELS[name]}")
            proc, port = b.start_gateway(mock_port, policies, url if redis else None, name=name)
            try:
                check_governance(port, policies == ALL_FIVE)
                for conc in (1, 64):
                    out["targets"][name][f"chat c{conc}"].append(
                        b.measure(proc, port, "/v1/chat/completions", base.CHAT_BODY, conc,
                                  f"{name} chat c{conc}", script=IDEM_SCRIPT, redis=redis))
            finally:
                b.stop(proc, redis=redis)
    out["together"] = governance_together(b, mock_port, url)
    log("[governance] Redis round trips, through the counting relay")
    for name in ("allow-redis", "all-redis"):
        out["round_trips"][name] = count_round_trips(b, mock_port, name)
    b.procs.stop(mock)
    out["redis"] = b.redis
    return out


# ------------------------------------------------------------------------------------------------ profiles

# what to profile when a check names it: label, policy chain, Redis, path, body, concurrency, wrk script
PROFILES = {
    "responses-stream": ("Responses stream c32, in-memory store", ALLOW_ONLY, False, "/v1/responses",
                         RESP_STREAM, 32, base.WRK_SCRIPT),
    "store-memory": ("Responses store true c1, in-memory store", ALLOW_ONLY, False, "/v1/responses",
                     {**RESP_PLAIN, "store": True}, 1, base.WRK_SCRIPT),
    "store-redis": ("Responses store true c1, Redis", ALLOW_ONLY, True, "/v1/responses",
                    {**RESP_PLAIN, "store": True}, 1, base.WRK_SCRIPT),
    "streams": ("Responses stream c32, in-memory store", ALLOW_ONLY, False, "/v1/responses", RESP_STREAM, 32,
                base.WRK_SCRIPT),
    "governance-c64": ("chat c64, all five policies with Redis", ALL_FIVE, True, "/v1/chat/completions",
                       base.CHAT_BODY, 64, IDEM_SCRIPT),
}


def profile_misses(b: Bench, suite: str, data: dict) -> dict:
    """py-spy (--py-spy) on a fresh gateway under the load of each missed target; folded stacks in results/."""
    import pyspy_summary

    out: dict = {}
    for check in report.checks_for(suite, data):
        key = check.get("profile")
        if check["met"] is not False or not key or key in out:
            continue
        label, policies, redis, path, body, conc, script = PROFILES[key]
        log(f"[profile] {label}: py-spy for {b.args.profile_seconds} s")
        mock, mock_port = b.start_mock()
        proc, port = b.start_gateway(mock_port, policies, b.redis_url() if redis else None, name=f"profile-{key}")
        try:
            extra = {"BENCH_KEY_PREFIX": f"{b.prefix}p{secrets.token_hex(4)}"}
            base.run_wrk(b.wrk, port, body, True, conc, max(1, b.args.warmup), path, script, extra)
            env = {**os.environ, **extra, "BENCH_BODY": json.dumps(body, separators=(",", ":")),
                   "BENCH_AUTH": f"Bearer {base.API_KEY}"}
            load = b.procs.start("wrk", [b.wrk, "-t1", f"-c{conc}", f"-d{b.args.profile_seconds + 3}s", "-s",
                                         str(script), f"http://127.0.0.1:{port}{path}"], base.LOAD_CORE, env)
            time.sleep(1.0)
            folded = base.RESULTS / f"profile-{key}.folded"
            base.RESULTS.mkdir(exist_ok=True)
            subprocess.run(["taskset", "-c", base.LOAD_CORE, b.args.py_spy, "record", "--pid", str(proc.pid),
                            "--duration", str(b.args.profile_seconds), "--rate", "200",
                            "--format", "raw", "-o", str(folded)], check=True, capture_output=True,
                           timeout=b.args.profile_seconds + 60)
            b.procs.stop(load)
            out[key] = {"label": label, "file": str(folded.relative_to(base.REPO)),
                        **pyspy_summary.summarize(folded)}
        except (OSError, subprocess.SubprocessError) as exc:
            log(f"  py-spy failed: {exc}")
        finally:
            b.stop(proc, redis=redis)
            b.procs.stop(mock)
    return out


# ---------------------------------------------------------------------------------------------- redis client

REDIS_CLIENTS = ["redis-py", "redis-py-no-timeout", "resp"]
REDIS_WORKLOADS = ["c1", "c64", "c64-batch"]


def suite_redis_client(b: Bench) -> dict:
    """CPU per script call of redis-py and of the gateway's own client, one process per measurement (on the
    gateway's core), clients interleaved within each repeat."""
    url = b.redis_url()
    runs: dict = {c: {w: [] for w in REDIS_WORKLOADS} for c in REDIS_CLIENTS}
    for rep in range(1, b.args.repeats + 1):
        for workload in REDIS_WORKLOADS:
            order = REDIS_CLIENTS if rep % 2 else REDIS_CLIENTS[::-1]
            for name in order:
                command = ["taskset", "-c", base.TARGET_CORE, str(b.pythons["gateway"]),
                           str(base.BENCH_DIR / "redis_client.py"), name, workload, url, b.prefix]
                done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
                if done.returncode != 0:
                    raise BenchError(f"redis_client.py {name} {workload} failed: {done.stderr.strip()[-300:]}")
                result = json.loads(done.stdout.strip().splitlines()[-1])
                runs[name][workload].append(result)
                log(f"[redis-client {rep}/{b.args.repeats}] {name} {workload}: {result['cpu_us']:.1f} µs CPU/call")
    return {"runs": runs, "redis": b.redis}
