"""Addresses tools may not reach: each refused without a connection (a canary listener counts none), unless the
space allows that address explicitly; redirects are not followed; the connection goes to the checked address."""

import ipaddress

import pytest

from gateway.errors import InvalidRequest
from gateway.tools import ToolUnavailable
from gateway.tools.ssrf import AddressPolicy, Refused, check_url, pinned_client, resolve
from tests.mcp_server import redirect_app, streamable_server
from tests.servers import canary, serve
from tests.tools_helpers import CLOSED, OPEN, make_tools, mcp_tool, tools_catalogue

NONE = AddressPolicy()


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",  # the cloud metadata address
        "http://[fe80::1]/",
        "http://10.0.0.1/mcp",
        "http://192.168.1.20/mcp",
        "http://172.16.0.1/",
        "http://100.64.0.1/",  # shared address space (CGNAT)
        "http://0.0.0.0/",
        "http://[::]/",
        "http://[fc00::1]/",
        "http://224.0.0.1/",
        "http://[::ffff:127.0.0.1]/",  # IPv4-mapped loopback
        "http://[::ffff:169.254.169.254]/",
        "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of the metadata address
        "http://[2002:7f00:1::1]/",  # 6to4 of loopback
    ],
)
async def test_private_addresses_are_refused(url):
    with pytest.raises(Refused, match="which this space does not allow"):
        await check_url(url, NONE, 1.0)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.com/", "must be an http:// or https:// URL"),
        ("file:///etc/passwd", "must be an http:// or https:// URL"),
        ("http://user:pw@example.com/", "must not carry a user or password"),
        ("http://example.com:0/", "has port 0"),
        ("http://example.com:99999/", "is not a valid URL"),
        ("http:///nohost", "has no host"),
        ("http://" + "a" * 5000 + ".com/", "is longer than 2048 characters"),
    ],
)
async def test_malformed_urls_are_refused_with_a_bounded_message(url, why):
    with pytest.raises(Refused) as caught:
        await check_url(url, NONE, 1.0)
    assert why in str(caught.value) and len(str(caught.value)) < 200


async def test_loopback_by_address_and_by_name_is_refused_without_a_connection():
    with canary() as listener:
        tools = make_tools(tools_catalogue(allowed_servers=["http://*"]))
        try:
            for host in ("127.0.0.1", "localhost", "[::1]", "127.1", "2130706433"):
                url = f"http://{host}:{listener.port}/mcp"
                with pytest.raises(InvalidRequest) as caught:
                    await tools.resolve(CLOSED, [mcp_tool(url)])  # this space allows no private address
                assert caught.value.param == "tools[0].server_url"
                assert "which this space does not allow" in caught.value.message
            # the space that allows 127.0.0.1 still refuses localhost: its ::1 answer is not allowed
            refused = pinned_client(AddressPolicy.from_entries(["127.0.0.1"]), 1.0)
            with pytest.raises(Exception, match="does not allow"):
                await refused.get(f"http://[::1]:{listener.port}/")
            await refused.aclose()
        finally:
            await tools.aclose()
        assert listener.connections == 0


async def test_an_explicit_allowance_lets_loopback_through():
    with streamable_server() as (url, _):
        assert "127.0.0.1" in url
        tools = make_tools(tools_catalogue())
        try:
            with pytest.raises(InvalidRequest):
                await tools.resolve(CLOSED, [mcp_tool(url)])
            (server,) = (await tools.resolve(OPEN, [mcp_tool(url)])).mcp
            assert await tools.list_tools(server)
        finally:
            await tools.aclose()


async def test_a_declared_server_is_checked_at_connection():
    with canary() as listener:
        declared = {"label": "inside", "url": f"http://127.0.0.1:{listener.port}/mcp"}
        tools = make_tools(tools_catalogue(mcp_servers=[declared]))
        try:
            (server,) = (await tools.resolve(CLOSED, [mcp_tool(None, "inside")])).mcp
            with pytest.raises(ToolUnavailable, match="127.0.0.1 is a loopback|does not allow"):
                await tools.list_tools(server)
            assert (await tools.call_mcp(server, "add", {})).error
        finally:
            await tools.aclose()
        assert listener.connections == 0


async def test_a_redirect_to_loopback_is_not_followed():
    # the redirecting server is allowed explicitly (127.0.0.1), its target (127.0.0.2) is not
    with canary("127.0.0.2") as target, serve(redirect_app(target.base + "/mcp"), lifespan=False) as base:
        http_tool = {"name": "hop", "url": base + "/hop", "method": "GET"}
        tools = make_tools(tools_catalogue(http_tools=[http_tool]))
        try:
            (server,) = (await tools.resolve(OPEN, [mcp_tool(base + "/mcp")])).mcp
            with pytest.raises(ToolUnavailable, match="not followed"):
                await tools.list_tools(server)
            resolved = await tools.resolve(OPEN, [{"type": "http_tool", "name": "hop"}])
            result = await tools.call_http(OPEN, resolved.http[0], {})
            assert result.error == f"HTTP 302: redirects are not followed (to '{target.base}/mcp')"
        finally:
            await tools.aclose()
        assert target.connections == 0


async def test_the_connection_goes_to_the_checked_address():
    """A name only our lookup knows: connecting at all proves the socket went to the address that was checked,
    not to a second resolution (DNS rebinding would need that second one)."""
    answers: list[str] = []

    async def lookup(host: str, port: int, timeout: float):
        answers.append(host)
        return [ipaddress.ip_address("127.0.0.1")]

    with canary() as listener:
        allowed = pinned_client(AddressPolicy.from_entries(["127.0.0.1"]), 1.0, lookup=lookup)
        with pytest.raises(Exception):  # noqa: B017 - the canary closes at once: any transport error
            await allowed.get(f"http://tool.invalid:{listener.port}/")
        await allowed.aclose()
        assert listener.connections == 1 and answers == ["tool.invalid"]
        refused = pinned_client(NONE, 1.0, lookup=lookup)
        with pytest.raises(Exception, match="does not allow"):
            await refused.get(f"http://tool.invalid:{listener.port}/")
        await refused.aclose()
        assert listener.connections == 1


async def test_one_private_answer_refuses_the_name():
    async def lookup(host: str, port: int, timeout: float):
        return [ipaddress.ip_address("93.184.215.14"), ipaddress.ip_address("10.1.2.3")]

    with pytest.raises(Refused, match=r"'half\.example' resolves to 10\.1\.2\.3, a private address"):
        await resolve("half.example", 80, NONE, 1.0, lookup)
    allowed = AddressPolicy.from_entries(["10.0.0.0/8"])
    assert len(await resolve("half.example", 80, allowed, 1.0, lookup)) == 2
    assert await resolve("half.example", 80, AddressPolicy.from_entries(["HALF.example"]), 1.0, lookup)


async def test_messages_repeat_at_most_100_characters_of_a_name():
    host = "x" * 300 + ".invalid"
    with pytest.raises(Exception) as caught:
        await check_url(f"http://{host}/", NONE, 1.0)
    assert len(str(caught.value)) < 200


async def test_a_host_allowed_by_name_may_resolve_to_loopback():
    async def lookup(host: str, port: int, timeout: float):
        return [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]

    policy = AddressPolicy.from_entries(["mcp.internal."])
    assert len(await resolve("MCP.internal", 443, policy, 1.0, lookup)) == 2
    with pytest.raises(Refused, match="'other.internal' resolves to 127.0.0.1, a loopback address"):
        await resolve("other.internal", 443, policy, 1.0, lookup)
