"""The server-side tool loop (``tool_mode: auto_resolve``) against a real MCP server (the SDK's) and a scripted
upstream on loopback, driven with the openai SDK and raw HTTP."""

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import orjson
import pytest
from mcp.server.mcpserver import MCPServer

from tests.conftest import ADMIN_KEY, SPACE, catalogue
from tests.mcp_server import Recorder, streamable_app
from tests.servers import serve, wait_for
from tests.skills_helpers import BASE, ended, skill, skills_catalogue, start_execution
from tests.tools_helpers import WEATHER_SCHEMA, weather_app

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def _tools_server() -> MCPServer:
    server = MCPServer("loop-tools")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    @server.tool()
    def echo(text: str) -> str:
        """Say it back."""
        return text

    @server.tool()
    def boom() -> str:
        """Always fails."""
        raise ValueError("kaput")

    @server.tool()
    async def nap(seconds: float) -> str:
        """Sleeps, then answers."""
        await asyncio.sleep(seconds)
        return "awake"

    return server


@pytest.fixture(scope="module")
def mcp() -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder(streamable_app(_tools_server()))
    with serve(recorder) as base:
        yield base + "/mcp", recorder


def _catalogue(upstream_url: str, policies: list[dict[str, Any]] | None = None, **loop: Any) -> dict[str, Any]:
    cat = catalogue(upstream_url, "scripted")
    tenant = cat["tenants"][0]
    tenant["models"][0]["pricing"] = {"input_per_mtok": "1", "output_per_mtok": "2"}
    space = tenant["spaces"][0]
    space["mcp"] = {"allowed_servers": ["http://127.0.0.1*"], "allow_private": ["127.0.0.1"]}
    if loop:
        space["tool_loop"] = loop
    if policies is not None:
        tenant["policies"] = policies
    return cat


@pytest.fixture
def loop_gateway(start_gateway, scripted):
    def start(**kw: Any) -> str:
        return start_gateway(_catalogue(scripted[1], **kw))

    return start


def _script(*steps: Any) -> str:
    return orjson.dumps({"script": list(steps)}).decode()


def _mcp_tool(url: str, **fields: Any) -> dict[str, Any]:
    return {"type": "mcp", "server_label": "calc", "server_url": url, **fields}


def _client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=30)


def _ask(base: str, url: str, *steps: Any, **options: Any) -> Any:
    """A response that may run the calc server's tools without approval, following the upstream script ``steps``."""
    tools = [_mcp_tool(url, require_approval="never"), *options.pop("more_tools", [])]
    return _client(base).responses.create(model="up", input=_script(*steps), tools=tools, **options)


def test_a_two_round_loop_runs_the_mcp_tool_and_answers_with_its_output(loop_gateway, mcp, scripted):
    base = loop_gateway()
    upstream, _ = scripted
    before = len(upstream.bodies)
    response = _ask(base, mcp[0], [["calc__add", {"a": 2, "b": 3}]], "sum is {outputs}")
    kinds = [item.type for item in response.output]
    assert kinds == ["mcp_list_tools", "mcp_call", "message"]
    listing, call, message = response.output
    assert {t.name for t in listing.tools} >= {"add", "echo", "boom"}
    assert (call.name, call.server_label, orjson.loads(call.arguments), call.output) == (
        "add",
        "calc",
        {"a": 2, "b": 3},
        "5",
    )
    assert message.content[0].text == "sum is 5"
    assert response.status == "completed"
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (20, 10, 30)
    rounds = upstream.bodies[before:]
    assert len(rounds) == 2
    offered = {t["function"]["name"] for t in rounds[0]["tools"]}
    assert {"calc__add", "calc__echo"} <= offered
    assert rounds[1]["messages"][-1] == {"role": "tool", "tool_call_id": call.id, "content": "5"}


def test_the_native_route_loops_by_default_and_counts_the_rounds(loop_gateway, mcp):
    base = loop_gateway()
    body = {
        "model": "up",
        "input": _script([["calc__add", {"a": 1, "b": 1}]], [["calc__add", {"a": 2, "b": 2}]], "done {outputs}"),
        "tools": [_mcp_tool(mcp[0], require_approval="never")],
    }
    r = httpx2.post(f"{base}/v1/spaces/{SPACE}/responses", headers=AUTH, json=body, timeout=30)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["aimable"]["iteration_count"] == 3
    assert data["output"][-1]["content"][0]["text"] == "done 2|4"
    usage = data["usage"]
    assert (usage["input_tokens"], usage["output_tokens"], usage["cost_usd"]) == (30, 15, "0.000060")  # 3 rounds


def test_streamed_loop_events_follow_openai_in_one_sequence(loop_gateway, mcp):
    base = loop_gateway()
    with _client(base).responses.stream(
        model="up",
        input=_script([["calc__add", {"a": 2, "b": 3}]], "sum is {outputs}"),
        tools=[_mcp_tool(mcp[0], require_approval="never")],
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    for expected in (
        "response.created",
        "response.mcp_list_tools.in_progress",
        "response.mcp_list_tools.completed",
        "response.mcp_call.in_progress",
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done",
        "response.mcp_call.completed",
        "response.output_text.delta",
        "response.completed",
    ):
        assert expected in kinds, expected
    assert kinds.index("response.mcp_call.completed") < kinds.index("response.output_text.delta")
    assert kinds.count("response.created") == 1 and kinds[-1] == "response.completed"
    added = [e for e in events if e.type == "response.output_item.added"]
    assert [e.output_index for e in added] == [0, 1, 2]
    assert [i.type for i in final.output] == ["mcp_list_tools", "mcp_call", "message"]
    assert final.output[2].content[0].text == "sum is 5"


def test_a_call_needing_approval_ends_the_turn_and_an_approval_resumes_it(loop_gateway, mcp):
    base = loop_gateway()
    client = _client(base)
    tools = [_mcp_tool(mcp[0])]  # OpenAI's default: every call needs approval
    first = client.responses.create(
        model="up", input=_script([["calc__add", {"a": 4, "b": 5}]], "sum is {outputs}"), tools=tools
    )
    assert [i.type for i in first.output] == ["mcp_list_tools", "mcp_approval_request"]
    asked = first.output[1]
    assert (asked.name, orjson.loads(asked.arguments)) == ("add", {"a": 4, "b": 5})
    second = client.responses.create(
        model="up",
        previous_response_id=first.id,
        input=[{"type": "mcp_approval_response", "approval_request_id": asked.id, "approve": True}],
        tools=tools,
    )
    assert [i.type for i in second.output] == ["mcp_call", "message"]  # listed already: not listed again
    assert second.output[0].output == "9" and second.output[1].content[0].text == "sum is 9"


def test_a_refused_approval_goes_back_to_the_model_without_a_call(loop_gateway, mcp):
    base = loop_gateway()
    client = _client(base)
    tools = [_mcp_tool(mcp[0])]
    first = client.responses.create(
        model="up", input=_script([["calc__add", {"a": 1, "b": 2}]], "{outputs}"), tools=tools
    )
    second = client.responses.create(
        model="up",
        previous_response_id=first.id,
        input=[{"type": "mcp_approval_response", "approval_request_id": first.output[1].id, "approve": False}],
        tools=tools,
    )
    call, message = second.output
    assert call.error == "The call was not approved." and call.output is None
    assert message.content[0].text == "Error: The call was not approved."


def test_a_failing_tool_is_an_output_for_the_model_not_a_gateway_error(loop_gateway, mcp):
    base = loop_gateway()
    response = _ask(base, mcp[0], [["calc__boom", {}]], "it said {outputs}")
    call, message = response.output[1:]
    assert call.status == "failed" and "boom" in call.error and call.output in ("", None)
    assert message.content[0].text.startswith("it said Error:")
    assert response.status == "completed"


def test_client_function_calls_come_back_untouched_and_the_mcp_server_sees_no_call(loop_gateway, mcp, scripted):
    base = loop_gateway()
    weather = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}
    response = _ask(base, mcp[0], [["get_weather", {"city": "Oslo"}]], "never reached", more_tools=[weather])
    assert [i.type for i in response.output] == ["mcp_list_tools", "function_call"]
    call = response.output[1]
    assert (call.name, orjson.loads(call.arguments)) == ("get_weather", {"city": "Oslo"})
    upstream, _ = scripted
    assert {t["function"]["name"] for t in upstream.bodies[-1]["tools"]} >= {"get_weather", "calc__add"}


def test_the_space_round_limit_ends_the_response_incomplete(loop_gateway, mcp):
    base = loop_gateway(max_rounds=2)
    step = [["calc__add", {"a": 1, "b": 1}]]
    response = _ask(base, mcp[0], step, step, step, "done")
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_tool_rounds"
    assert [i.type for i in response.output] == ["mcp_list_tools", "mcp_call", "mcp_call"]


def test_a_budget_is_reserved_per_round_and_its_refusal_ends_the_loop_incomplete(start_gateway, scripted, mcp):
    # round 1 fits the limit; round 2 carries the conversation, estimated at the whole context window: refused
    budget = {"use": "budget", "limits": [{"scope": "space", "period": "day", "usd": "0.002"}]}
    base = start_gateway(_catalogue(scripted[1], policies=[{"use": "allow_list"}, budget, {"use": "cost"}]))
    response = _ask(base, mcp[0], [["calc__add", {"a": 1, "b": 1}]], "done", max_output_tokens=50)
    assert response.status == "incomplete" and response.incomplete_details.reason == "budget"
    assert [i.type for i in response.output] == ["mcp_list_tools", "mcp_call"]
    # nothing is left reserved: the same request fits again (its first round), so the first settled
    again = _client(base).responses.create(model="up", input=_script("plain"), max_output_tokens=50)
    assert again.status == "completed"


def test_input_guardrails_see_the_tool_outputs_fed_back(start_gateway, scripted, mcp):
    guard = {"use": "guardrails", "input": {"email": "mask"}}
    base = start_gateway(_catalogue(scripted[1], policies=[{"use": "allow_list"}, guard]))
    upstream, _ = scripted
    response = _ask(base, mcp[0], [["calc__echo", {"text": "write to bob@example.com"}]], "{outputs}")
    assert response.status == "completed"
    fed = upstream.bodies[-1]["messages"][-1]
    assert fed["role"] == "tool" and "bob@example.com" not in fed["content"]


def test_a_conversation_continues_after_a_loop_without_its_tools(loop_gateway, mcp, scripted):
    base = loop_gateway()
    first = _ask(base, mcp[0], [["calc__add", {"a": 2, "b": 2}]], "four")
    second = _client(base).responses.create(model="up", previous_response_id=first.id, input="and now?")
    assert second.status == "completed"
    sent = scripted[0].bodies[-1]["messages"]
    assert any(m.get("tool_calls") for m in sent) and any(m["role"] == "tool" and m["content"] == "4" for m in sent)


@pytest.mark.parametrize(
    "tool, param",
    [
        ({"type": "mcp", "server_label": "x", "server_url": "http://169.254.169.254/mcp"}, "tools[0]"),
        ({"type": "mcp", "server_label": "x", "server_url": "http://10.0.0.1/mcp"}, "tools[0]"),
        ({"type": "mcp", "server_label": "x"}, "tools[0]"),
    ],
)
def test_tools_the_space_does_not_allow_are_refused_before_anything_runs(loop_gateway, tool, param):
    base = loop_gateway()
    r = httpx2.post(f"{base}/v1/responses", headers=AUTH, json={"model": "up", "input": "hi", "tools": [tool]})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"].startswith(param)


def test_manual_tool_mode_refuses_mcp_tools(loop_gateway, mcp):
    base = loop_gateway()
    body = {"model": "up", "input": "hi", "tools": [_mcp_tool(mcp[0])], "tool_mode": "manual"}
    r = httpx2.post(f"{base}/v1/spaces/{SPACE}/responses", headers=AUTH, json=body)
    assert r.status_code in (400, 422), r.text


@pytest.mark.parametrize("include_prompts", [False, True])
def test_audit_records_each_executed_tool_call(start_gateway, scripted, mcp, include_prompts):
    audit = {"use": "audit", "include_prompts": include_prompts}
    base = start_gateway(_catalogue(scripted[1], policies=[audit, {"use": "allow_list"}]))
    _ask(base, mcp[0], [["calc__add", {"a": 1, "b": 2}], ["calc__boom", {}]], "ok")
    base.idle()
    entries = httpx2.get(f"{base}/v1/spaces/{SPACE}/audit", headers=AUTH).json()["data"]
    calls = next(e for e in entries if e["action"] == "tools.executed")["calls"]
    outcomes = sorted((c["server"], c["tool"], c["outcome"]) for c in calls)
    assert outcomes == [("calc", "add", "ok"), ("calc", "boom", "error")]
    assert all(isinstance(c["ms"], int) for c in calls)
    assert all(("arguments" in c) is include_prompts for c in calls)


async def test_the_agents_sdk_hosted_mcp_tool_runs_through_the_loop(loop_gateway, mcp):
    from agents import Agent, HostedMCPTool, OpenAIResponsesModel, Runner, set_tracing_disabled
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    base = loop_gateway()
    client = AsyncOpenAI(base_url=base + "/v1", api_key=ADMIN_KEY, max_retries=0)
    tool = HostedMCPTool(tool_config=_mcp_tool(mcp[0], require_approval="never"))  # type: ignore[arg-type]
    agent = Agent(name="calc", tools=[tool], model=OpenAIResponsesModel(model="up", openai_client=client))
    result = await Runner.run(agent, _script([["calc__add", {"a": 20, "b": 22}]], "the answer is {outputs}"))
    assert result.final_output == "the answer is 42"
    assert "mcp_list_tools_item" in [item.type for item in result.new_items]


def test_a_background_loop_runs_as_a_job_and_cancel_stops_it(loop_gateway, mcp):
    base = loop_gateway()
    client = _client(base)
    done = _ask(base, mcp[0], [["calc__add", {"a": 1, "b": 2}]], "sum {outputs}", background=True)
    assert done.status == "queued"
    final = wait_for(lambda: client.responses.retrieve(done.id), lambda r: r.status in ("completed", "failed"))
    assert final.status == "completed" and final.output[-1].content[0].text == "sum 3"
    # a loop stuck in a slow tool is cancelled during its round
    stream = _ask(base, mcp[0], [["calc__nap", {"seconds": 30}]], "never", background=True, stream=True)
    response_id = None
    for event in stream:
        response_id = response_id or event.response.id if event.type == "response.created" else response_id
        if event.type == "response.mcp_call.in_progress":
            break
    stream.close()
    cancelled = client.responses.cancel(response_id)
    assert cancelled.status == "cancelled"


def _sse_events(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


def test_a_streamed_loop_resumes_from_any_sequence_number_across_rounds(loop_gateway, mcp):
    base = loop_gateway()
    with _ask(base, mcp[0], [["calc__add", {"a": 1, "b": 2}]], "sum {outputs}", stream=True) as stream:
        events = [e.model_dump() for e in stream]
    response_id = events[0]["response"]["id"]
    cut = next(e["sequence_number"] for e in events if e["type"] == "response.mcp_call.completed")
    r = httpx2.get(f"{base}/v1/responses/{response_id}", headers=AUTH, params={"stream": "true", "starting_after": cut})
    rest = _sse_events(r.text)
    assert [e["sequence_number"] for e in rest] == list(range(cut + 1, len(events)))
    assert [e["type"] for e in rest] == [e["type"] for e in events[cut + 1 :]]


def test_an_idempotent_retry_of_a_loop_replays_it_without_running_anything_again(start_gateway, mcp, scripted):
    base = start_gateway(_catalogue(scripted[1], policies=[{"use": "idempotency"}, {"use": "allow_list"}]))
    body = {
        "model": "up",
        "input": _script([["calc__add", {"a": 3, "b": 4}]], "sum {outputs}"),
        "tools": [_mcp_tool(mcp[0], require_approval="never")],
    }
    headers = {**AUTH, "Idempotency-Key": "loop-1"}
    first = httpx2.post(f"{base}/v1/spaces/{SPACE}/responses", headers=headers, json=body, timeout=30)
    base.idle()
    calls = len(scripted[0].bodies)
    again = httpx2.post(f"{base}/v1/spaces/{SPACE}/responses", headers=headers, json=body, timeout=30)
    assert again.status_code == first.status_code == 200
    assert again.json()["data"]["id"] == first.json()["data"]["id"]
    assert again.json()["data"]["output"] == first.json()["data"]["output"]
    assert len(scripted[0].bodies) == calls  # no round ran again


def test_a_catalogue_http_tool_runs_in_the_loop_beside_an_mcp_server(start_gateway, scripted, mcp):
    with serve(weather_app, lifespan=False) as weather:
        cat = _catalogue(scripted[1])
        tenant = cat["tenants"][0]
        tool = {"name": "weather", "url": weather + "/w", "method": "GET", "parameters": WEATHER_SCHEMA}
        tenant["http_tools"] = [tool]
        tenant["spaces"][0]["tools"] = ["weather"]
        base = start_gateway(cat)
        # one call per round: the scripted upstream counts the assistant turns with calls
        steps = (
            [["http__weather", {"city": "Oslo"}]],
            [["calc__add", {"a": 1, "b": 1}]],
            [["http__weather", {}]],
            "{outputs}",
        )
        response = _ask(base, mcp[0], *steps, more_tools=[{"type": "http_tool", "name": "weather"}])
        calls = [i for i in response.output if i.type == "mcp_call"]
        assert [(c.server_label, c.name) for c in calls] == [("http", "weather"), ("calc", "add"), ("http", "weather")]
        assert orjson.loads(calls[0].output) == {"city": "Oslo", "sky": "clear"} and calls[1].output == "2"
        assert calls[2].error and "city" in calls[2].error  # arguments off the schema: the model is told, nothing sent
        offered = {t["function"]["name"] for t in scripted[0].bodies[-1]["tools"]}
        assert "http__weather" in offered


def test_an_mcp_server_may_not_take_the_http_tools_label(start_gateway, scripted, mcp):
    cat = _catalogue(scripted[1])
    cat["tenants"][0]["http_tools"] = [{"name": "weather", "url": "http://127.0.0.1:9/w"}]
    cat["tenants"][0]["spaces"][0]["tools"] = ["weather"]
    base = start_gateway(cat)
    tools = [{**_mcp_tool(mcp[0]), "server_label": "http"}, {"type": "http_tool", "name": "weather"}]
    r = httpx2.post(f"{base}/v1/responses", headers=AUTH, json={"model": "up", "input": "hi", "tools": tools})
    assert r.status_code == 400 and "http" in r.json()["error"]["message"]


def test_a_skill_execution_runs_its_mcp_tools_through_the_loop(start_gateway, mcp, scripted):
    inputs = {"type": "object", "properties": {"script": {"type": "array"}}, "required": ["script"]}
    outputs = {"type": "object", "properties": {"sum": {"type": "integer"}}, "required": ["sum"]}
    manifest = skill(
        slug="adder", inputs=inputs, outputs=outputs, instructions="Add.", model="up", tools=[{"mcp": "calc"}]
    )
    cat = skills_catalogue(scripted[1], [manifest], "scripted", tools=["calc"], mcp={"allow_private": ["127.0.0.1"]})
    cat["tenants"][0]["mcp_servers"] = [{"label": "calc", "url": mcp[0], "require_approval": "never"}]
    base = start_gateway(cat)
    before = len(scripted[0].bodies)
    script = [[["calc__add", {"a": 2, "b": 3}]], '{"sum": {outputs}}']
    created = start_execution(base, "adder", {"inputs": {"script": script}}).json()["data"]
    done = ended(base, created["id"])
    assert (done["state"], done["outputs"]) == ("succeeded", {"sum": 5}), done["error"]
    usage = done["resource_usage"]
    assert (usage["iteration_count"], usage["input_tokens"], usage["output_tokens"]) == (2, 20, 10)
    offered = [t["function"]["name"] for t in scripted[0].bodies[before]["tools"]]
    assert offered == ["calc__add", "calc__echo", "calc__boom", "calc__nap"]
    events = httpx2.get(f"{base}{BASE}/executions/{created['id']}/events", headers=AUTH, timeout=30).text
    assert '"tool_calls":[{"server_label":"calc","name":"add","error":null}]' in events
