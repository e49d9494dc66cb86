"""The thinnest possible Starlette reverse proxy: the practical limit of the gateway's stack.

One route, POST /v1/chat/completions, forwarded to the upstream with the body bytes unchanged. Non-SSE
answers are read whole and returned as a plain Response; SSE answers are relayed with a StreamingResponse
as the bytes arrive. No auth, no parsing, no logging: whatever a real gateway does costs on top of this.

    python benchmarks/passthrough.py --upstream http://127.0.0.1:18000 --port 18001 [--client aiohttp]

`--client aiohttp` (the default, and the gateway's upstream client): one shared ClientSession with a
large connection limit and no cookie jar. `--client httpx`: one shared AsyncClient with a large pool,
for comparison. Served by uvicorn with httptools and uvloop, one worker, no access log.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

FORWARDED = ("content-type", "authorization", "accept")
CONNECTIONS = 1000


def aiohttp_app(upstream: str) -> Starlette:
    import aiohttp

    url = upstream.rstrip("/") + "/v1/chat/completions"
    state: dict[str, aiohttp.ClientSession] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=CONNECTIONS, limit_per_host=CONNECTIONS)
        session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300),
            auto_decompress=False,
        )
        state["session"] = session
        try:
            yield
        finally:
            await session.close()

    async def chat(request: Request) -> Response:
        body = await request.body()
        headers = {k: v for k in FORWARDED if (v := request.headers.get(k)) is not None}
        upstream_resp = await state["session"].post(url, data=body, headers=headers)
        content_type = upstream_resp.headers.get("content-type", "application/json")
        if not content_type.startswith("text/event-stream"):
            try:
                content = await upstream_resp.read()
            finally:
                upstream_resp.release()
            return Response(content, status_code=upstream_resp.status, media_type=content_type)

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for data in upstream_resp.content.iter_any():
                    yield data
            finally:
                upstream_resp.release()

        return StreamingResponse(relay(), status_code=upstream_resp.status, media_type=content_type)

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])], lifespan=lifespan)


def httpx_app(upstream: str) -> Starlette:
    import httpx

    url = upstream.rstrip("/") + "/v1/chat/completions"
    state: dict[str, httpx.AsyncClient] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
        client = httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(300, connect=10))
        state["client"] = client
        try:
            yield
        finally:
            await client.aclose()

    async def chat(request: Request) -> Response:
        body = await request.body()
        headers = {k: v for k in FORWARDED if (v := request.headers.get(k)) is not None}
        client = state["client"]
        upstream_resp = await client.send(client.build_request("POST", url, content=body, headers=headers), stream=True)
        content_type = upstream_resp.headers.get("content-type", "application/json")
        if not content_type.startswith("text/event-stream"):
            try:
                content = await upstream_resp.aread()
            finally:
                await upstream_resp.aclose()
            return Response(content, status_code=upstream_resp.status_code, media_type=content_type)

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for data in upstream_resp.aiter_raw():
                    yield data
            finally:
                await upstream_resp.aclose()

        return StreamingResponse(relay(), status_code=upstream_resp.status_code, media_type=content_type)

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])], lifespan=lifespan)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, help="base URL of the upstream, e.g. http://127.0.0.1:18000")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18001)
    parser.add_argument("--client", choices=("aiohttp", "httpx"), default="aiohttp")
    args = parser.parse_args(argv)
    app = aiohttp_app(args.upstream) if args.client == "aiohttp" else httpx_app(args.upstream)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        http="httptools",
        loop="uvloop",
        workers=1,
        access_log=False,
        log_level="warning",
        lifespan="on",
    )


if __name__ == "__main__":
    main()
