"""The OpenAI Agents SDK drives the gateway's Responses API: a function tool round trip, with the history
resent by the SDK and with ``previous_response_id`` (the gateway keeps the conversation)."""

import pytest
from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
from openai import AsyncOpenAI

from tests.conftest import ADMIN_KEY, catalogue

set_tracing_disabled(True)  # the SDK would otherwise try to export traces to OpenAI


@function_tool
def lookup(echo: str) -> str:
    """Look something up."""
    return f"found {echo}"


def agent_for(base: str, model: str) -> Agent:
    client = AsyncOpenAI(base_url=base + "/v1", api_key=ADMIN_KEY, max_retries=0)
    return Agent(
        name="helper",
        instructions="Use the tool.",
        tools=[lookup],
        model=OpenAIResponsesModel(model=model, openai_client=client),
    )


@pytest.fixture(params=["chat-only upstream", "responses upstream"])
def agent_gateway(request, start_gateway, upstream):
    fake, url = upstream
    cat = catalogue(url)
    if request.param == "chat-only upstream":
        return start_gateway(cat), "fake-tool"
    cat["tenants"][0]["models"][0]["deployment"] = {
        "type": "openai",
        "api": "responses",
        "model": "tools",
        "base_url": url + "/v1",
    }
    return start_gateway(cat), "up"


@pytest.mark.parametrize("mode", ["history resent", "previous_response_id"])
async def test_runner_with_a_function_tool(agent_gateway, mode):
    base, model = agent_gateway
    auto = mode == "previous_response_id"
    result = await Runner.run(agent_for(base, model), "the answer", auto_previous_response_id=auto)
    assert result.final_output == "tool said: found the answer"
    kinds = [item.type for item in result.new_items]
    assert kinds == ["tool_call_item", "tool_call_output_item", "message_output_item"]
    second = await Runner.run(agent_for(base, model), "again", previous_response_id=result.last_response_id)
    assert second.final_output == "tool said: found again"
