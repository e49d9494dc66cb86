"""``python -m gateway``: run the gateway; ``python -m gateway worker`` runs a skill-execution worker process
(same flags, needs Redis); ``python -m gateway hash-key KEY`` prints the catalogue's hash of a key.

Flags override the ``GATEWAY_*`` environment; a broken catalogue or policy config exits with status 2 and a
message naming the field.
"""

import argparse
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from config import CatalogueError, Settings
from gateway.catalog import hash_key
from gateway.exposure import exposure_problem
from gateway.policy import PolicyConfigError
from gateway.server import GatewayServer, serve, server_config, tune_gc
from gateway.workers import COULD_NOT_START, Supervisor, listen_socket, workers_problem

if TYPE_CHECKING:
    from starlette.applications import Starlette


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gateway", description="Run the LLM gateway.")
    parser.add_argument("--config", help="YAML catalogue (GATEWAY_CONFIG)")
    parser.add_argument("--host", help="listen address (GATEWAY_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (GATEWAY_PORT, default 8080)")
    parser.add_argument("--redis-url", help="redis://… shared store (GATEWAY_REDIS_URL); default in-memory")
    parser.add_argument("--log-level", help="log level (GATEWAY_LOG_LEVEL)")
    parser.add_argument("--workers", type=int, help="worker processes on the port (GATEWAY_WORKERS); >1 needs Redis")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["hash-key"]:
        if len(argv) != 2:
            sys.exit("usage: python -m gateway hash-key KEY")
        print(hash_key(argv[1]))
        return
    worker = argv[:1] == ["worker"]
    args = _parse(argv[1:] if worker else argv)
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    settings = Settings(**overrides)
    if worker:
        _run_execution_worker(settings)
        return
    app = _validated_app(settings)
    if settings.workers > 1:
        del app  # each worker builds its own
        sys.exit(_run_workers(settings))
    tune_gc(settings.gc_gen0_threshold)
    serve(GatewayServer(server_config(app, settings), app.state.gateway))


def _cannot_start(problem: object, status: int = 2) -> NoReturn:
    sys.stderr.write(f"gateway: cannot start: {problem}\n")
    sys.exit(status)


def _validated_app(settings: Settings) -> "Starlette":
    """The app, or exit 2 naming what is wrong: the catalogue, a policy's config, the exposure, the workers."""
    from gateway.app import create_app

    problem = workers_problem(settings)
    if problem is not None:
        _cannot_start(problem)
    try:
        app = create_app(settings)
    except (CatalogueError, PolicyConfigError) as exc:
        _cannot_start(exc)
    problem = exposure_problem(settings.host, app.state.gateway.catalog.tenants, settings.demo)
    if problem is not None:
        _cannot_start(problem)
    return app


def _run_execution_worker(settings: Settings) -> None:
    from gateway.skills.process import run_worker_process, worker_problem

    problem = worker_problem(settings)
    if problem is not None:
        _cannot_start(problem)
    try:
        run_worker_process(settings)
    except (CatalogueError, PolicyConfigError) as exc:
        _cannot_start(exc)


def _run_workers(settings: Settings) -> int:
    try:
        sock = listen_socket(settings.host, settings.port)
    except OSError as exc:
        _cannot_start(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}", COULD_NOT_START)
    return Supervisor(settings, sock).run()


if __name__ == "__main__":
    main()
