"""HTTP tools from the catalogue against a loopback aiohttp server: arguments checked against the schema, the
secret header from the environment, timeouts, non-2xx answers and large ones, all as tool results."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web

from config import CatalogueError, Settings, load_catalogue
from gateway.app import create_app
from gateway.errors import InvalidRequest
from gateway.tools import ToolResult
from tests.tools_helpers import CLOSED, OPEN, make_tools, tools_catalogue

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 50}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city"],
    "additionalProperties": False,
}


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    async def record(request: web.Request) -> web.Response:
        body = await request.text()
        seen.append({"method": request.method, "query": dict(request.query), "body": body, **request.headers})
        return web.json_response({"ok": True, "query": dict(request.query), "body": body})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(text="late")

    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=503, text="down for maintenance " + "!" * 5000)

    async def big(request: web.Request) -> web.Response:
        return web.Response(text="b" * 500_000)

    app = web.Application()
    app.router.add_route("*", "/record", record)
    app.router.add_get("/slow", slow)
    app.router.add_post("/fail", fail)
    app.router.add_get("/big", big)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


@pytest.fixture
async def tools(upstream):
    built = _tools(upstream[0])
    yield built
    await built.aclose()


def _tools(base: str, **settings: Any):
    http_tools = [
        {"name": "weather", "url": base + "/record", "parameters": SCHEMA, "headers_env": {"X-Key": "WEATHER_KEY"}},
        {"name": "lookup", "url": base + "/record?fixed=1", "method": "GET", "parameters": SCHEMA},
        {"name": "slow", "url": base + "/slow", "method": "GET", "timeout_seconds": 0.5},
        {"name": "fail", "url": base + "/fail"},
        {"name": "big", "url": base + "/big", "method": "GET"},
    ]
    return make_tools(tools_catalogue(http_tools=http_tools), {"WEATHER_KEY": "k-123"}, **settings)


async def _tool(tools, name: str):
    resolved = await tools.resolve(OPEN, [{"type": "http_tool", "name": name}, {"type": "function", "name": "own"}])
    assert resolved.client == ({"type": "function", "name": "own"},)
    return resolved.http_tool(name)


async def test_a_post_tool_sends_json_and_the_secret_header(upstream, tools):
    _, seen = upstream
    weather = await _tool(tools, "weather")
    assert weather.as_function()["parameters"] == SCHEMA and "k-123" not in repr(weather)
    result = await tools.call_http(OPEN, weather, '{"city": "Lyon", "days": 2}')
    assert result.error is None and orjson.loads(orjson.loads(result.output)["body"]) == {"city": "Lyon", "days": 2}
    assert seen[-1]["X-Key"] == "k-123" and seen[-1]["method"] == "POST"
    assert seen[-1]["Content-Type"] == "application/json" and "Cookie" not in seen[-1]


async def test_a_get_tool_sends_the_query(upstream, tools):
    _, seen = upstream
    result = await tools.call_http(OPEN, await _tool(tools, "lookup"), {"city": "Nice", "days": 3})
    assert result.error is None
    assert seen[-1]["query"] == {"fixed": "1", "city": "Nice", "days": "3"} and "X-Key" not in seen[-1]


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ("{}", "invalid arguments at (top level): 'city' is a required property"),
        ('{"city": 5}', "invalid arguments at city: 5 is not of type 'string'"),
        ('{"city": "x", "days": 0}', "invalid arguments at days: 0 is less than the minimum of 1"),
        ('{"city": "x", "extra": 1}', "invalid arguments at (top level): Additional properties are not allowed"),
        ("[1]", "the arguments must be a JSON object"),
        ("{nope", "the arguments are not valid JSON"),
    ],
)
async def test_invalid_arguments_are_the_models_error_and_nothing_is_sent(upstream, tools, arguments, error):
    _, seen = upstream
    result = await tools.call_http(OPEN, await _tool(tools, "weather"), arguments)
    assert result.output == "" and result.error and result.error.startswith(error)
    assert seen == []


async def test_timeouts_failures_and_large_answers_are_results(upstream):
    base, _ = upstream
    tools = _tools(base, tool_output_max_bytes=4096)
    try:
        assert await tools.call_http(OPEN, await _tool(tools, "slow"), {}) == ToolResult.failed(
            "tool 'slow' timed out after 0.5 s"
        )
        failed = await tools.call_http(OPEN, await _tool(tools, "fail"), None)
        assert (
            failed.error and failed.error.startswith("HTTP 503: down for maintenance !!!") and len(failed.error) < 1100
        )
        big = await tools.call_http(OPEN, await _tool(tools, "big"), {})
        assert big.error is None and big.output.startswith("b" * 4096)
        assert big.output.endswith("kept]") and len(big.output) < 4096 + 100
    finally:
        await tools.aclose()


async def test_the_space_policy_applies_and_references_are_checked(upstream, tools):
    _, seen = upstream
    weather = await _tool(tools, "weather")
    refused = await tools.call_http(CLOSED, weather, {"city": "Lyon"})  # this space allows no loopback
    assert refused.error and "does not allow" in refused.error and seen == []
    for tool, param in [
        ({"type": "http_tool", "name": "nope"}, "tools[0].name"),
        ({"type": "http_tool"}, "tools[0].name"),
    ]:
        with pytest.raises(InvalidRequest) as caught:
            await tools.resolve(OPEN, [tool])
        assert caught.value.param == param
    with pytest.raises(InvalidRequest, match="also an HTTP tool"):
        await tools.resolve(OPEN, [{"type": "http_tool", "name": "weather"}, {"type": "function", "name": "weather"}])


@pytest.mark.parametrize(
    ("tool", "message"),
    [
        (
            {"name": "t", "url": "http://x", "parameters": {"type": "object", "properties": {"a": {"type": 5}}}},
            "parameters is not a valid JSON Schema",
        ),
        ({"name": "t", "url": "http://x", "parameters": {"type": "array"}}, "JSON Schema of an object"),
        ({"name": "t", "url": "gopher://x"}, "url must be an http:// or https:// URL"),
        ({"name": "t", "url": "http://x", "headers_env": {"Host": "H"}}, "a header the transport sets itself"),
        ({"name": "t", "url": "http://x", "method": "TRACE"}, "method"),
    ],
)
def test_broken_http_tools_fail_the_start_naming_the_field(tmp_path, tool, message):
    path = tmp_path / "catalogue.yaml"
    path.write_text(yaml.safe_dump(tools_catalogue(http_tools=[tool])))
    with pytest.raises(CatalogueError, match="tenants\\[0\\]\\.http_tools\\[0\\]") as caught:
        load_catalogue(path)
    assert message in str(caught.value)


def test_a_space_naming_an_unknown_tool_fails_the_start(tmp_path):
    cat = tools_catalogue()
    cat["tenants"][0]["spaces"][0]["tools"] = ["missing"]
    path = tmp_path / "catalogue.yaml"
    path.write_text(yaml.safe_dump(cat))
    with pytest.raises(CatalogueError, match="tool 'missing' is not an MCP server or HTTP tool of this tenant"):
        load_catalogue(path)


def test_the_gateway_builds_its_tools_at_start(start_gateway, tmp_path, monkeypatch):

    cat = tools_catalogue(
        http_tools=[{"name": "t", "url": "https://tools.example/t", "headers_env": {"X-Key": "T_KEY"}}]
    )
    path = tmp_path / "tools.yaml"
    path.write_text(yaml.safe_dump(cat))
    with pytest.raises(CatalogueError, match=r"tenants\[0\]\.http_tools\[0\]\.headers_env\.X-Key: .* T_KEY is not set"):
        create_app(Settings(config=path))
    monkeypatch.setenv("T_KEY", "k")
    gateway = start_gateway(cat).app.state.gateway
    assert gateway.tools.sessions.open_sessions == 0
