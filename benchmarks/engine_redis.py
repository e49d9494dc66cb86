"""Redis for the engine benchmarks (stdlib only): the machine's or a throwaway one, key clean-up, relay counters."""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import run as base
from run import BenchError, Processes


class Resp:
    """The smallest RESP client: enough for PING, INFO, SCAN and UNLINK."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def __enter__(self) -> Resp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()
        self.sock.close()

    def __call__(self, *args: object) -> object:
        parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        self.sock.sendall(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
        return self._reply()

    def _reply(self) -> object:
        line = self.file.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise BenchError(f"redis: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            return None if int(rest) < 0 else self.file.read(int(rest) + 2)[:-2]
        if kind == b"*":
            return None if int(rest) < 0 else [self._reply() for _ in range(int(rest))]
        raise BenchError(f"redis: unexpected reply {line[:80]!r}")


def redis_info(port: int, origin: str) -> dict:
    with Resp(port) as r:
        if r("PING") != "PONG":
            raise BenchError(f"redis on port {port} does not answer PING")
        text = r("INFO", "server").decode()  # type: ignore[union-attr]
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    pid = int(fields.get("process_id", "0"))
    cores = "unknown"
    status = Path(f"/proc/{pid}/status")
    if pid and status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                cores = line.split(":", 1)[1].strip()
    return {"origin": origin, "port": port, "version": fields.get("redis_version", "?"),
            "pid": pid if status.exists() else None, "cores": cores}


def setup_redis(mode: str, procs: Processes) -> dict:
    """The machine's Redis on 6379 if it answers (auto / machine), else a throwaway one on core 0."""
    if mode in ("auto", "machine"):
        try:
            return redis_info(6379, "machine")
        except (OSError, BenchError) as exc:
            if mode == "machine":
                raise BenchError(f"the machine's Redis at 127.0.0.1:6379 does not answer: {exc}") from None
    server = shutil.which("redis-server")
    if not server:
        raise BenchError("no Redis answers on 127.0.0.1:6379 and redis-server is not installed")
    port = base.free_port()
    procs.start("redis", [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
                base.LOAD_CORE)
    deadline = time.monotonic() + 10
    while True:
        try:
            return redis_info(port, "throwaway")
        except (OSError, BenchError):
            if time.monotonic() > deadline:
                raise BenchError("the throwaway redis-server did not answer within 10 s") from None
            time.sleep(0.05)


def delete_keys(redis: dict, prefix: str) -> int:
    deleted, cursor = 0, b"0"
    with Resp(redis["port"], timeout=30) as r:
        while True:
            cursor, keys = r("SCAN", cursor, "MATCH", prefix + "*", "COUNT", 2000)  # type: ignore[misc]
            if keys:
                deleted += int(r("UNLINK", *keys))  # type: ignore[arg-type]
            if cursor == b"0":
                return deleted


def relay_stats(port: int) -> dict:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        return json.loads(s.makefile("rb").readline())
