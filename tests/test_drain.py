"""Draining at SIGTERM, on a real ``python -m gateway`` process: ``/readyz`` turns 503 at once, the listener
closes, the streams in flight finish by themselves within the grace period (or end with their error event when
they outlast it), every budget hold is released, the replica withdraws its liveness key, and the process exits
0. The in-process part shows the pre-stop delay: out of rotation but still serving."""

import asyncio
import signal
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis
import uvicorn
import yaml

from config import Settings
from gateway.app import create_app
from gateway.server import GatewayServer
from tests.conftest import ADMIN_KEY, catalogue
from tests.servers import free_port, kill_if_running, spawn_gateway, until
from tests.test_shutdown import holds, prefix_keys, stalling_catalogue

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
STREAMS = 100
BOUND = 60.0  # seconds any wait may take before the test fails
CHAT = {"model": "up", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}


class Stream:
    """One streamed chat completion; ``started`` once its first event arrived, ``text`` all it read."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.started = asyncio.Event()
        self.text = ""
        self.status = 0
        self.task = asyncio.ensure_future(self.run(client))

    async def run(self, client: httpx.AsyncClient) -> None:
        headers = {**AUTH, "Idempotency-Key": uuid.uuid4().hex}
        async with client.stream("POST", "/v1/chat/completions", json=CHAT, headers=headers) as answer:
            self.status = answer.status_code
            async for chunk in answer.aiter_text():
                self.text += chunk
                if "\n\n" in self.text:
                    self.started.set()

    def last_event(self) -> str:
        return self.text.strip().rsplit("\n\n", 1)[-1]


async def open_streams(client: httpx.AsyncClient) -> list[Stream]:
    streams = [Stream(client) for _ in range(STREAMS)]
    started = asyncio.ensure_future(asyncio.gather(*(s.started.wait() for s in streams)))
    await asyncio.wait([started, *(s.task for s in streams)], timeout=BOUND, return_when=asyncio.FIRST_COMPLETED)
    started.cancel()
    ended = [s for s in streams if s.task.done()]
    assert not ended, [(s.status, s.text, s.task.exception()) for s in ended[:3]]
    assert all(s.started.is_set() for s in streams), "not every stream started in time"
    return streams


def refuses_connections(base: str) -> bool:
    url = urlsplit(base)
    try:
        socket.create_connection((url.hostname, url.port), timeout=1).close()
    except (ConnectionRefusedError, ConnectionResetError):
        # reset: the handshake landed in the backlog of a listener that closed before accepting it (the kernel
        # answers that connection with a reset); the server accepts nothing either way
        return True
    return False


async def exit_status(proc: subprocess.Popen[bytes]) -> int:
    return await asyncio.to_thread(proc.wait, BOUND)


def client(base: str, connections: int = 1) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=base, limits=limits, timeout=BOUND)


async def test_streams_finishing_within_the_grace_complete_and_the_process_exits_0(
    upstream, redis_url, redis_prefix, tmp_path
):
    fake, url = upstream
    gate = f"gate-drain-{uuid.uuid4().hex[:8]}"
    fake.close_gate(gate)
    prefix = redis_prefix + uuid.uuid4().hex + ":"
    cat = stalling_catalogue(url)
    cat["tenants"][0]["models"][0]["deployment"]["model"] = gate
    proc, base = spawn_gateway(cat, tmp_path, redis_url, prefix, GATEWAY_SHUTDOWN_GRACE_SECONDS=str(BOUND))
    store = redis.Redis.from_url(redis_url)
    try:
        async with client(base, STREAMS) as streaming, client(base) as probe, client(base) as late:
            assert (await probe.get("/readyz")).status_code == 200  # a kept-alive connection, opened before
            assert (await late.get("/healthz")).status_code == 200
            streams = await open_streams(streaming)
            assert prefix_keys(store, prefix, "instance:")  # the replica's heartbeat

            proc.send_signal(signal.SIGTERM)
            await until(lambda: refuses_connections(base), "the listener to close")
            ready = await probe.get("/readyz")
            assert (ready.status_code, ready.json()) == (503, {"status": "draining"})
            refused = await late.post("/v1/chat/completions", json={**CHAT, "stream": False}, headers=AUTH)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "gateway_shutting_down"
            assert refused.headers["connection"] == "close" and refused.headers["retry-after"] == "1"
            assert not any(s.task.done() for s in streams)  # still running: the drain waits for them
            assert proc.poll() is None

            fake.open_gate(gate)
            await asyncio.wait_for(asyncio.gather(*(s.task for s in streams)), BOUND)
        assert await exit_status(proc) == 0
        for s in streams:
            assert s.status == 200 and s.last_event() == "data: [DONE]", s.text
            assert "error" not in s.text
        assert holds(store, prefix) == 0
        assert prefix_keys(store, prefix, "instance:") == []  # withdrawn: its jobs' readers repair them at once
    finally:
        fake.open_gate(gate)
        kill_if_running(proc)
        store.close()


async def test_streams_outlasting_the_grace_end_with_their_error_event_and_the_process_exits_0(
    upstream, redis_url, redis_prefix, tmp_path
):
    prefix = redis_prefix + uuid.uuid4().hex + ":"
    cat = stalling_catalogue(upstream[1])  # model ``up`` streams one chunk, then nothing until the client leaves
    proc, base = spawn_gateway(cat, tmp_path, redis_url, prefix, GATEWAY_SHUTDOWN_GRACE_SECONDS="1")
    store = redis.Redis.from_url(redis_url)
    try:
        async with client(base, STREAMS) as streaming:
            streams = await open_streams(streaming)
            assert holds(store, prefix) == STREAMS
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(asyncio.gather(*(s.task for s in streams)), BOUND)
        assert await exit_status(proc) == 0
        for s in streams:
            assert '"code":"gateway_shutting_down"' in s.last_event() and "[DONE]" not in s.text, s.text
        assert holds(store, prefix) == 0
        assert prefix_keys(store, prefix, "idem:") == []
    finally:
        kill_if_running(proc)
        store.close()


@contextmanager
def gateway_server(tmp_path: Any, upstream_url: str, **settings: Any) -> Iterator[tuple[GatewayServer, str]]:
    """A ``GatewayServer`` in a thread (its signal handler is called directly: signals reach the main thread)."""
    path = tmp_path / "catalogue.yaml"
    path.write_text(yaml.safe_dump(catalogue(upstream_url)))
    app = create_app(Settings(config=path, **settings))
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", loop="asyncio")
    server = GatewayServer(config, app.state.gateway)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = BOUND
        while not server.started and thread.is_alive() and deadline > 0:
            threading.Event().wait(0.02)
            deadline -= 0.02
        assert server.started
        yield server, base
    finally:
        server.should_exit = server.cut_delay = True
        thread.join(BOUND)


def test_the_pre_stop_delay_keeps_serving_out_of_rotation_until_it_ends(tmp_path, upstream):
    with gateway_server(tmp_path, upstream[1], shutdown_delay_seconds=BOUND) as (server, base):
        assert httpx.get(base + "/readyz").status_code == 200
        server.handle_exit(signal.SIGTERM, None)
        ready = httpx.get(base + "/readyz")  # a new connection: the listener is open through the delay
        assert (ready.status_code, ready.json()) == (503, {"status": "draining"})
        body = {**CHAT, "stream": False, "model": "fake-echo"}
        assert httpx.post(base + "/v1/chat/completions", json=body, headers=AUTH).status_code == 200
        server.handle_exit(signal.SIGTERM, None)  # a second signal ends the delay
        assert wait_refused(base)


def wait_refused(base: str) -> bool:
    for _ in range(int(BOUND / 0.05)):
        if refuses_connections(base):
            return True
        threading.Event().wait(0.05)
    return False
