"""``python -m gateway worker``: a process that only runs skill executions (no HTTP listener), one consumer of
the shared queue on Redis, until SIGTERM or SIGINT; then its executions get the shutdown grace and the rest are
handed back (``ExecutionWorker.stop``). Start as many as the load needs: they share the work."""

import asyncio
import signal

from config import Settings, load_catalogue
from gateway.logs import configure
from gateway.runtime import Gateway

NEEDS_REDIS = "python -m gateway worker needs the shared store: set GATEWAY_REDIS_URL (or --redis-url)"


def worker_problem(settings: Settings) -> str | None:
    return NEEDS_REDIS if settings.redis_url is None else None


def run_worker_process(settings: Settings) -> None:
    """Build the runtime (the catalogue validated as for the gateway) and run its worker until a signal."""
    configure(settings)
    gw = Gateway(settings.model_copy(update={"executions_worker": True}), load_catalogue(settings.config))
    asyncio.run(_run(gw))


async def _run(gw: Gateway) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await gw.start()
    try:
        await stop.wait()
        await gw.drain()
    finally:
        await gw.stop()
