"""Open N Responses streams at once against one gateway and read every one to its end.

    python benchmarks/open_streams.py --port 18080 --streams 1000 [--timeout 120]

One aiohttp `ClientSession` (no connection limit), N `POST /v1/responses` with `"stream": true` started
together; each is read to the end and checked: HTTP 200, `text/event-stream`, the expected number of
`response.output_text.delta` events, and a last `response.completed` event. Prints one line
`BENCH_RESULT {json}`: completed, errors (with the first few reasons), peak streams open at once (answer
headers received, stream not yet finished), wall time, and time-to-first-byte / whole-stream percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time

import aiohttp

try:
    import uvloop
except ImportError:  # pragma: no cover - the harness's venv has it
    uvloop = None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100 * len(values)))]


class Run:
    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self.open = 0
        self.peak_open = 0
        self.completed = 0
        self.errors: list[str] = []
        self.ttfb: list[float] = []
        self.whole: list[float] = []

    async def one(self, session: aiohttp.ClientSession, url: str, headers: dict, body: bytes,
                  start: asyncio.Event) -> None:
        await start.wait()
        t0 = time.monotonic()
        opened = False
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                ctype = resp.headers.get("content-type", "")
                if resp.status != 200 or not ctype.startswith("text/event-stream"):
                    text = (await resp.read())[:200]
                    raise ValueError(f"HTTP {resp.status} {ctype}: {text!r}")
                self.open += 1
                opened = True
                self.peak_open = max(self.peak_open, self.open)
                deltas, last, first = 0, "", True
                async for line in resp.content:
                    if first:
                        self.ttfb.append(time.monotonic() - t0)
                        first = False
                    if line.startswith(b"event:"):
                        last = line[6:].strip().decode()
                        if last == "response.output_text.delta":
                            deltas += 1
                if last != "response.completed" or deltas != self.chunks:
                    raise ValueError(f"stream ended with {last!r} after {deltas} deltas")
            self.completed += 1
            self.whole.append(time.monotonic() - t0)
        except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
            self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
        finally:
            if opened:
                self.open -= 1


async def main_async(args: argparse.Namespace) -> dict:
    run = Run(args.chunks)
    url = f"http://127.0.0.1:{args.port}/v1/responses"
    headers = {"Authorization": f"Bearer {args.api_key}", "Content-Type": "application/json"}
    body = json.dumps({"model": args.model, "input": "hello", "stream": True}).encode()
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    start = asyncio.Event()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.ensure_future(run.one(session, url, headers, body, start)) for _ in range(args.streams)]
        await asyncio.sleep(0)
        t0 = time.monotonic()
        start.set()
        await asyncio.gather(*tasks)
        wall = time.monotonic() - t0
    reasons: dict[str, int] = {}
    for err in run.errors:
        reasons[err] = reasons.get(err, 0) + 1
    return {
        "streams": args.streams,
        "completed": run.completed,
        "errors": len(run.errors),
        "error_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:5]),
        "peak_open": run.peak_open,
        "wall_s": wall,
        "ttfb_p50_s": percentile(run.ttfb, 50),
        "ttfb_p99_s": percentile(run.ttfb, 99),
        "stream_p50_s": percentile(run.whole, 50),
        "stream_max_s": max(run.whole) if run.whole else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--chunks", type=int, default=20, help="output_text.delta events expected per stream")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds allowed for each stream")
    p.add_argument("--api-key", default="sk-gw-demo-admin")
    p.add_argument("--model", default="bench-model")
    args = p.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.streams + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    factory = uvloop.new_event_loop if uvloop is not None else None
    with asyncio.Runner(loop_factory=factory) as runner:
        out = runner.run(main_async(args))
    print("BENCH_RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
