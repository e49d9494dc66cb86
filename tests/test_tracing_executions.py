"""A skill execution run by a worker is a trace of its own (a root ``execution <slug>`` span over its model turns'
spans), its id the record's ``langfuse_trace_id``; a sub-execution carries its caller's trace id. Received by a
real OTLP receiver on loopback."""

from collections.abc import Iterator

import pytest

from tests.fakes.otlp import OtlpReceiver
from tests.servers import serve, wait_for
from tests.skills_helpers import ECHO_SKILL, ended, execution, skill, skills_catalogue, start_execution

SCRIPT_INPUTS = {"type": "object", "properties": {"script": {"type": "array"}}, "required": ["script"]}


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[OtlpReceiver, str]]:
    otlp = OtlpReceiver()
    with serve(otlp, lifespan=False) as base:
        yield otlp, base + "/v1/traces"


def test_an_execution_is_one_trace_over_its_turns_and_its_sub_executions(start_gateway, scripted, receiver):
    otlp, endpoint = receiver
    outer = skill(slug="outer", inputs=SCRIPT_INPUTS, instructions="Delegate.", model="up", tools=[{"skill": "echo"}])
    cat = skills_catalogue(scripted[1], [ECHO_SKILL, outer], "scripted")
    base = start_gateway(cat, traces=True, traces_endpoint=endpoint, traces_export_delay_seconds=0.05)
    script = [[["skill__echo", {"text": "deep"}]], "{outputs}"]
    done = ended(base, start_execution(base, "outer", {"inputs": {"script": script}}).json()["data"]["id"])
    assert done["state"] == "succeeded", done
    trace_id = done["langfuse_trace_id"]
    assert isinstance(trace_id, str) and len(trace_id) == 32
    names = {"execution outer", "execute_tool echo", "chat up", "chat fake-echo"}
    spans = wait_for(lambda: otlp.trace(trace_id), lambda got: names <= {s.name for s in got})
    by_name = {s.name: s for s in spans}
    root = by_name["execution outer"]
    assert root.parent_id in ("", None) and root.attributes["gateway.execution.id"] == done["id"]
    assert root.attributes["gateway.skill"] == "outer"
    calls = [s for s in spans if s.name.startswith("chat ")]
    assert {"chat up", "chat fake-echo"} <= {s.name for s in calls}  # the outer's model, the sub-execution's
    (sub,) = done["sub_executions"]
    assert execution(base, sub["id"])["langfuse_trace_id"] == trace_id


def test_without_traces_an_execution_has_no_trace_id(start_gateway, upstream):
    base = start_gateway(skills_catalogue(upstream[1], [ECHO_SKILL]))
    done = ended(base, start_execution(base, "echo", {"inputs": {"text": "x"}}).json()["data"]["id"])
    assert done["state"] == "succeeded" and done["langfuse_trace_id"] is None
