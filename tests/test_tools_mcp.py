"""MCP tools against the SDK's own server on loopback (streamable HTTP and SSE) and a hostile raw server: listing,
calls that succeed, fail, time out or answer too much, pooled sessions, references to declared servers."""

import asyncio

import pytest

from config import Catalogue, CatalogueError
from gateway.errors import InvalidRequest
from gateway.tools import ToolResult, ToolUnavailable
from gateway.tools.mcp import McpServer, resolve_mcp_tool
from gateway.tools.sessions import MAX_DESCRIPTION, MAX_TOOLS
from tests.mcp_server import BIG, Recorder, fresh_sse, hostile_app, mcp_server, sse_server, streamable_server
from tests.servers import canary, serve, until, wait_for
from tests.tools_helpers import OPEN, make_tools, mcp_tool, tools_catalogue

ALLOWED = ["add", "boom", "slow", "big"]


@pytest.fixture(scope="module")
def server():
    with streamable_server() as running:
        yield running


async def test_list_and_call_over_streamable_http(server):
    url, _ = server
    tools = make_tools(tools_catalogue())
    try:
        resolved = await tools.resolve(OPEN, [mcp_tool(url, allowed_tools=ALLOWED), {"type": "function", "name": "f"}])
        (mcp,) = resolved.mcp
        assert resolved.client == ({"type": "function", "name": "f"},)  # the caller's tool, untouched
        listing = await tools.list_tools(mcp)
        assert sorted(t["name"] for t in listing) == sorted(ALLOWED)  # "secret" is not allowed
        add = next(t for t in listing if t["name"] == "add")
        assert add["input_schema"]["type"] == "object" and set(add["input_schema"]["properties"]) == {"a", "b"}
        assert add["description"] == "Add two numbers."
        assert await tools.call_mcp(mcp, "add", '{"a": 2, "b": 3}') == ToolResult("5")
        assert await tools.call_mcp(mcp, "add", {"a": 1, "b": 1}) == ToolResult("2")
    finally:
        await tools.aclose()


async def test_tool_failures_come_back_as_results(server):
    url, _ = server
    tools = make_tools(tools_catalogue(), tool_output_max_bytes=1000)
    try:
        (mcp,) = (await tools.resolve(OPEN, [mcp_tool(url, allowed_tools=ALLOWED)])).mcp
        failed = await tools.call_mcp(mcp, "boom", "{}")
        assert failed.output == "" and failed.error and "boom" in failed.error
        slow = await tools.call_mcp(mcp, "slow", {"seconds": 30}, timeout=0.5)
        assert slow.error == "tool 'slow' timed out after 0.5 s"
        big = await tools.call_mcp(mcp, "big", {})
        assert big.error is None and big.output.startswith("x" * 1000)
        assert big.output.endswith(f"[output truncated: {BIG} bytes, 1000 kept]")
        assert (await tools.call_mcp(mcp, "secret", {})).error == "tool 'secret' is not allowed on MCP server 'test'"
        assert (await tools.call_mcp(mcp, "add", "not json")).error == "the arguments are not valid JSON"
        assert (await tools.call_mcp(mcp, "add", {"a": "x"})).error  # the server's validation error
        assert await tools.call_mcp(mcp, "add", {"a": 1, "b": 2}) == ToolResult("3")  # the session survived
    finally:
        await tools.aclose()


async def test_one_pooled_session_closed_at_shutdown():
    with streamable_server() as (url, recorder):
        tools = make_tools(tools_catalogue())
        (mcp,) = (await tools.resolve(OPEN, [mcp_tool(url)])).mcp
        await tools.list_tools(mcp)
        (again,) = (await tools.resolve(OPEN, [mcp_tool(url)])).mcp  # a second request
        assert await tools.call_mcp(again, "add", {"a": 1, "b": 2}) == ToolResult("3")
        assert await tools.call_mcp(again, "add", {"a": 2, "b": 2}) == ToolResult("4")
        assert len(recorder.session_ids) == 1 and tools.sessions.open_sessions == 1
        await tools.aclose()
        assert wait_for(lambda: recorder.deleted, lambda n: n == 1) == 1  # the session was ended
        assert tools.sessions.open_sessions == 0
        assert (await tools.call_mcp(mcp, "add", {"a": 1, "b": 2})).error == "The gateway is shutting down."


async def test_concurrent_calls_share_one_session():
    with streamable_server() as (url, recorder):
        tools = make_tools(tools_catalogue())
        try:
            (mcp,) = (await tools.resolve(OPEN, [mcp_tool(url)])).mcp
            results = await asyncio.gather(*(tools.call_mcp(mcp, "add", {"a": i, "b": 1}) for i in range(8)))
            assert results == [ToolResult(str(i + 1)) for i in range(8)]
            assert len(recorder.session_ids) == 1
        finally:
            await tools.aclose()


async def test_a_broken_session_is_reopened_once():
    with streamable_server() as (url, recorder):
        tools = make_tools(tools_catalogue())
        try:
            (mcp,) = (await tools.resolve(OPEN, [mcp_tool(url)])).mcp
            assert await tools.call_mcp(mcp, "add", {"a": 1, "b": 2}) == ToolResult("3")
            recorder.forget_sessions()  # as a restarted server: 404 for the session it had
            assert await tools.call_mcp(mcp, "add", {"a": 2, "b": 2}) == ToolResult("4")
            assert len(recorder.session_ids) == 2
        finally:
            await tools.aclose()


async def test_headers_reach_only_their_server(server):
    url, recorder = server
    declared = {"label": "deepwiki", "url": url, "headers_env": {"X-Api-Key": "DEEPWIKI_KEY"}}
    cat = tools_catalogue(mcp_servers=[declared])
    tools = make_tools(cat, {"DEEPWIKI_KEY": "s3cret"})
    try:
        ref = mcp_tool(None, label="deepwiki", headers={"Authorization": "Bearer caller", "X-Api-Key": "spoof"})
        (mcp,) = (await tools.resolve(OPEN, [ref])).mcp
        assert mcp.declared and "s3cret" not in repr(mcp) and "caller" not in repr(mcp)
        assert await tools.call_mcp(mcp, "add", {"a": 1, "b": 2}) == ToolResult("3")
        seen = recorder.headers[-1]
        assert seen["x-api-key"] == "s3cret" and seen["authorization"] == "Bearer caller"  # the declared one wins
        with streamable_server() as (other_url, other):  # another server of the same request sees neither
            both = await tools.resolve(OPEN, [ref, mcp_tool(other_url, label="other")])
            assert await tools.call_mcp(both.mcp_server("other"), "add", {"a": 1, "b": 1}) == ToolResult("2")
            assert other.headers and not any("authorization" in h or "x-api-key" in h for h in other.headers)
    finally:
        await tools.aclose()
    with pytest.raises(CatalogueError, match=r"tenants\[0\]\.mcp_servers\[0\]\.headers_env\.X-Api-Key: .*DEEPWIKI_KEY"):
        make_tools(cat, {})


async def test_references_and_allowed_servers(server):
    url, _ = server
    declared = {"label": "declared", "url": url, "allowed_tools": ["add", "boom"], "require_approval": "never"}
    tools = make_tools(tools_catalogue(mcp_servers=[declared], allowed_servers=["http://mcp.example.com/"]))
    try:
        (mcp,) = (await tools.resolve(OPEN, [mcp_tool(None, "declared", allowed_tools=["add", "big"])])).mcp
        assert mcp.allowed_tools == frozenset({"add"})  # a request narrows, never widens
        assert [t["name"] for t in await tools.list_tools(mcp)] == ["add"]
        assert not mcp.needs_approval("add")
        (stricter,) = (await tools.resolve(OPEN, [mcp_tool(None, "declared", require_approval="always")])).mcp
        assert stricter.needs_approval("add")  # a request may ask for more approval
        for tool, param in [
            (mcp_tool(None, "unknown"), "tools[0].server_label"),
            (mcp_tool(url), "tools[0].server_url"),  # not in allowed_servers
            (mcp_tool("http://mcp.example.com/a/../../admin"), "tools[0].server_url"),
            (mcp_tool("http://mcp.example.com.evil.test/"), "tools[0].server_url"),
            (mcp_tool(url, allowed_tools="add"), "tools[0].allowed_tools"),
            (mcp_tool(url, require_approval={"sometimes": {}}), "tools[0].require_approval"),
            (mcp_tool(url, headers={"Host": "x"}), "tools[0].headers"),
            (mcp_tool(url, connector_id="connector_gmail"), "tools[0].connector_id"),
            (mcp_tool(url, label="x" * 65), "tools[0].server_label"),
        ]:
            with pytest.raises(InvalidRequest) as caught:
                await tools.resolve(OPEN, [tool])
            assert caught.value.param == param and len(caught.value.message) < 300
        with pytest.raises(InvalidRequest, match="given twice"):
            await tools.resolve(OPEN, [mcp_tool(None, "declared"), mcp_tool(None, "declared")])
    finally:
        await tools.aclose()


def test_approval_rules():
    rules = {"never": {"tool_names": ["read"]}, "always": {"tool_names": ["write"]}}
    cat = tools_catalogue(mcp_servers=[{"label": "a", "url": "https://a.example/", "require_approval": rules}])
    tenant = Catalogue.model_validate(cat).tenants[0]
    declared = resolve_mcp_tool(tenant.spaces[0], tenant, mcp_tool(None, "a"))
    assert [declared.needs_approval(n) for n in ("read", "write", "other")] == [False, True, True]
    assert McpServer("x", "https://x.example/").needs_approval("anything")  # OpenAI's default: always
    assert not McpServer("x", "https://x.example/", approvals=("never",)).needs_approval("anything")


async def test_sse_transport():
    with sse_server() as url:
        declared = {"label": "legacy", "url": url, "transport": "sse", "timeout_seconds": 10}
        tools = make_tools(tools_catalogue(mcp_servers=[declared]))
        try:
            (mcp,) = (await tools.resolve(OPEN, [mcp_tool(None, "legacy")])).mcp
            assert {"add", "boom", "big"} <= {t["name"] for t in await tools.list_tools(mcp)}
            assert await tools.call_mcp(mcp, "add", {"a": 20, "b": 22}) == ToolResult("42")
            assert (await tools.call_mcp(mcp, "boom", {})).error
        finally:
            await tools.aclose()


async def test_a_hostile_server_is_bounded():
    def tool(name, schema=None, description="d"):
        return {"name": name, "description": description, "inputSchema": schema or {"type": "object"}}

    listed = [tool("not an/ok name"), tool("long", description="y" * 100_000)]
    listed += [tool("n" * 65), tool("huge", {"type": "object", "properties": {f"p{i}": {} for i in range(5000)}})]
    listed += [tool(f"t{i}") for i in range(1000)]
    with serve(hostile_app(listed, output="z" * 1_000_000), lifespan=False) as base:
        tools = make_tools(tools_catalogue(), tool_output_max_bytes=64 * 1024)
        try:
            (mcp,) = (await tools.resolve(OPEN, [mcp_tool(base + "/mcp")])).mcp
            listing = await tools.list_tools(mcp)
            assert len(listing) == MAX_TOOLS
            names = [t["name"] for t in listing]
            assert names[0] == "long" and names[1] == "t0"  # the bad names and the huge schema: gone
            assert len(listing[0]["description"]) < MAX_DESCRIPTION + 100
            result = await tools.call_mcp(mcp, "t0", {})
            assert len(result.output.encode()) < 64 * 1024 + 100
            assert "[output truncated: 1000000 bytes, 65536 kept]" in result.output
        finally:
            await tools.aclose()


async def test_unreachable_server_listing_is_424():
    tools = make_tools(tools_catalogue(mcp_servers=[{"label": "gone", "url": "http://127.0.0.1:9/mcp"}]))
    try:
        (mcp,) = (await tools.resolve(OPEN, [mcp_tool(None, "gone")])).mcp
        with pytest.raises(ToolUnavailable) as caught:
            await tools.list_tools(mcp)
        assert caught.value.status_code == 424 and "'gone' is not reachable" in caught.value.message
        assert (await tools.call_mcp(mcp, "add", {})).error.startswith("MCP server 'gone' is not reachable")
    finally:
        await tools.aclose()


async def test_a_listing_with_a_schema_that_is_not_an_object_is_refused():
    listed = [{"name": "ok", "inputSchema": {"type": "object"}}, {"name": "s", "inputSchema": {"type": "string"}}]
    with serve(hostile_app(listed), lifespan=False) as base:
        tools = make_tools(tools_catalogue())
        try:
            (mcp,) = (await tools.resolve(OPEN, [mcp_tool(base + "/mcp")])).mcp
            with pytest.raises(ToolUnavailable, match="'test' is not reachable: ValidationError"):
                await tools.list_tools(mcp)
        finally:
            await tools.aclose()


async def test_a_server_that_never_answers_times_out():
    with canary(hold=True) as silent:
        declared = {"label": "silent", "url": f"{silent.base}/mcp", "timeout_seconds": 0.5}
        tools = make_tools(tools_catalogue(mcp_servers=[declared]))
        try:
            (mcp,) = (await tools.resolve(OPEN, [mcp_tool(None, "silent")])).mcp
            with pytest.raises(
                ToolUnavailable, match=r"'silent' is not reachable: no (tool list|session) within 0\.5 s"
            ):
                await tools.list_tools(mcp)
            result = await tools.call_mcp(mcp, "add", {})
            assert result.error and "within 0.5 s" in result.error
            assert tools.sessions.open_sessions == 0
        finally:
            await tools.aclose()
        assert silent.connections >= 1


@pytest.mark.parametrize("ttl, asked", [(30.0, 1), (0.0, 2)])
async def test_a_sessions_tool_listing_is_reused_for_its_ttl(ttl, asked):
    with streamable_server() as (url, recorder):
        tools = make_tools(tools_catalogue(), mcp_listing_ttl_seconds=ttl)
        try:
            (mcp,) = (await tools.resolve(OPEN, [mcp_tool(url)])).mcp
            first = await tools.list_tools(mcp)
            before = len(recorder.headers)
            second = await tools.list_tools(mcp)
            assert first == second and {t["name"] for t in first} >= {"add"}
            assert (len(recorder.headers) > before) is (asked == 2)  # the second listing went to the server
        finally:
            await tools.aclose()


@pytest.mark.parametrize("json_response", [False, True])
async def test_calls_on_an_open_session_skip_the_sdk(json_response):
    """Once the session is initialized, a call is the gateway's own POST (no httpx user agent), answered in SSE
    or JSON; a session the server forgot (404) is reopened once."""
    recorder = Recorder(fresh_sse(mcp_server().streamable_http_app(json_response=json_response)))
    with serve(recorder) as base:
        tools = make_tools(tools_catalogue())
        try:
            (mcp,) = (await tools.resolve(OPEN, [mcp_tool(base + "/mcp")])).mcp
            await tools.list_tools(mcp)
            entry = tools.sessions._sessions[tools.sessions.key(mcp)]
            await until(lambda: entry.calls is not None, "the lean calls armed after initialize")
            assert await tools.call_mcp(mcp, "add", {"a": 2, "b": 5}) == ToolResult("7")
            assert "user-agent" not in recorder.headers[-1]
            assert (await tools.call_mcp(mcp, "boom", {})).error
            recorder.forget_sessions()
            assert await tools.call_mcp(mcp, "add", {"a": 1, "b": 1}) == ToolResult("2")
            assert len(recorder.session_ids) == 2
        finally:
            await tools.aclose()
