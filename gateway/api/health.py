"""``/healthz`` (the process is up) and ``/readyz`` (catalogue loaded, store reachable). No key needed."""

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.errors import StoreUnavailable
from gateway.runtime import Gateway


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    gw: Gateway = request.app.state.gateway
    try:
        await gw.store.ping()
    except StoreUnavailable as exc:
        return JSONResponse({"status": "unavailable", "reason": exc.message}, status_code=503)
    return JSONResponse({"status": "ready", "tenants": len(gw.catalog.tenants)})
