"""Loopback servers for tests: ASGI apps under uvicorn in a background thread, and a throwaway Redis."""

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import uvicorn
import yaml

T = TypeVar("T")


def wait_for(probe: Callable[[], T], done: Callable[[T], bool] = bool, timeout: float = 30.0) -> T:
    """Probe until ``done(value)`` holds, for at most ``timeout`` seconds, and return the last value either way
    (so the caller's assert shows what was seen). The bound is generous on purpose: a condition that holds comes
    back at once, and only a real failure ever waits it out."""
    deadline = time.monotonic() + timeout
    while not done(value := probe()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


async def until(condition: Callable[[], Any], what: str, timeout: float = 60.0) -> None:
    """``wait_for`` inside a test's event loop: probes between sleeps, so the loop's own tasks move meanwhile
    (a blocking wait there would only ever see what was already true); fails with ``what`` past ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        await asyncio.sleep(0.02)


class InFlight:
    """An ASGI app wrapped to count its HTTP calls still running. The gateway does work after an answer has gone
    out (the policies' ``after`` phase); a test that must see that work done waits for ``idle`` instead of sleeping."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.running = 0
        self.changed = threading.Condition()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with self.changed:
            self.running += 1
        try:
            await self.app(scope, receive, send)
        finally:
            with self.changed:
                self.running -= 1
                self.changed.notify_all()

    def idle(self, timeout: float = 30.0) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: self.running == 0, timeout):
                raise AssertionError(f"{self.running} requests still running after {timeout} s")


class Canary:
    """A TCP listener on a loopback address that only counts the connections it is offered (and closes them):
    where a hostile input points, it must count zero."""

    def __init__(self, host: str = "127.0.0.1", hold: bool = False) -> None:
        self.hold = hold  # keep the connections open, silent, until closed (a server that never answers)
        self.held: list[socket.socket] = []
        self.sock = socket.create_server((host, 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.base = f"http://{host}:{self.port}"
        self.url = self.base + "/v1"
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            if self.hold:
                self.held.append(conn)
            else:
                conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self.held:
            conn.close()
        self.sock.close()


@contextlib.contextmanager
def canary(host: str = "127.0.0.1", hold: bool = False) -> Iterator[Canary]:
    listener = Canary(host, hold)
    try:
        yield listener
    finally:
        listener.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(app: Any, timeout: float = 10.0, lifespan: bool = True) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 in a thread and yield its base URL; stopped on exit. With ``lifespan`` its
    startup and shutdown run (the gateway's); without, it only ever sees HTTP (the fake upstreams)."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on" if lifespan else "off",
        http="httptools",
        loop="asyncio",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)


def redis_answers(port: int, any_reply: bool = False) -> bool:
    """Whether a Redis on ``port`` answers PING (with ``any_reply``, an error such as NOAUTH counts)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            reply = s.recv(16)
            return reply[:1] in (b"+", b"-") if any_reply else reply.startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """The machine's Redis on 6379 when it answers, else a throwaway redis-server on a free port."""
    if redis_answers(6379):
        yield "redis://127.0.0.1:6379/0"
        return
    with throwaway_redis() as url:
        yield url


class RedisProcess:
    """A redis-server of our own on a free port, keeping nothing on disk (``--save ''``, no AOF). A test may
    stop it (by PID) and start it again on the same port: it then comes back empty, as a Redis without
    persistence does after a restart."""

    def __init__(self, workdir: str, *options: str, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("no Redis answers on 6379 and redis-server is not installed (make test installs it)")
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.command += ["--dir", workdir, *options]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not redis_answers(self.port, any_reply=True):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("throwaway redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@contextlib.contextmanager
def redis_process(*options: str, port: int | None = None) -> Iterator[RedisProcess]:
    """A started ``RedisProcess`` (with extra redis-server options, on ``port`` or a free one), stopped on exit."""
    with tempfile.TemporaryDirectory() as workdir:
        redis = RedisProcess(workdir, *options, port=port)
        redis.start()
        try:
            yield redis
        finally:
            redis.stop()


@contextlib.contextmanager
def throwaway_redis() -> Iterator[str]:
    """A redis-server of our own on a free port, keeping nothing on disk; stopped by PID on exit."""
    with redis_process() as redis:
        yield redis.url


def spawn_gateway(
    catalogue: dict[str, Any],
    folder: Path,
    redis_url: str | None,
    prefix: str = "",
    *,
    stderr: IO[bytes] | None = None,
    log_level: str = "warning",
    **env: str,
) -> tuple[subprocess.Popen[bytes], str]:
    """A gateway as its own process (``python -m gateway``) on the given Redis and prefix (``None``: the
    in-memory store), once ready; its stderr to ``stderr`` when given.

    ``env`` adds ``GATEWAY_*`` settings. The caller stops it (or kills it, to play a crash)."""
    config = folder / f"gateway-{uuid.uuid4().hex[:8]}.yaml"
    config.write_text(yaml.safe_dump(catalogue))
    port = free_port()
    store = {"GATEWAY_REDIS_URL": redis_url, "GATEWAY_REDIS_PREFIX": prefix} if redis_url is not None else {}
    environ = {**os.environ, **store, **env}
    command = [sys.executable, "-m", "gateway", "--config", str(config), "--port", str(port), "--log-level", log_level]
    proc = subprocess.Popen(command, env=environ, stderr=stderr)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=1) as answer:
                if answer.status == 200:
                    return proc, base
        except OSError:
            time.sleep(0.05)
    proc.kill()
    proc.wait(10)
    raise RuntimeError("the gateway process did not start")


def kill_if_running(proc: subprocess.Popen[bytes]) -> None:
    """A test's last word on a process it started: killed (by PID) if it has not exited."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


@contextlib.contextmanager
def gateway_process(catalogue: dict[str, Any], folder: Path, redis_url: str, prefix: str, **env: str) -> Iterator[str]:
    """``spawn_gateway`` as a context: yields the base URL, stops the process by PID on exit."""
    proc, base = spawn_gateway(catalogue, folder, redis_url, prefix, **env)
    try:
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


def pool_in_use(base: Any) -> int:
    """Upstream connections an in-process gateway (``start_gateway``'s URL) holds right now."""
    return len(base.app.state.gateway.session.connector._acquired)


def wait_pool_idle(base: Any, seconds: float = 5.0) -> int:
    """Wait until the gateway holds no upstream connection (or ``seconds`` pass); returns how many it holds."""
    deadline = time.monotonic() + seconds
    while pool_in_use(base) and time.monotonic() < deadline:
        time.sleep(0.02)
    return pool_in_use(base)
