"""The server-side tool loop with llama.cpp as the model and a real MCP server (the SDK's) on loopback. Gemma 270M
is a base model: ``tool_choice`` "required" (a grammar in llama.cpp) makes its first round a call to the MCP tool,
seen through the loop as an ``mcp_call``; it then often goes on until the token limit, and a round cut that way
ends the response ``incomplete`` with its calls not run (as the loop promises), else the call runs on the server.
The test checks whichever happened; the loopback tests (tests/test_tool_loop.py) script both."""

from collections.abc import Iterator

import openai
import pytest
from mcp.server.mcpserver import MCPServer

from tests.conftest import ADMIN_KEY, GatewayFactory, catalogue
from tests.e2e.record import WEATHER
from tests.mcp_server import streamable_app
from tests.servers import serve


@pytest.fixture(scope="module")
def weather_server() -> Iterator[tuple[str, list[str]]]:
    server = MCPServer("weather")
    asked: list[str] = []

    @server.tool()
    def get_weather(city: str) -> str:
        """Get the weather for a city"""
        asked.append(city)
        return f"Sunny in {city}"

    with serve(streamable_app(server)) as base:
        yield base + "/mcp", asked


def test_a_loop_runs_llamas_tool_call_on_the_mcp_server(start_gateway: GatewayFactory, llama: str, weather_server):
    url, asked = weather_server
    cat = catalogue(llama, upstream_model="gemma")
    space = cat["tenants"][0]["spaces"][0]
    space["mcp"] = {"allowed_servers": ["http://127.0.0.1*"], "allow_private": ["127.0.0.1"]}
    space["tool_loop"] = {"max_rounds": 3}
    base = start_gateway(cat)
    client = openai.OpenAI(base_url=base + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=120)
    tool = {"type": "mcp", "server_label": "weather", "server_url": url, "require_approval": "never"}
    response = client.responses.create(
        model="up", input=WEATHER, tools=[tool], tool_choice="required", temperature=0, max_output_tokens=100
    )  # type: ignore[call-overload]
    kinds = [item.type for item in response.output]
    assert kinds[0] == "mcp_list_tools" and "mcp_call" in kinds, kinds  # (llama may say something first)
    call = response.output[kinds.index("mcp_call")]
    assert call.name == "get_weather" and call.server_label == "weather"
    if response.status == "incomplete":
        # llama may go on after its call until the token limit: the round is cut, so its calls never run
        assert response.incomplete_details.reason == "max_output_tokens"
        assert call.status == "incomplete" and call.output is None and not asked
    else:
        assert asked and call.output == f"Sunny in {asked[0]}"
        assert response.output[-1].type in ("message", "mcp_call")
    assert response.usage.input_tokens > 0
