"""The server-side tool loop with llama.cpp as the model and a real MCP server (the SDK's) on loopback: the model's
call runs on the server and its output goes back to the model. Gemma 270M is a base model: ``tool_choice``
"required" (a grammar in llama.cpp) makes its first round a call; after that it may answer or call again, so the
test checks the loop's shapes, not the answer's meaning."""

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
        model="up", input=WEATHER, tools=[tool], tool_choice="required", temperature=0, max_output_tokens=40
    )  # type: ignore[call-overload]
    kinds = [item.type for item in response.output]
    assert kinds[:2] == ["mcp_list_tools", "mcp_call"], kinds
    call = response.output[1]
    assert call.name == "get_weather" and call.server_label == "weather"
    assert asked and call.output == f"Sunny in {asked[0]}"
    assert response.status in ("completed", "incomplete")
    assert response.usage.input_tokens > 0
