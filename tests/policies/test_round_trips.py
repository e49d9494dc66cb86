"""Store round trips per request: the chain batches its policies' store work into one round trip before the
upstream call and one after it, counted by the loopback relay the governance benchmark uses."""

import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx2

from tests.conftest import ADMIN_KEY, catalogue
from tests.servers import free_port

RELAY = Path(__file__).resolve().parents[2] / "benchmarks" / "redis_relay.py"
ALL_FIVE = [
    {"use": "idempotency"},
    {"use": "allow_list"},
    {"use": "rate_limit", "space": {"requests_per_minute": 100000, "tokens_per_minute": 10000000}},
    {"use": "budget", "limits": [{"scope": "space", "period": "day", "usd": "1000"}]},
    {"use": "cost"},
]


@contextmanager
def counting_relay(redis_url: str) -> Iterator[tuple[str, Any]]:
    """The relay in front of the test Redis: yields its URL and a function reading (round trips, kinds)."""
    target = urlparse(redis_url)
    port, stats_port = free_port(), free_port()
    command = [sys.executable, str(RELAY), "--port", str(port), "--stats-port", str(stats_port)]
    command += ["--redis-host", target.hostname or "127.0.0.1", "--redis-port", str(target.port or 6379)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)

    def stats() -> dict[str, Any]:
        with socket.create_connection(("127.0.0.1", stats_port), timeout=5) as s:
            return dict(json.loads(s.makefile().readline()))

    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                stats()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the Redis relay did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", stats
    finally:
        proc.terminate()
        proc.wait(10)


def round_trips(start_gateway, upstream, redis_url, redis_prefix, policies, **body: Any) -> int:
    """Round trips of one request (after a warm-up request that loads the scripts) through a gateway."""
    cat = catalogue(upstream[1])
    cat["tenants"][0]["models"][0]["pricing"] = {"input_per_mtok": "0.15", "output_per_mtok": "0.60"}
    cat["tenants"][0]["policies"] = policies
    with counting_relay(redis_url) as (url, stats):
        base = start_gateway(cat, redis_url=url, redis_prefix=f"{redis_prefix}{uuid.uuid4().hex}:")
        payload = {"model": "up", "messages": [{"role": "user", "content": "hi"}], **body}

        def send() -> httpx2.Response:
            headers = {"Authorization": f"Bearer {ADMIN_KEY}", "Idempotency-Key": uuid.uuid4().hex}
            answer = httpx2.post(base + "/v1/chat/completions", headers=headers, json=payload, timeout=10)
            assert answer.status_code == 200, answer.text
            return answer

        send()
        base.idle()  # the after phase runs once the answer has gone out
        before = stats()["round_trips"]
        answer = send()
        base.idle()
        if any(p["use"] == "cost" for p in policies) and not body.get("stream"):
            assert answer.headers["x-gateway-cost-usd"]
        return int(stats()["round_trips"] - before)


def test_all_five_policies_add_one_round_trip_to_allow_list_alone(start_gateway, upstream, redis_url, redis_prefix):
    alone = round_trips(start_gateway, upstream, redis_url, redis_prefix, [{"use": "allow_list"}])
    five = round_trips(start_gateway, upstream, redis_url, redis_prefix, ALL_FIVE)
    assert (alone, five) == (1, 2)


def test_a_stream_makes_the_same_two_round_trips(start_gateway, upstream, redis_url, redis_prefix):
    assert round_trips(start_gateway, upstream, redis_url, redis_prefix, ALL_FIVE, stream=True) == 2
