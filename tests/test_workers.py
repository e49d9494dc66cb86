"""``--workers N``: N processes on one port, sharing their state through Redis, each draining at the
supervisor's SIGTERM, the whole exiting 0; refused on the in-memory store."""

import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import httpx
import redis
import yaml

from tests.conftest import ADMIN_KEY, catalogue
from tests.servers import free_port, kill_if_running, spawn_gateway, wait_for

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
BOUND = 60.0


def workers_of(pid: int) -> list[int]:
    """The worker processes a supervisor started (its spawned children, not multiprocessing's helpers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    found = []
    for child in map(int, children):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in command:
            found.append(child)
    return found


def chat(base: str) -> int:
    """One chat completion on a new connection (so that whichever worker accepts now answers it)."""
    body = {"model": "fake-echo", "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(f"{base}/v1/chat/completions", json=body, headers=AUTH, timeout=BOUND).status_code


def test_two_workers_serve_one_port_and_drain_to_status_0(upstream, redis_url, redis_prefix, tmp_path):
    fake, url = upstream
    gate = f"gate-workers-{uuid.uuid4().hex[:8]}"
    fake.close_gate(gate)
    prefix = redis_prefix + uuid.uuid4().hex + ":"
    proc, base = spawn_gateway(catalogue(url, gate), tmp_path, redis_url, prefix, GATEWAY_WORKERS="2")
    store = redis.Redis.from_url(redis_url)
    instances = lambda: list(store.scan_iter(match=f"{prefix}instance:*"))  # noqa: E731
    try:
        workers = wait_for(lambda: workers_of(proc.pid), lambda found: len(found) == 2, BOUND)
        assert len(workers) == 2, workers
        assert len(wait_for(instances, lambda keys: len(keys) == 2, BOUND)) == 2  # both started, on one Redis
        for paused in workers:  # each answers alone: a stopped process accepts nothing
            os.kill(paused, signal.SIGSTOP)
            try:
                assert [chat(base) for _ in range(3)] == [200, 200, 200]
            finally:
                os.kill(paused, signal.SIGCONT)

        text: list[str] = []

        def stream() -> None:
            body = {"model": "up", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, headers=AUTH, timeout=BOUND) as r:
                text.extend(r.iter_text())

        reader = threading.Thread(target=stream, daemon=True)
        reader.start()
        assert wait_for(lambda: "".join(text), lambda seen: "\n\n" in seen, BOUND)
        proc.send_signal(signal.SIGTERM)
        fake.open_gate(gate)
        reader.join(BOUND)
        assert proc.wait(BOUND) == 0
        assert "".join(text).strip().endswith("data: [DONE]")  # the stream in flight finished in the drain
        assert instances() == []  # every worker withdrew its liveness key
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    finally:
        fake.open_gate(gate)
        kill_if_running(proc)
        store.close()


def test_several_workers_are_refused_on_the_memory_store(upstream, tmp_path):
    path = tmp_path / "catalogue.yaml"
    path.write_text(yaml.safe_dump(catalogue(upstream[1])))
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_REDIS_URL"}
    command = [sys.executable, "-m", "gateway", "--config", str(path), "--port", str(free_port()), "--workers", "2"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=BOUND)
    assert done.returncode == 2
    assert "gateway: cannot start: 2 workers need a shared store: set GATEWAY_REDIS_URL" in done.stderr
