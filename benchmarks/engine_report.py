"""Tables, product targets and the docs/benchmarks.md sections of benchmarks/run_engine.py (stdlib only)."""

from __future__ import annotations

import statistics

import pyspy_summary
import run as base

TARGET_RESPONSES_VS_CHAT = 0.50
TARGET_STORE_ADDED_MS = 1.0
TARGET_ADDED_ROUND_TRIPS = 2.0
TARGET_GOVERNANCE_RATIO = 0.60

GOV_LABELS = {
    "allow-mem": "allow_list only, in-memory store",
    "allow-redis": "allow_list only, Redis",
    "all-redis": "all five policies, Redis",
    "all-mem": "all five policies, in-memory store",
}
ORDER = ["responses", "store", "streams", "governance", "redis-client", "memory"]
BACKENDS = {"memory": "in-memory store", "redis": "Redis"}


def redis_desc(r: dict) -> str:
    if r.get("origin") == "machine":
        return f"the machine's Redis {r.get('version', '')} on 127.0.0.1:6379 (allowed cores {r.get('cores', '?')})"
    return (f"a throwaway Redis {r.get('version', '')} (`redis-server --save \"\" --appendonly no`, on core 0, "
            f"stopped at the end)")


def med(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summary(runs: list[dict]) -> dict:
    """Medians over the repeats of one scenario (wrk results as measured by Bench.measure)."""
    if not runs:
        return {}
    rps, cpu = med([r["rps"] for r in runs]), med([r["cpu_pct"] for r in runs])
    return {
        "rps": rps, "rps_min": min(r["rps"] for r in runs), "rps_max": max(r["rps"] for r in runs),
        "p50_ms": med([r["p50_us"] / 1000 for r in runs]), "p99_ms": med([r["p99_us"] / 1000 for r in runs]),
        "errors": sum(r["error_count"] for r in runs), "requests": sum(r["requests"] for r in runs),
        "cpu_pct": cpu, "cpu_us": cpu / 100 * 1e6 / rps if rps else None,
        "background_pct": max(r["background_pct"] for r in runs), "repeats": len(runs),
        "redis_cpu_pct": med([r.get("redis_cpu_pct") for r in runs]),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _check(what: str, value: float | None, fmt: str, target: str, ok: bool | None, profile: str | None = None) -> dict:
    return {"what": what, "shown": "n/a" if value is None else fmt.format(value), "target": target,
            "met": None if value is None else ok, "profile": profile}


def checks_for(suite: str, data: dict) -> list[dict]:
    """The product targets of one suite: measured value, target, met / missed (None: not measured)."""
    if suite == "responses":
        chat = summary(data["scenarios"]["chat stream c32"]).get("rps")
        resp = summary(data["scenarios"]["responses stream c32"]).get("rps")
        r = _ratio(resp, chat)
        return [_check("Responses stream c32 req/s ÷ Chat Completions stream c32 req/s, same gateway", r,
                       "{:.2f}", f"≥ {TARGET_RESPONSES_VS_CHAT:.2f}", r is not None and r >= TARGET_RESPONSES_VS_CHAT,
                       "responses-stream")]
    if suite == "store":
        out = []
        for backend, res in data["backends"].items():
            d = store_delta(res)
            out.append(_check(f"`store: true` − `store: false`, p50 at c1, {BACKENDS[backend]}", d, "{:+.3f} ms",
                              f"< {TARGET_STORE_ADDED_MS:g} ms", d is not None and d < TARGET_STORE_ADDED_MS,
                              f"store-{backend}"))
        return out
    if suite == "streams":
        ok = data["errors"] == 0 and data["completed"] == data["streams"]
        return [_check(f"{data['streams']:,} Responses streams open at once on one worker: completed / errors",
                       data["completed"], f"{{:,}} / {data['errors']}", f"{data['streams']:,} / 0", ok, "streams")]
    if suite == "governance":
        rt = data.get("round_trips", {})
        added = None
        if rt.get("all-redis", {}).get("c1") and rt.get("allow-redis", {}).get("c1"):
            added = rt["all-redis"]["c1"]["per_request"] - rt["allow-redis"]["c1"]["per_request"]
        all64 = summary(data["targets"]["all-redis"]["chat c64"]).get("rps")
        allow64 = summary(data["targets"]["allow-mem"]["chat c64"]).get("rps")
        ratio = _ratio(all64, allow64)
        same_store = _ratio(all64, summary(data["targets"]["allow-redis"]["chat c64"]).get("rps"))
        how, fmt = "", "{:.2f}"
        if data.get("together"):  # measured at the same time on the same core: the host's drift cancels out
            ratio, same_store = together_ratio(data, "allow-mem"), together_ratio(data, "allow-redis")
            how, fmt = ", both at once on one core (median of the rounds)", "{:.3f}"
        return [
            _check("Redis round trips added per non-streaming request (all five − allow_list only, both on Redis)",
                   added, "{:.2f}", f"≤ {TARGET_ADDED_ROUND_TRIPS:g}",
                   added is not None and added <= TARGET_ADDED_ROUND_TRIPS, "governance-c64"),
            _check(f"chat c64 req/s: all five policies on Redis ÷ allow_list only (in-memory){how}", ratio, fmt,
                   f"≥ {TARGET_GOVERNANCE_RATIO:.2f}", ratio is not None and ratio >= TARGET_GOVERNANCE_RATIO,
                   "governance-c64"),
            _check(f"chat c64 req/s: all five policies on Redis ÷ allow_list only on Redis (same store){how}",
                   same_store, fmt, f"≥ {TARGET_GOVERNANCE_RATIO:.2f}",
                   same_store is not None and same_store >= TARGET_GOVERNANCE_RATIO, "governance-c64"),
        ]
    return []


def together_ratio(data: dict, pair: str) -> float | None:
    """The median of the rounds' ratios of all five on Redis to ``pair``, measured at the same time."""
    ratios = [r["ratio"] for r in data.get("together", {}).get(pair, []) if r.get("ratio") and not r["errors"]]
    return statistics.median(ratios) if ratios else None


def _together_note(data: dict) -> str:
    together = data.get("together")
    if not together:
        return ""
    parts = []
    for pair, rounds in together.items():
        shown = ", ".join(f"{r['ratio']:.2f}" for r in rounds if r.get("ratio"))
        rps = "; ".join(f"{r['rps']['all-redis']:,.0f} and {r['rps'][pair]:,.0f}" for r in rounds)
        parts.append(f"against {GOV_LABELS[pair]}: rounds {shown} (req/s {rps})")
    return (
        "**Side by side** (what the targets below are judged on): all five policies on Redis and each allow_list-only "
        "gateway started at once on core 1, each loaded at c64 by its own wrk for the same seconds "
        "(`benchmarks/side_by_side.py`). Each gets about half the core, so the ratio of their throughputs is that "
        "of their CPU per request, and a host whose speed drifts between the runs above slows both alike: "
        + "; ".join(parts) + "."
    )


def store_delta(res: dict) -> float | None:
    on, off = summary(res["store true"]).get("p50_ms"), summary(res["store false"]).get("p50_ms")
    return on - off if on is not None and off is not None else None


def _ms(v: float | None) -> str:
    return base._ms(v)


def _rps(v: float | None) -> str:
    return base._rps(v)


def scenario_table(rows: list[tuple[str, str, dict]]) -> str:
    redis = any(s.get("redis_cpu_pct") is not None for _, _, s in rows)
    lines = ["| configuration | scenario | req/s median (min – max) | p50 ms | p99 ms | requests | errors "
             "| gateway CPU | CPU µs / request |" + (" Redis CPU |" if redis else "") + " background CPU (max) |",
             "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if redis else "")]
    for label, scen, s in rows:
        if not s:
            continue
        rc = s.get("redis_cpu_pct")
        lines.append(f"| {label} | {scen} | {_rps(s['rps'])} ({_rps(s['rps_min'])} – {_rps(s['rps_max'])}) "
                     f"| {_ms(s['p50_ms'])} | {_ms(s['p99_ms'])} | {s['requests']:,} | {s['errors']} "
                     f"| {s['cpu_pct']:.0f}% | {s['cpu_us']:.0f} |"
                     + ((" – |" if rc is None else f" {rc:.0f}% |") if redis else "")
                     + f" {s['background_pct']:.0f}% |")
    return "\n".join(lines)


def checks_table(checks: list[dict]) -> str:
    return base.checks_table(checks)


def preamble(meta: dict) -> str:
    m = meta["machine"]
    return (f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory']}, {m['kernel']}; Python {meta['python']}; "
            f"{m['wrk']}. Measured {meta['date']} ({meta['seconds']} s for this section) by:\n\n"
            f"```\n{meta['command']}\n```\n")


def profiles_md(data: dict) -> str:
    out = []
    for prof in (data.get("profiles") or {}).values():
        out.append(f"**Where the time goes** ({prof['label']}; py-spy, {prof['samples']:,} samples of the busy "
                   f"gateway, folded stacks in `{prof['file']}`, not committed):\n\n{pyspy_summary.markdown(prof)}\n")
    return "\n".join(out)


def _verdicts(checks: list[dict]) -> str:
    return "; ".join(f"{c['shown']} ({'met' if c['met'] else 'MISSED' if c['met'] is False else 'not measured'})"
                     for c in checks)


def render_responses(data: dict) -> str:
    meta = data["meta"]
    sc = {k: summary(v) for k, v in data["scenarios"].items()}
    rows = [("gateway, in-memory store", k, v) for k, v in sc.items()]
    chat, resp, nostore = (sc.get(k, {}) for k in (
        "chat stream c32", "responses stream c32", "responses stream c32, store false"))
    checks = checks_for("responses", data)
    note = ""
    if chat.get("rps") and resp.get("rps") and nostore.get("rps"):
        note = (f"Responses streams: {100 * resp['rps'] / chat['rps']:.0f}% of the Chat Completions passthrough's "
                f"throughput ({100 * nostore['rps'] / chat['rps']:.0f}% with `\"store\": false`): "
                f"{resp['cpu_us']:.0f} µs of gateway CPU per stream ({nostore['cpu_us']:.0f} µs unstored) against "
                f"{chat['cpu_us']:.0f} µs for the chat stream it is translated from. Each Responses stream also "
                f"sends more: `response.created`, `response.in_progress` and `response.completed` each carry the "
                f"whole response object, every frame has `event:` and `id:` lines; a stored one also writes its "
                f"record twice (at the start and at the end) and its event log. The gateway's RSS after each repeat: "
                f"{', '.join(f'{v:.0f}' for v in data['rss_after_mb'])} MB (the in-memory store keeps stored "
                f"responses up to `GATEWAY_MEMORY_STORE_MAX_BYTES`, see \"Memory\" below).\n")
    return f"""### Responses engine: streaming over a chat upstream

{preamble(meta)}
One gateway (default chain `allow_list`, in-memory store) in front of the mock upstream, which streams 20 chat
chunks. wrk, one thread, 32 keep-alive connections, each request's whole SSE answer read:
`POST /v1/chat/completions` `{{"model": "bench-model", "messages": [...], "stream": true}}` (relayed as is) and
`POST /v1/responses` `{{"model": "bench-model", "input": "hello", "stream": true}}` (translated: 20
`response.output_text.delta` events, then `response.completed`; checked before measuring), also with
`"store": false`. {meta["repeats"]} fresh gateways, the three scenarios in alternating order, {meta["duration"]} s each
after {meta["warmup"]} s of warm-up; medians.

{scenario_table(rows)}

{note}
{checks_table(checks)}

{profiles_md(data)}"""


def render_store(data: dict) -> str:
    meta = data["meta"]
    rows, deltas = [], []
    for backend, res in data["backends"].items():
        for name in ("store false", "store true"):
            rows.append((f"gateway, {BACKENDS[backend]}", f"`{name.replace(' ', ': ')}` c1", summary(res[name])))
        pairs = zip(res["store true"], res["store false"], strict=False)
        diffs = [(t["p50_us"] - f["p50_us"]) / 1000 for t, f in pairs]
        deltas.append(f"{BACKENDS[backend]} {', '.join(f'{d:+.3f}' for d in diffs)} ms")
    r = data.get("redis") or {}
    return f"""### Responses engine: what storing a response costs

{preamble(meta)}
Non-streaming `POST /v1/responses` `{{"model": "bench-model", "input": "hello", "store": false | true}}` on one
connection (c1), through a gateway with the in-memory store, then through one on Redis (`GATEWAY_REDIS_URL`:
{redis_desc(r)}; a key prefix of the run's own, `GATEWAY_REDIS_PREFIX`, whose keys are deleted afterwards).
{meta["repeats"]} rounds of a `false` / `true` pair, the order alternating, {meta["duration"]} s each; medians.
With `store: true` the response and its input items are written to the store before the answer is sent
(checked before measuring: `GET /v1/responses/{{id}}` finds it; with `false` it is 404).

{scenario_table(rows)}

p50 of `true` − p50 of `false`, round by round: {"; ".join(deltas)}.

{checks_table(checks_for("store", data))}

{profiles_md(data)}"""


def streams_table(d: dict) -> str:
    per_stream = (d["peak_rss_mb"] - d["idle_rss_mb"]) / d["streams"] * 1000 if d["streams"] else 0
    cells = {
        "streams": f"{d['streams']:,}", "completed": f"{d['completed']:,}", "errors": str(d["errors"]),
        "peak open at once": f"{d['peak_open']:,}", "wall time s": f"{d['wall_s']:.1f}",
        "first byte p50 / p99 s": f"{d['ttfb_p50_s'] or 0:.2f} / {d['ttfb_p99_s'] or 0:.2f}",
        "whole stream p50 / max s": f"{d['stream_p50_s'] or 0:.2f} / {d['stream_max_s'] or 0:.2f}",
        "gateway RSS idle → peak MB": f"{d['idle_rss_mb']:.0f} → {d['peak_rss_mb']:.0f}",
        "RSS per open stream KB": f"{per_stream:.0f}", "gateway CPU s": f"{d['gateway_cpu_s']:.1f}",
    }
    return "\n".join(["| " + " | ".join(cells) + " |", "|" + "---|" * len(cells),
                      "| " + " | ".join(cells.values()) + " |"])


def render_streams(data: dict) -> str:
    d = data
    reasons = "; ".join(f"{k} ×{v}" for k, v in d["error_reasons"].items()) or "none"
    events = 2 + 20  # 20 content chunks, the usage chunk the gateway always asks for, [DONE]
    return f"""### Responses engine: 1,000 streams open at once

{preamble(d["meta"])}
One gateway worker (in-memory store, pinned on core 1) in front of the mock upstream slowed down to
{d["chunk_delay_ms"]:g} ms before each SSE event ({events} events: each stream lasts about
{events * d["chunk_delay_ms"] / 1000:.1f} s). `benchmarks/open_streams.py` (asyncio + aiohttp, on core 0 with the
mock) starts {d["streams"]:,} `POST /v1/responses` `{{"model": "bench-model", "input": "hello", "stream": true}}` at
the same moment, one connection each, and reads every stream to its end; a stream completes when it ends with
`response.completed` after 20 `response.output_text.delta` events. Open-file limit (soft) during the run:
{d["nofile"]:,} (the run raises it to 2 × streams + 1,024 when it is lower; the gateway, the mock and the client
inherit it).

{streams_table(d)}

Errors: {reasons}. *Peak open at once*: streams whose answer had started and not yet ended, at the busiest
moment, as the client saw them. *RSS*: the gateway process's VmRSS, sampled every 50 ms (the kernel's VmHWM
high-water mark at the end: {d["hwm_rss_mb"]:.0f} MB). *First byte*: from the request to the first SSE line,
while the single worker accepts the other 999.

{checks_table(checks_for("streams", d))}

{profiles_md(d)}"""


KINDS = ("*By kind*: each burst named by its commands and the kind of its first key. The chain batches its "
         "policies' store work into one composed script before the upstream call and one after it, each named by "
         "the first step's key: before, `idem` (idempotency's claim, then allow_list's check, the rate limit and "
         "the budget reservation) or `space` (allow_list's check alone); after, `spend` (cost's counters, then the "
         "budget settle and idempotency's record, in reverse chain order). `cb` is the circuit breaker's state.")


def _rt_table(rt: dict) -> str:
    lines = ["| configuration | concurrency | answered requests | round trips | round trips / request | "
             "by kind, per request |", "|---|---|---|---|---|---|"]
    for name, per in rt.items():
        for conc, r in per.items():
            kinds = ", ".join(f"{k} {v:.2f}" for k, v in r["kinds"].items() if v >= 0.005)
            lines.append(f"| {GOV_LABELS[name]} | {conc} | {r['requests']:,} | {r['round_trips']:,} "
                         f"| {r['per_request']:.2f} | {kinds} |")
    return "\n".join(lines)


def _gov_note(sm: dict) -> str:
    base64 = sm["allow-mem"]["chat c64"]
    if not base64.get("rps"):
        return ""
    ratios = "; ".join(f"{GOV_LABELS[t]} **{sm[t]['chat c64']['rps'] / base64['rps']:.2f}**"
                       for t in sm if t != "allow-mem" and sm[t]["chat c64"].get("rps"))
    out = f"chat c64 req/s ÷ that of allow_list only with the in-memory store: {ratios}."
    cpu = {t: sm[t]["chat c64"].get("cpu_us") for t in sm}
    if all(cpu.values()):
        out += (f" Gateway CPU per request at c64: {cpu['allow-mem']:.0f} µs with allow_list only in memory, "
                f"{cpu['allow-redis']:.0f} µs on Redis ({cpu['allow-redis'] - cpu['allow-mem']:+.0f} µs); all five "
                f"policies {cpu['all-mem']:.0f} µs in memory ({cpu['all-mem'] - cpu['allow-mem']:+.0f} µs: the "
                f"policies' own work and the in-memory store running their scripts in Python), "
                f"{cpu['all-redis']:.0f} µs on Redis ({cpu['all-redis'] - cpu['allow-redis']:+.0f} µs against "
                f"allow_list only on Redis: there the scripts run in Redis, and the client pipelines concurrent "
                f"requests' calls into shared writes and reads).")
    return out


def render_governance(data: dict) -> str:
    meta = data["meta"]
    sm = {t: {s: summary(v) for s, v in scen.items()} for t, scen in data["targets"].items()}
    rows = [(GOV_LABELS[t], s, v) for t, scen in sm.items() for s, v in scen.items()]
    r = data.get("redis") or {}
    return f"""### Governance: what the policies and Redis cost

{preamble(meta)}
Non-streaming `POST /v1/chat/completions` at c1 and c64 through four gateways, each started fresh for every
repeat ({meta["repeats"]} repeats, {meta["duration"]} s per scenario after {meta["warmup"]} s of warm-up; medians):
`allow_list` only with the in-memory store (the default gateway), `allow_list` only on Redis, all five
policies on Redis, and all five in memory (which separates the policies' own work from their Redis calls).
All five, in the documented order:
`[{{use: idempotency, ttl_seconds: 900}}, {{use: allow_list}}, {{use: rate_limit, space: {{requests_per_minute:
100000000}}}}, {{use: budget, limits: [{{scope: space, period: day, usd: "1000000"}}]}}, {{use: cost}}]`, with
pricing on the bench model (`input_per_mtok: "0.15"`, `output_per_mtok: "0.60"`) so that budget reserves and
settles and cost counts for real. Checked before measuring: `x-gateway-cost-usd` and `x-ratelimit-*` headers
on the answer, and a replay for a repeated key. Every request of every configuration carries its own
`Idempotency-Key` (`benchmarks/wrk_idem.lua`: a per-run prefix and a counter), so nothing is a replay. Redis:
{redis_desc(r)}, a key prefix of the run's own, deleted after each gateway; *Redis CPU* is the Redis server's,
in % of one core.

{scenario_table(rows)}

{_gov_note(sm)}

{_together_note(data)}

**Redis round trips per request**, counted in separate short runs ({data.get("count_seconds", 3)} s per concurrency
after 1 s of warm-up, so that the relay's own latency does not touch the throughput above): the gateway's
`GATEWAY_REDIS_URL` points at `benchmarks/redis_relay.py`, a loopback TCP relay (core 0) in front of the same
Redis that counts client→server bursts (one command, one pipeline or one EVALSHA is one round trip); the count
is divided by the requests answered 2xx. The c1 rows are the per-request count. At c64 the gateway's Redis
client writes the calls of concurrent requests together (auto-pipelining), so one burst carries several
requests' scripts and bursts per request fall below one.
{KINDS}

{_rt_table(data.get("round_trips", {}))}

{checks_table(checks_for("governance", data))}

{profiles_md(data)}"""


REDIS_CLIENT_LABELS = {"redis-py": "redis-py 8.1 asyncio, as the store used it (socket timeout, health checks)",
                       "redis-py-no-timeout": "redis-py 8.1 asyncio, no socket timeout nor health checks",
                       "resp": "the gateway's `gateway/store/resp.py` (hiredis, auto-pipelined)"}
REDIS_WORKLOAD_LABELS = {"c1": "c1, one-key script", "c64": "c64, one-key script",
                         "c64-batch": "c64, 8 keys + 20 args, nested reply"}


def render_redis_client(data: dict) -> str:
    """CPU µs per call, median over repeats, per client and workload; the ratio to the gateway's client."""
    runs = data["runs"]
    med_cpu = {c: {w: med([r["cpu_us"] for r in rs]) for w, rs in ws.items()} for c, ws in runs.items()}
    med_ops = {c: {w: med([r["ops_per_s"] for r in rs]) for w, rs in ws.items()} for c, ws in runs.items()}
    workloads = list(REDIS_WORKLOAD_LABELS)
    head = "| client | " + " | ".join(f"{REDIS_WORKLOAD_LABELS[w]}: CPU µs / call (calls/s)" for w in workloads)
    lines = [head + " |", "|---" * (len(workloads) + 1) + "|"]
    for c in runs:
        cells = [f"{med_cpu[c][w]:.1f} ({med_ops[c][w]:,.0f})" for w in workloads]
        lines.append(f"| {REDIS_CLIENT_LABELS.get(c, c)} | " + " | ".join(cells) + " |")
    ratios = "; ".join(f"{REDIS_WORKLOAD_LABELS[w]} **{med_cpu['redis-py'][w] / med_cpu['resp'][w]:.1f}×**"
                       for w in workloads if med_cpu["resp"][w])
    repeats = max(len(rs) for ws in runs.values() for rs in ws.values())
    return f"""### Redis client: CPU per script call

{preamble(data["meta"])}
Why the store has a client of its own. Each measurement is a process of its own on the gateway's core (uvloop,
as the gateway runs; `benchmarks/redis_client.py`), calling EVALSHA on {redis_desc(data.get("redis") or {})};
CPU is the process's, around the timed calls only, after a warm-up. {repeats} repeats, the clients interleaved;
medians. The c64 batch-shaped script is the size of the chain's composed call before the upstream.

{chr(10).join(lines)}

redis-py's CPU per call ÷ the gateway client's: {ratios}. The gateway's client writes the calls of concurrent
callers together once per event-loop iteration and parses with hiredis, with one reply-timeout check per
connection instead of a timer per command. valkey-glide 2.6 and coredis 6.9, tried by hand on the same
workloads, cost as much as redis-py (glide) or more (coredis), so neither took the job.
"""


INTRO = """## Responses engine and governance

The sections below come from `benchmarks/run_engine.py`, on the same harness as the table above: the same mock
upstream, wrk and pinning (the gateway alone on core 1; the mock upstream, wrk, the stream client and the Redis
relay on core 0), the same check of foreign CPU use (a measurement during which other processes used more than
`--max-background`, 10% of a core by default, is taken again). Each section names the command that measured
it: `--suite` runs some of the suites, and a run rewrites the sections of the suites it ran, no other."""


def render_memory(data: dict) -> str:
    import engine_memory  # the suite's own module renders it (and imports this one's helpers)

    return engine_memory.render(data)


RENDER = {"responses": render_responses, "store": render_store, "streams": render_streams,
          "governance": render_governance, "redis-client": render_redis_client, "memory": render_memory}


def _sections_in(text: str) -> dict[str, str]:
    """The sections of a block already in the docs, by suite (each opens with its `<!-- suite: name -->` line)."""
    out: dict[str, str] = {}
    for chunk in text.split("<!-- suite: ")[1:]:
        name, _, body = chunk.partition(" -->\n")
        out[name] = body.split(base.ENGINE_END)[0].rstrip() + "\n"
    return out


def render_block(results: dict, old_block: str = "") -> str:
    """The block: a section per suite, from `results`, else kept as it was in the docs."""
    kept = _sections_in(old_block)
    parts = [base.ENGINE_BEGIN, "", "<!-- Written by benchmarks/run_engine.py: edit that script, not this block. -->",
             "", INTRO, ""]
    for suite in ORDER:
        body = RENDER[suite](results[suite]).rstrip() + "\n" if suite in results else kept.get(suite)
        if body:
            parts += [f"<!-- suite: {suite} -->", body]
    parts.append(base.ENGINE_END)
    return "\n".join(parts) + "\n"


def publish(results: dict, write: bool, only: list[str] | None = None) -> int:
    """Print the results; with `write`, put them in docs/benchmarks.md. With `only`, the other suites' sections
    stay as they are in the docs (when they are there)."""
    if not results:
        base.log("no results yet: run benchmarks/run_engine.py first")
        return 1
    old = base.DOCS.read_text() if base.DOCS.exists() else ""
    start, end = old.find(base.ENGINE_BEGIN), old.find(base.ENGINE_END)
    has_block = start >= 0 and end > start
    kept = old[start:end] if has_block else ""
    fresh = {k: v for k, v in results.items() if only is None or k in only or f"<!-- suite: {k} -->" not in kept}
    block = render_block(fresh, kept)
    print(block)
    if not write:
        base.log(f"{base.DOCS.relative_to(base.REPO)} not rewritten (--docs yes to force)")
        return 0
    if has_block:
        text = old[:start] + block.rstrip("\n") + old[end + len(base.ENGINE_END):]
    else:
        text = old.rstrip("\n") + "\n\n" + block
    base.DOCS.write_text(text if text.endswith("\n") else text + "\n")
    base.log(f"wrote the engine sections of {base.DOCS.relative_to(base.REPO)}")
    return 0
