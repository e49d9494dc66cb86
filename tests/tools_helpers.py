"""A catalogue and ``Tools`` for the tools tests: one tenant, a space that allows loopback explicitly (the test
servers live there) and one that does not."""

from collections.abc import Mapping
from typing import Any

import orjson

from config import Catalogue, Settings
from gateway.tools import Tools

TENANT = "5b0d0c5e-3f1d-4d5e-9a51-2b7c1d0e0a01"
OPEN = "5b0d0c5e-3f1d-4d5e-9a51-2b7c1d0e0a02"  # allows 127.0.0.1
CLOSED = "5b0d0c5e-3f1d-4d5e-9a51-2b7c1d0e0a03"  # allows no private address
LOOPBACK_SERVERS = ["http://127.0.0.1*", "http://localhost*", "http://[::1]*"]


def tools_catalogue(
    mcp_servers: list[dict[str, Any]] | None = None,
    http_tools: list[dict[str, Any]] | None = None,
    allow_private: list[str] | None = None,
    allowed_servers: list[str] | None = None,
) -> dict[str, Any]:
    declared = [s["label"] for s in mcp_servers or []] + [t["name"] for t in http_tools or []]
    servers = LOOPBACK_SERVERS if allowed_servers is None else allowed_servers
    return {
        "tenants": [
            {
                "id": TENANT,
                "name": "tools",
                "mcp_servers": mcp_servers or [],
                "http_tools": http_tools or [],
                "spaces": [
                    {
                        "id": OPEN,
                        "mcp": {"allowed_servers": servers, "allow_private": allow_private or ["127.0.0.1"]},
                        "tools": declared,
                    },
                    {"id": CLOSED, "mcp": {"allowed_servers": servers}, "tools": declared},
                ],
            }
        ]
    }


def make_tools(cat: dict[str, Any], environ: Mapping[str, str] | None = None, **settings: Any) -> Tools:
    return Tools(Catalogue.model_validate(cat), Settings(**settings), environ or {})


def mcp_tool(url: str | None, label: str = "test", **fields: Any) -> dict[str, Any]:
    tool: dict[str, Any] = {"type": "mcp", "server_label": label, **fields}
    if url is not None:
        tool["server_url"] = url
    return tool


async def weather_app(scope: Any, receive: Any, send: Any) -> None:
    """An HTTP tool's endpoint: GET ?city=X answers the weather there."""
    if scope["type"] != "http":
        return
    city = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p).get("city", "?")
    body = orjson.dumps({"city": city, "sky": "clear"})
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
