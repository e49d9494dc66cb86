"""``/healthz`` (the process is up) and ``/readyz`` (catalogue loaded, store reachable and holding the
catalogue's state, and not shutting down). No key needed."""

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.errors import StoreUnavailable
from gateway.runtime import Gateway

log = logging.getLogger("gateway")


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """Ready when the store answers and knows every space: a space it lost (a Redis restarted without
    persistence, a flush) is seeded again from the catalogue here, so a probe never says ready over a store
    that would refuse every model, and a replica taken out of rotation comes back by itself."""
    gw: Gateway = request.app.state.gateway
    if gw.draining:  # shutting down: out of rotation at once, while the requests in flight finish
        return JSONResponse({"status": "draining"}, status_code=503, headers={"Connection": "close"})
    try:
        await gw.store.ping()
        seeded = await gw.catalog.seed()
        await gw.agents.registry.seed()  # the tenants' agents likewise
    except StoreUnavailable as exc:
        return JSONResponse({"status": "unavailable", "reason": exc.message}, status_code=503)
    if seeded:
        log.warning("the store had lost %d space(s) of the catalogue: seeded again from the YAML", seeded)
    return JSONResponse({"status": "ready", "tenants": len(gw.catalog.tenants)})
