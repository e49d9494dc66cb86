"""An agent's MCP server runs through the server-side tool loop, its own policies run after the space's, and
its calls are accounted to it: spend by agent and version, audit entries naming it."""

from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import orjson
import pytest

from tests.agents_helpers import agents_catalogue
from tests.conftest import ADMIN_KEY, SPACE
from tests.mcp_server import mcp_server
from tests.servers import serve
from tests.tools_helpers import WEATHER_SCHEMA, weather_app

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
CALCULATOR = {
    "key": "calculator",
    "name": "Calculator",
    "versions": [
        {
            "version": 1,
            "model": "up",
            "instructions": "Use the calc tools.",
            "tools": ["calc"],
            "policies": [{"use": "guardrails", "input": {"deny": ["forbidden"]}}],
        }
    ],
}


@pytest.fixture(scope="module")
def mcp_url() -> Iterator[str]:
    with serve(mcp_server().streamable_http_app()) as base:
        yield base + "/mcp"


@pytest.fixture
def loop_gateway(start_gateway, scripted, mcp_url):
    cat = agents_catalogue(scripted[1], "scripted")
    tenant = cat["tenants"][0]
    tenant["models"][0]["pricing"] = {"input_per_mtok": "1", "output_per_mtok": "2"}
    tenant["policies"] = [{"use": "audit"}, {"use": "allow_list"}, {"use": "cost"}]
    tenant["mcp_servers"] = [{"label": "calc", "url": mcp_url, "require_approval": "never"}]
    tenant["agents"].append(CALCULATOR)
    space = tenant["spaces"][0]
    space.update(tools=["calc"], mcp={"allow_private": ["127.0.0.1"]})
    space["agents"].append("calculator")
    return start_gateway(cat)


def _script(*steps: Any) -> str:
    return orjson.dumps({"script": list(steps)}).decode()


def _client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=30)


def test_the_agents_mcp_tool_runs_through_the_loop(loop_gateway, scripted):
    upstream, _ = scripted
    before = len(upstream.bodies)
    response = _client(loop_gateway).responses.create(
        model="calculator", input=_script([["calc__add", {"a": 2, "b": 3}]], "sum is {outputs}")
    )
    assert [item.type for item in response.output] == ["mcp_list_tools", "mcp_call", "message"]
    assert response.output[1].output == "5" and response.output[2].content[0].text == "sum is 5"
    assert response.model == "calculator"
    rounds = upstream.bodies[before:]
    assert len(rounds) == 2
    assert rounds[0]["messages"][0] == {"role": "system", "content": "Use the calc tools."}
    assert "calc__add" in {t["function"]["name"] for t in rounds[0]["tools"]}


def test_the_agents_own_guardrail_runs_on_its_calls_only(loop_gateway):
    client = _client(loop_gateway)
    with pytest.raises(openai.PermissionDeniedError) as err:
        client.responses.create(model="calculator", input=_script("this is forbidden"))
    assert err.value.code == "guardrail_rejected"
    assert client.responses.create(model="up", input=_script("this is forbidden")).status == "completed"


def test_spend_and_audit_carry_the_agent_and_its_version(loop_gateway):
    _client(loop_gateway).responses.create(model="calculator", input=_script([["calc__add", {"a": 1, "b": 1}]], "ok"))
    loop_gateway.idle()
    usage = httpx2.get(f"{loop_gateway}/v1/spaces/{SPACE}/usage", headers=AUTH).json()["data"]
    (agent,) = usage["by_agent"]
    assert (agent["agent_key"], agent["requests"], agent["input_tokens"], agent["cost_usd"]) == (
        "calculator",
        1,
        20,
        "0.000040",
    )
    assert [(v["version"], v["requests"]) for v in agent["by_version"]] == [(1, 1)]
    entries = httpx2.get(f"{loop_gateway}/v1/spaces/{SPACE}/audit", headers=AUTH).json()["data"]
    tool_entry = next(e for e in entries if e["kind"] == "tool_call")
    assert tool_entry["agent"] == {"key": "calculator", "version": 1}


def test_a_budget_per_agent(start_gateway, upstream):
    cat = agents_catalogue(upstream[1])
    tenant = cat["tenants"][0]
    tenant["models"][0]["pricing"] = {"input_per_mtok": "1000000", "output_per_mtok": "1"}
    tenant["policies"] = [
        {"use": "allow_list"},
        {"use": "budget", "limits": [{"scope": "agent", "period": "day", "usd": "0.01"}]},
    ]
    base = start_gateway(cat)
    r = httpx2.post(base + "/v1/responses", headers=AUTH, json={"model": "support-bot", "input": "hi"})
    assert r.status_code == 429, r.text
    assert "agent 'support-bot'" in r.json()["error"]["message"]


def test_an_agents_http_tool_runs_through_the_loop_and_the_api_checks_tool_names(start_gateway, scripted):
    """A version may name a catalogue HTTP tool beside MCP servers: the loop runs it (reported as an mcp_call of
    server ``http``); the admin API refuses a name that is neither, with the field named."""
    with serve(weather_app, lifespan=False) as weather:
        cat = agents_catalogue(scripted[1], "scripted")
        tenant = cat["tenants"][0]
        tool = {"name": "weather", "url": weather + "/w", "method": "GET", "parameters": WEATHER_SCHEMA}
        tenant["http_tools"] = [tool]
        version = {"version": 1, "model": "up", "tools": ["weather"]}
        forecaster = {"key": "forecaster", "name": "Forecaster", "versions": [version]}
        tenant["agents"].append(forecaster)
        space = tenant["spaces"][0]
        space.update(tools=["weather"], mcp={"allow_private": ["127.0.0.1"]})
        space["agents"].append("forecaster")
        base = start_gateway(cat)
        response = _client(base).responses.create(
            model="forecaster", input=_script([["http__weather", {"city": "Oslo"}]], "it is {outputs}")
        )
        call = next(item for item in response.output if item.type == "mcp_call")
        assert (call.server_label, call.name) == ("http", "weather")
        assert orjson.loads(call.output) == {"city": "Oslo", "sky": "clear"} and response.status == "completed"

        agents = f"{base}/v1/spaces/{SPACE}/agents"
        assert httpx2.post(agents, headers=AUTH, json={"key": "second", "name": "Second"}).status_code == 201
        ok = httpx2.post(agents + "/second/versions", headers=AUTH, json={"model": "up", "tools": ["weather"]})
        assert ok.status_code == 201, ok.text
        bad = httpx2.post(agents + "/second/versions", headers=AUTH, json={"model": "up", "tools": ["nowhere"]})
        assert bad.status_code == 422 and "nowhere" in bad.text and "tools" in bad.text
