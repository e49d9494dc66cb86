"""A loopback TCP relay in front of Redis that counts round trips, for the governance benchmark.

Every client connection is relayed byte for byte to Redis on a connection of its own. A *round trip* is one
client→server burst: the bytes a client sends before Redis answers. A single command, a pipeline
(MULTI … EXEC or not) and an EVALSHA are each one. The relay also names each burst by its commands and the
kind of the first key it touches (`EVALSHA idem`, `GET allowed`, …: the key with the Redis prefix removed, up
to its first `:`), so a report can say which round trips a request makes.

    python benchmarks/redis_relay.py --port 16400 --redis-port 6379 --stats-port 16401 [--prefix gw:]

Connecting to the stats port returns one JSON line, `{"round_trips": N, "connections": C, "kinds": {...}}`,
and closes: the counters are cumulative, so a reader takes the difference between two reads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections import Counter

try:
    import uvloop
except ImportError:  # pragma: no cover - the harness's venv has it
    uvloop = None

BUF_LIMIT = 4096  # bytes of a burst kept for naming it


def _resp_arrays(data: bytes, limit: int = 64) -> list[list[bytes]]:
    """The first `limit` RESP arrays of bulk strings in `data` (a burst may be cut: stop at the first gap)."""
    out: list[list[bytes]] = []
    pos = 0
    try:
        while pos < len(data) and len(out) < limit and data[pos:pos + 1] == b"*":
            end = data.index(b"\r\n", pos)
            n = int(data[pos + 1:end])
            pos = end + 2
            items = []
            for _ in range(n):
                end = data.index(b"\r\n", pos)
                size = int(data[pos + 1:end])
                items.append(data[end + 2:end + 2 + size])
                pos = end + 2 + size + 2
            out.append(items)
    except (ValueError, IndexError):
        pass
    return out


def burst_kind(data: bytes, prefix: bytes) -> str:
    """`EVALSHA budget`, `MULTI RPUSH PEXPIRE EXEC log`, … for the commands of one burst."""
    commands = _resp_arrays(data)
    if not commands:
        return "other"
    names = [c[0].upper().decode(errors="replace") for c in commands if c]
    key = b""
    for cmd in commands:
        name = cmd[0].upper() if cmd else b""
        if name in (b"EVALSHA", b"EVAL") and len(cmd) > 3 and cmd[2] != b"0":
            key = cmd[3]
        elif name not in (b"MULTI", b"EXEC", b"CLIENT", b"HELLO", b"PING", b"SCRIPT", b"SELECT") and len(cmd) > 1:
            key = cmd[1]
        if key:
            break
    if key.startswith(prefix):
        key = key[len(prefix):]
    kind = key.split(b":", 1)[0].strip(b"{}").decode(errors="replace") if key else ""
    shown = " ".join(names) if len(names) <= 4 else f"{names[0]}…{names[-1]} ({len(names)} commands)"
    return f"{shown} {kind}".strip()


class Connection:
    """One relayed client connection; `waiting` is true when the client's next bytes start a new burst."""

    def __init__(self, relay: Relay, client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 server: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.relay, self.client, self.server = relay, client, server
        self.waiting = True
        self.buf = bytearray()

    async def upstream(self) -> None:
        reader, writer = self.client[0], self.server[1]
        while data := await reader.read(65536):
            if self.waiting:
                self.relay.round_trips += 1
                self.waiting = False
                self.buf = bytearray()
            if len(self.buf) < BUF_LIMIT:
                self.buf += data[:BUF_LIMIT]
            writer.write(data)
            await writer.drain()

    async def downstream(self) -> None:
        reader, writer = self.server[0], self.client[1]
        while data := await reader.read(65536):
            if not self.waiting:
                self.waiting = True
                self.relay.kinds[burst_kind(bytes(self.buf), self.relay.prefix)] += 1
            writer.write(data)
            await writer.drain()


class Relay:
    def __init__(self, redis_host: str, redis_port: int, prefix: bytes) -> None:
        self.redis = (redis_host, redis_port)
        self.prefix = prefix
        self.round_trips = 0
        self.connections = 0
        self.kinds: Counter[str] = Counter()

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection(*self.redis)
        except OSError:
            client_w.close()
            return
        conn = Connection(self, (client_r, client_w), (server_r, server_w))
        tasks = [asyncio.ensure_future(conn.upstream()), asyncio.ensure_future(conn.downstream())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            for w in (client_w, server_w):
                w.close()

    async def stats(self, _r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        stats = {"round_trips": self.round_trips, "connections": self.connections, "kinds": self.kinds}
        w.write(json.dumps(stats).encode() + b"\n")
        await w.drain()
        w.close()


async def serve(args: argparse.Namespace) -> None:
    relay = Relay(args.redis_host, args.redis_port, args.prefix.encode())
    loop = asyncio.get_running_loop()
    main = await asyncio.start_server(relay.handle, "127.0.0.1", args.port, backlog=1024)
    stats = await asyncio.start_server(relay.stats, "127.0.0.1", args.stats_port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"redis relay on 127.0.0.1:{args.port} -> {args.redis_host}:{args.redis_port} (pid {os.getpid()})",
          flush=True)
    async with main, stats:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--stats-port", type=int, required=True)
    p.add_argument("--redis-host", default="127.0.0.1")
    p.add_argument("--redis-port", type=int, default=6379)
    p.add_argument("--prefix", default="gw:", help="the gateway's key prefix, left out of the burst names")
    args = p.parse_args(argv)
    factory = uvloop.new_event_loop if uvloop is not None else None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
