"""Serving one gateway app: uvicorn's server with the gateway's drain (``GatewayServer``), its configuration, and
the collector tuning of a server process. ``python -m gateway`` runs one; each worker of ``gateway.workers`` runs
one on the socket they share."""

import asyncio
import gc
import math
import signal
import socket
import sys
import time
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn

from config import Settings
from gateway.logs import configure as configure_logging

if TYPE_CHECKING:
    from gateway.runtime import Gateway


def tune_gc(gen0_threshold: int) -> None:
    """Make Python's cyclic collector cheaper for a server: a request allocates hundreds of containers, so with
    the default threshold (700) generation 0 is collected every request or two, and the older generations,
    which hold every imported module and the catalogue, are walked again and again. Freezing the start-up heap
    takes it out of every collection; a higher threshold makes collections rarer (garbage cycles wait a little
    longer). Only the server process does this: an app built in tests leaves the collector alone."""
    if gen0_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)


class GatewayServer(uvicorn.Server):
    """uvicorn's server with the gateway's drain at SIGTERM (or SIGINT): ``/readyz`` answers 503 from the signal on;
    the server keeps serving for ``shutdown_delay_seconds`` (a second signal ends that), then closes its
    listener and lets the requests in flight finish within ``shutdown_grace_seconds``; what is left then ends
    with its error event and releases its budget holds and idempotency claims while the store is still open
    (``Gateway.drain``).

    ``worker``: one of several processes (``gateway.workers``), whose supervisor forwards every stop as
    SIGTERM; a terminal's SIGINT, which reaches the whole process group, is left to it (two signals would
    force the exit).
    """

    def __init__(self, config: uvicorn.Config, gateway: "Gateway", worker: bool = False) -> None:
        super().__init__(config)
        self.gateway = gateway
        self.worker = worker
        self.cut_delay = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.worker and sig == signal.SIGINT:
            return
        self.cut_delay = self.should_exit  # a second signal ends the delay
        self.gateway.draining = True
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        deadline = time.monotonic() + self.gateway.settings.shutdown_delay_seconds
        while time.monotonic() < deadline and not self.cut_delay:  # out of rotation, still serving
            await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        for server in self.servers:  # no new connections while the requests in flight finish
            server.close()
        await self.gateway.drain()
        await super().shutdown(sockets)


def server_config(app: Any, settings: Settings) -> uvicorn.Config:
    """uvicorn's configuration for the gateway's app (one process, or each worker), and the gateway's logging
    (``gateway.logs``: JSON lines; uvicorn's own access log stays off unless asked, the request lines replace
    it)."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http="httptools",
        loop="uvloop",
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_keep_alive=75,
        # the drain has ended every request by then: what is left is closing connections
        timeout_graceful_shutdown=max(1, math.ceil(settings.shutdown_cleanup_seconds)),
    )
    # after uvicorn's own logging setup (made by Config): its dictConfig enables every logger that exists, which
    # turned the request lines back on when they are off
    configure_logging(settings)
    return config


def serve(server: GatewayServer, sockets: list[socket.socket] | None = None) -> None:
    """Run ``server`` (on ``sockets``, else its host and port) until it has drained; exits 3 when it could not
    start (uvicorn's own status)."""
    # uvicorn raises the signal it stopped on again once it has shut down, under the handler it found: with its
    # own handler found there, that changes nothing, so a completed shutdown exits with status 0 (under the
    # default one, SIGTERM killed the process: -15); a signal before uvicorn installs its handlers is not lost
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, server.handle_exit)
    server.run(sockets)
    if not server.started:
        sys.exit(3)  # uvicorn's own status when the server could not start (the port is taken, say)
