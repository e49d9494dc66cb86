"""Several worker processes on one port (``--workers N``, ``GATEWAY_WORKERS``).

The supervisor (the process started) binds the listening socket once and starts N workers (``multiprocessing``
spawn: fresh interpreters, the socket and the settings handed over); each builds its own app and runs it under
``GatewayServer`` on the shared socket, so each drains by itself. A signal to the supervisor (SIGTERM, SIGINT)
is forwarded to every worker as SIGTERM; the workers ignore a terminal's SIGINT, which reaches the whole process
group, so that one Ctrl-C is one stop. The supervisor exits 0 when every worker exited 0. A worker that dies
while serving is started again; one that could not start (status 3) stops the others and the supervisor.

uvicorn's own ``workers`` option is not used: its workers run a plain ``uvicorn.Server`` (no drain), and its
supervisor's status does not tell whether they drained. Workers share state only through Redis: the in-memory
store is refused at start (``workers_problem``).
"""

import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
from multiprocessing.process import BaseProcess
from types import FrameType

from config import Settings
from gateway.logs import configure as configure_logging
from gateway.metrics import process_ended
from gateway.server import GatewayServer, serve, server_config, tune_gc

log = logging.getLogger("gateway")

COULD_NOT_START = 3  # a worker's status when its server could not start (as ``python -m gateway``'s)


def workers_problem(settings: Settings) -> str | None:
    """Why these settings cannot run several workers, or None."""
    if settings.workers > 1 and settings.redis_url is None:
        return (
            f"{settings.workers} workers need a shared store: set GATEWAY_REDIS_URL (--redis-url). On the "
            "in-memory store each worker process would keep its own allow-lists, budgets, idempotency records "
            "and stored responses"
        )
    return None


def listen_socket(host: str, port: int) -> socket.socket:
    """The socket every worker accepts on (bound here, listened on by each worker's server)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def run_worker(settings: Settings, sock: socket.socket) -> None:
    """One worker process: its own app on the shared socket, drained at the supervisor's SIGTERM."""
    from gateway.app import create_app

    app = create_app(settings)
    tune_gc(settings.gc_gen0_threshold)
    serve(GatewayServer(server_config(app, settings), app.state.gateway, worker=True), [sock])


class Supervisor:
    """Starts ``settings.workers`` workers on ``sock`` and waits for them; see the module docstring."""

    def __init__(self, settings: Settings, sock: socket.socket) -> None:
        self.settings = settings
        self.sock = sock
        self.spawn = multiprocessing.get_context("spawn")
        self.workers: list[BaseProcess] = []
        self.stopping = False

    def run(self) -> int:
        """Serve until told to stop; returns the process's exit status."""
        configure_logging(self.settings)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        # the place where each worker process is started (anything it must inherit, set it before): with metrics
        # on, the workers write their values to one directory that /metrics of any of them sums (docs/observability.md)
        own_dir = None
        if self.settings.metrics_enabled and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            own_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gateway-metrics-")
        try:
            return self._supervise()
        finally:
            if own_dir is not None:
                shutil.rmtree(own_dir, ignore_errors=True)

    def _supervise(self) -> int:
        self.workers = [self._start() for _ in range(self.settings.workers)]
        status = 0
        while not self.stopping:
            multiprocessing.connection.wait([w.sentinel for w in self.workers], timeout=0.5)
            for i, worker in enumerate(self.workers):
                if worker.exitcode is None or self.stopping:
                    continue
                if worker.exitcode == COULD_NOT_START:
                    log.error("worker %s could not start: stopping every worker", worker.pid)
                    status = COULD_NOT_START
                    self._stop(signal.SIGTERM, None)
                    break
                log.error("worker %s exited with status %s: starting another", worker.pid, worker.exitcode)
                if worker.pid is not None:
                    process_ended(worker.pid)  # its live gauges leave the sums
                self.workers[i] = self._start()
        for worker in self.workers:
            worker.join()
        self.sock.close()
        return status or (0 if all(w.exitcode == 0 for w in self.workers) else 1)

    def _start(self) -> BaseProcess:
        worker = self.spawn.Process(target=run_worker, args=(self.settings, self.sock), name="gateway-worker")
        worker.start()
        if self.stopping:  # the stop came while it was starting
            self._signal(worker)
        return worker

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        """Every signal is forwarded once to each worker (a second one ends their pre-stop delay)."""
        self.stopping = True
        for worker in self.workers:
            self._signal(worker)

    def _signal(self, worker: BaseProcess) -> None:
        if worker.pid is not None and worker.exitcode is None:
            try:
                os.kill(worker.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
