"""What bounds a skill's run besides its schemas: the depth and fan-out of skills calling skills, its max_cost_usd
(no repair round past it), and its catalogue HTTP tools, run by the tool loop like its MCP servers."""

from typing import Any

import orjson
import pytest

from config import CatalogueError, load_catalogue
from tests.fakes.scripted import Scripted
from tests.servers import serve
from tests.skills_helpers import Turns, ended, execution, skill, skills_catalogue, start_execution
from tests.tools_helpers import WEATHER_SCHEMA, weather_app

SCRIPT_INPUTS = {"type": "object", "properties": {"script": {"type": "array"}}, "required": ["script"]}
LEVEL = {"type": "object", "properties": {"level": {"type": "string"}}, "required": ["level"]}


def _tool_messages(fake: Scripted) -> list[str]:
    return [str(m.get("content")) for b in fake.bodies for m in b.get("messages") or [] if m.get("role") == "tool"]


def test_skills_call_skills_at_most_three_levels_below_the_first(start_gateway, scripted):
    fake, url = scripted
    deep = skill(slug="deep", inputs=SCRIPT_INPUTS, outputs=LEVEL, instructions="Go on.", model="up")
    deep["tools"] = [{"skill": "deep"}]
    base = start_gateway(skills_catalogue(url, [deep], "scripted"))
    script: list[Any] = ['{"level": "5"}']  # never run: the call that would start it is refused
    for level in (4, 3, 2, 1):
        script = [[["skill__deep", {"script": script}]], f'{{"level": "{level}"}}']
    done = ended(base, start_execution(base, "deep", {"inputs": {"script": script}}).json()["data"]["id"])
    assert (done["state"], done["outputs"]) == ("succeeded", {"level": "1"}), done
    chain, current = [], done
    while current["sub_executions"]:
        (sub,) = current["sub_executions"]
        current = execution(base, sub["id"])
        chain.append(current)
    assert [e["outputs"] for e in chain] == [{"level": "2"}, {"level": "3"}, {"level": "4"}]  # three below the top
    assert any("at most 3 deep" in m for m in _tool_messages(fake))


def test_one_execution_starts_at_most_eight_sub_executions(start_gateway, scripted):
    fake, url = scripted
    wide = skill(slug="wide", inputs=SCRIPT_INPUTS, outputs=LEVEL, instructions="Fan out.", model="up")
    wide["tools"] = [{"skill": "echo"}]
    base = start_gateway(skills_catalogue(url, [skill(model="up"), wide], "scripted"))
    calls = [["skill__echo", {"script": ['{"text": "leaf"}'], "text": f"t{i}"}] for i in range(10)]
    script = [calls, '{"level": "wide"}']
    done = ended(base, start_execution(base, "wide", {"inputs": {"script": script}}).json()["data"]["id"])
    assert done["state"] == "succeeded", done
    assert len(done["sub_executions"]) == 8
    assert sum("At most 8 skill calls" in m for m in _tool_messages(fake)) == 2


def test_past_max_cost_usd_an_invalid_answer_gets_no_repair_round(start_gateway):
    fake = Turns(['{"text": 5}', '{"text": "fixed"}'])
    with serve(fake, lifespan=False) as url:
        cat = skills_catalogue(url, [skill(model="up", limits={"max_cost_usd": "0.000001"})])
        cat["tenants"][0]["models"][0]["pricing"] = {"input_per_mtok": "1", "output_per_mtok": "1"}
        base = start_gateway(cat)
        done = ended(base, start_execution(base, "echo", {"inputs": {"text": "x"}}).json()["data"]["id"])
    assert (done["state"], done["failure_reason"]) == ("failed", "cost_limit"), done
    assert len(fake.bodies) == 1 and done["resource_usage"]["iteration_count"] == 1
    assert float(done["resource_usage"]["cost_usd"]) >= 0.000001


def test_a_skills_http_tool_runs_in_its_loop(start_gateway, scripted):
    _, url = scripted
    forecast = skill(slug="forecast", inputs=SCRIPT_INPUTS, outputs=WEATHER_SCHEMA, instructions="Ask.", model="up")
    forecast["tools"] = [{"http": "weather"}]
    with serve(weather_app, lifespan=False) as weather:
        cat = skills_catalogue(url, [forecast], "scripted", tools=["weather"], mcp={"allow_private": ["127.0.0.1"]})
        tool = {"name": "weather", "url": weather + "/w", "method": "GET", "parameters": WEATHER_SCHEMA}
        cat["tenants"][0]["http_tools"] = [tool]
        base = start_gateway(cat)
        script = [[["http__weather", {"city": "Oslo"}]], "{outputs}"]
        done = ended(base, start_execution(base, "forecast", {"inputs": {"script": script}}).json()["data"]["id"])
    assert (done["state"], done["outputs"]) == ("succeeded", {"city": "Oslo", "sky": "clear"}), done
    assert done["resource_usage"]["iteration_count"] == 2


@pytest.mark.parametrize(
    ("space", "message"),
    [({"tools": []}, "uses 'nowhere', not in the space"), ({"tools": ["nowhere"]}, "'nowhere' is not an HTTP tool")],
)
def test_a_skills_http_tool_must_be_the_tenants_and_in_the_space(tmp_path, space, message):
    cat = skills_catalogue("http://127.0.0.1:9", [skill(tools=[{"http": "nowhere"}])], **space)
    tool = {"name": "nowhere" if "not in" in message else "other", "url": "https://example.com/x", "method": "GET"}
    cat["tenants"][0]["http_tools"] = [tool]
    path = tmp_path / "gateway.yaml"
    path.write_bytes(orjson.dumps(cat))
    with pytest.raises(CatalogueError, match=message):
        load_catalogue(path)
