"""Skills and executions on the in-memory store, end to end over HTTP: manifests (checked at start), the skill
routes, starting an execution (inputs, allow-list, Idempotency-Key), the embedded worker running it through the
responses flow (structured outputs, the repair round, the space's policies), cancel, events and the lists."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from config import CatalogueError, load_catalogue
from tests.conftest import ADMIN_KEY, FOREIGN_SPACE, MEMBER_KEY, OTHER_KEY, SPACE
from tests.servers import serve, wait_for
from tests.skills_helpers import (
    AUTH,
    BASE,
    ECHO_SKILL,
    Turns,
    ended,
    execution,
    skill,
    skills_catalogue,
    start_execution,
)


@pytest.fixture(scope="module")
def turns() -> Iterator[tuple[Turns, str]]:
    fake = Turns(['{"text": 5}', '{"text": "fixed"}'])
    with serve(fake, lifespan=False) as url:
        yield fake, url


@pytest.fixture
def skills_gateway(start_gateway, upstream):
    def start(skills: list[Any] | None = None, upstream_model: str = "ok", **settings: Any) -> str:
        return start_gateway(skills_catalogue(upstream[1], skills or [ECHO_SKILL], upstream_model), **settings)

    return start


# --- manifests ------------------------------------------------------------------------------------------------


def _write(tmp_path: Path, cat: dict[str, Any]) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cat))
    return path


def test_a_skill_directory_is_read_relative_to_the_catalogue(tmp_path):
    directory = tmp_path / "skills" / "echo"
    directory.mkdir(parents=True)
    (directory / "skill.yaml").write_text(yaml.safe_dump(ECHO_SKILL))
    catalogue = load_catalogue(_write(tmp_path, skills_catalogue("http://127.0.0.1:9", ["skills/echo"])))
    (loaded,) = catalogue.tenants[0].skills
    assert (loaded.slug, loaded.version, loaded.source) == ("echo", "1.0.0", "skills/echo/skill.yaml")


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        ({"outputs": {"type": "object", "properties": {"x": {"type": 12}}}}, "outputs: Value error, not a valid JSON"),
        ({"inputs": {"type": "array"}}, "inputs: Value error, inputs must be a JSON Schema of an object"),
        ({"version": "one"}, "version: Value error, version must be numbers"),
        ({"slug": "Bad Slug"}, "slug: String should match pattern"),
        ({"instructions": "Say {{ nope }}"}, "{{ nope }} is not a property of the inputs schema"),
        ({"tools": [{"mcp": "calc"}]}, "tools: 'calc' is not an MCP server of this tenant"),
        ({"surprise": 1}, "surprise: Extra inputs are not permitted"),
    ],
)
def test_a_bad_manifest_fails_the_start_naming_the_file_and_the_field(tmp_path, manifest, expected):
    directory = tmp_path / "skills" / "echo"
    directory.mkdir(parents=True)
    (directory / "skill.yaml").write_text(yaml.safe_dump({**ECHO_SKILL, **manifest}))
    cat = skills_catalogue("http://127.0.0.1:9", ["skills/echo"])
    cat["tenants"][0]["spaces"][0]["skills"] = []
    with pytest.raises(CatalogueError) as caught:
        load_catalogue(_write(tmp_path, cat))
    assert "skills/echo/skill.yaml" in str(caught.value)
    assert expected in str(caught.value)


def test_a_missing_directory_and_an_unknown_slug_in_a_space_fail_the_start(tmp_path):
    with pytest.raises(CatalogueError, match="skills/gone/skill.yaml: cannot read"):
        load_catalogue(_write(tmp_path, skills_catalogue("http://127.0.0.1:9", ["skills/gone"])))
    cat = skills_catalogue("http://127.0.0.1:9", [ECHO_SKILL])
    cat["tenants"][0]["spaces"][0]["skills"] = ["echo", "nope"]
    with pytest.raises(CatalogueError, match="skill 'nope' is not a skill of this tenant"):
        load_catalogue(_write(tmp_path, cat))


# --- the skill routes -----------------------------------------------------------------------------------------


def test_the_space_lists_its_skills_their_newest_version_and_every_version(skills_gateway):
    base = skills_gateway([ECHO_SKILL, skill(version="1.10.0", title="Echo 1.10"), skill(version="1.9")])
    listed = httpx.get(base + BASE, headers=AUTH).json()
    assert [(s["slug"], s["version"]) for s in listed["data"]] == [("echo", "1.10.0")]
    assert listed["meta"] == {"next_cursor": None, "has_more": False}
    one = httpx.get(f"{base}{BASE}/echo", headers=AUTH).json()["data"]
    assert (one["title"], one["versions"]) == ("Echo 1.10", ["1.10.0", "1.9", "1.0.0"])
    assert one["inputs_schema"] == ECHO_SKILL["inputs"]
    versions = httpx.get(f"{base}{BASE}/echo/versions", headers=AUTH).json()["data"]
    assert [v["version"] for v in versions] == ["1.10.0", "1.9", "1.0.0"]
    assert httpx.get(f"{base}{BASE}/nope", headers=AUTH).status_code == 404
    assert httpx.get(f"{base}{BASE}/No%20Such", headers=AUTH).status_code == 422
    foreign = httpx.get(f"{base}/v1/spaces/{FOREIGN_SPACE}/skills", headers=AUTH)
    assert foreign.status_code == 404
    assert httpx.get(f"{base}{BASE}", headers={"Authorization": f"Bearer {OTHER_KEY}"}).status_code == 404


# --- starting and running -------------------------------------------------------------------------------------


def test_an_execution_is_queued_with_every_field_then_run_to_its_validated_outputs(skills_gateway):
    base = skills_gateway()
    answer = start_execution(base, "echo", {"inputs": {"text": "hello"}})
    assert answer.status_code == 201, answer.text
    data = answer.json()["data"]
    assert (data["state"], data["source"], data["skill_slug"], data["skill_version"]) == (
        "queued",
        "standalone",
        "echo",
        "1.0.0",
    )
    assert set(data) >= {"id", "tenant_id", "space_id", "principal_id", "parent_execution_id", "created_at"}
    assert set(data) >= {"started_at", "finished_at", "failure_reason", "resource_usage", "inputs", "outputs"}
    assert set(data) >= {"error", "artifacts", "sub_executions", "chat_thread_id", "chat_message_id"}
    assert set(data) >= {"chat_tool_call_id", "workspace_archive_id", "langfuse_trace_id", "idempotency_key"}
    assert "run" not in data and "key_ref" not in str(data)
    done = ended(base, data["id"])
    assert done["state"] == "succeeded", done
    assert done["outputs"] == {"text": "hello"}  # the fake echoes the user message: the inputs document
    usage = done["resource_usage"]
    assert usage["iteration_count"] == 1 and usage["input_tokens"] > 0 and usage["wallclock_ms"] is not None
    assert done["started_at"] and done["finished_at"] and done["failure_reason"] is None


def test_inputs_failing_the_schema_are_422_with_every_failing_path(skills_gateway):
    base = skills_gateway()
    answer = start_execution(base, "echo", {"inputs": {"text": 3, "count": -1}})
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert [d["loc"] for d in detail] == [["body", "inputs", "count"], ["body", "inputs", "text"]]
    assert detail[1]["type"] == "jsonschema.type"
    missing = start_execution(base, "echo", {"inputs": {}}).json()["detail"]
    assert missing[0]["loc"] == ["body", "inputs"] and "'text' is a required property" in missing[0]["msg"]
    assert start_execution(base, "echo", {"inputs": "x"}).status_code == 422
    assert start_execution(base, "echo", {}).json()["detail"][0]["loc"] == ["body", "inputs"]
    assert start_execution(base, "nope", {"inputs": {}}).status_code == 404


def test_a_model_outside_the_allow_list_is_403_as_on_responses(skills_gateway):
    base = skills_gateway()
    answer = start_execution(base, "echo", {"inputs": {"text": "x"}, "model": "extra"})
    assert answer.status_code == 403
    assert "Model 'extra' is not allowed" in answer.json()["detail"]
    assert start_execution(base, "echo", {"inputs": {"text": "x"}, "model": "fake-echo"}).status_code == 201


def test_an_idempotency_key_replays_the_same_execution(skills_gateway):
    base = skills_gateway()
    first = start_execution(base, "echo", {"inputs": {"text": "once"}}, **{"Idempotency-Key": "k-1"})
    again = start_execution(base, "echo", {"inputs": {"text": "once"}}, **{"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["data"]["id"] == first.json()["data"]["id"]
    assert first.json()["data"]["idempotency_key"] == "k-1"
    other = start_execution(base, "echo", {"inputs": {"text": "twice"}}, **{"Idempotency-Key": "k-1"})
    assert other.status_code == 422
    listed = httpx.get(f"{base}{BASE}/executions", headers=AUTH).json()["data"]
    assert len(listed) == 1


def test_outputs_are_repaired_once_then_valid(start_gateway, turns):
    fake, url = turns
    base = start_gateway(skills_catalogue(url, [skill(model="up")]))
    done = ended(base, start_execution(base, "echo", {"inputs": {"text": "x"}}).json()["data"]["id"])
    assert done["state"] == "succeeded", done
    assert done["outputs"] == {"text": "fixed"}
    assert done["resource_usage"]["iteration_count"] == 2
    assert done["resource_usage"]["input_tokens"] == 20
    repair = fake.bodies[-1]
    assert repair["response_format"]["type"] == "json_schema"
    assert "not a JSON document valid" in repair["messages"][-1]["content"]
    assert "text: 5 is not of type 'string'" in repair["messages"][-1]["content"]


def test_outputs_still_invalid_after_the_repair_fail_the_execution_with_the_errors(skills_gateway):
    outputs = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    base = skills_gateway([skill(outputs=outputs)])
    done = ended(base, start_execution(base, "echo", {"inputs": {"text": "x"}}).json()["data"]["id"])
    assert (done["state"], done["failure_reason"]) == ("failed", "output_invalid")
    assert done["error"]["code"] == "output_invalid" and done["error"]["errors"][0]["type"] == "json_invalid"
    assert done["outputs"] is None


def test_the_space_policies_apply_to_the_worker_model_turns(skills_gateway):
    base = skills_gateway([skill(model="extra")])  # a tenant model the space does not allow
    done = ended(base, start_execution(base, "echo", {"inputs": {"text": "x"}}).json()["data"]["id"])
    assert (done["state"], done["failure_reason"]) == ("failed", "refused")
    assert done["error"]["status"] == 403 and "not allowed" in done["error"]["message"]


# --- following, cancelling, listing ---------------------------------------------------------------------------


def test_a_queued_execution_is_cancelled_at_once_and_a_second_cancel_is_200(skills_gateway):
    base = skills_gateway(executions_worker=False)
    created = start_execution(base, "echo", {"inputs": {"text": "x"}}).json()["data"]
    cancel = httpx.post(f"{base}{BASE}/executions/{created['id']}/cancel", headers=AUTH)
    assert cancel.status_code == 202 and cancel.json()["data"]["state"] == "cancelled"
    again = httpx.post(f"{base}{BASE}/executions/{created['id']}/cancel", headers=AUTH)
    assert again.status_code == 200 and again.json()["data"]["state"] == "cancelled"


def test_a_running_execution_is_cancelled_through_its_worker(skills_gateway):
    base = skills_gateway([skill(model="up")], upstream_model="hang")
    created = start_execution(base, "echo", {"inputs": {"text": "x"}}).json()["data"]
    running = wait_for(lambda: execution(base, created["id"]), lambda e: e["state"] == "running")
    assert running["state"] == "running"
    cancel = httpx.post(f"{base}{BASE}/executions/{created['id']}/cancel", headers=AUTH, timeout=30)
    assert cancel.status_code == 202
    assert cancel.json()["data"]["state"] == "cancelled"
    assert execution(base, created["id"])["failure_reason"] == "cancelled"


def test_events_follow_the_execution_and_resume_after_last_event_id(skills_gateway):
    base = skills_gateway()
    created = start_execution(base, "echo", {"inputs": {"text": "x"}}).json()["data"]
    url = f"{base}{BASE}/executions/{created['id']}/events"
    with httpx.stream("GET", url, headers=AUTH, timeout=30) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        frames = [f for f in stream.read().decode().split("\n\n") if f]
    kinds = [f.split("\n")[1] for f in frames]
    assert kinds == [
        "event: execution.queued",
        "event: execution.running",
        "event: execution.turn",
        "event: execution.succeeded",
    ]
    assert [f.split("\n")[0] for f in frames] == ["id: 0", "id: 1", "id: 2", "id: 3"]
    resumed = httpx.get(url, headers={**AUTH, "Last-Event-ID": "1"}, timeout=30).text
    assert [line for line in resumed.split("\n") if line.startswith("id:")] == ["id: 2", "id: 3"]
    assert httpx.get(url, headers={**AUTH, "Last-Event-ID": "x"}, timeout=30).status_code == 422


def test_executions_list_with_filters_and_cursor_pages(skills_gateway):
    base = skills_gateway([ECHO_SKILL, skill(slug="other")], executions_worker=False)
    ids = [start_execution(base, "echo", {"inputs": {"text": str(i)}}).json()["data"]["id"] for i in range(5)]
    start_execution(base, "other", {"inputs": {"text": "o"}})
    httpx.post(f"{base}{BASE}/executions/{ids[1]}/cancel", headers=AUTH)
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, "slug": "echo"}
        if cursor:
            params["cursor"] = cursor
        page = httpx.get(f"{base}{BASE}/executions", headers=AUTH, params=params).json()
        seen += [e["id"] for e in page["data"]]
        cursor = page["meta"]["next_cursor"]
        assert page["meta"]["has_more"] is (cursor is not None)
        if cursor is None:
            break
    assert seen == ids
    cancelled = httpx.get(f"{base}{BASE}/executions", headers=AUTH, params={"state": "cancelled"}).json()["data"]
    assert [e["id"] for e in cancelled] == [ids[1]]
    by_slug = httpx.get(f"{base}{BASE}/other/executions", headers=AUTH).json()["data"]
    assert [e["skill_slug"] for e in by_slug] == ["other"]
    bad = httpx.get(f"{base}{BASE}/executions", headers=AUTH, params={"state": "done"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "state"]
    assert httpx.get(f"{base}{BASE}/executions", headers=AUTH, params={"cursor": "!!"}).status_code == 422


def test_executions_of_another_space_or_tenant_are_404_and_a_tool_call_without_one_is_404(skills_gateway):
    base = skills_gateway(executions_worker=False)
    created = start_execution(base, "echo", {"inputs": {"text": "x"}}).json()["data"]
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    foreign = f"{base}/v1/spaces/{FOREIGN_SPACE}/skills/executions/{created['id']}"
    assert httpx.get(foreign, headers=other).status_code == 404
    assert httpx.get(f"{base}{BASE}/executions/{created['id']}", headers=other).status_code == 404
    assert httpx.get(f"{base}{BASE}/executions/not-a-uuid", headers=AUTH).status_code == 422
    lookup = f"{base}/v1/spaces/{SPACE}/skills/executions/by-chat-tool-call/call_123"
    assert httpx.get(lookup, headers=AUTH).status_code == 404


def test_the_outputs_document_is_an_artifact_downloaded_with_the_space_rights(skills_gateway):
    base = skills_gateway()
    done = ended(base, start_execution(base, "echo", {"inputs": {"text": "kept"}}).json()["data"]["id"])
    (artifact,) = done["artifacts"]
    assert (artifact["relpath_in_workspace"], artifact["document_type"]) == ("outputs/outputs.json", "application/json")
    url = base + artifact["download_url"]
    assert artifact["download_url"].startswith(f"/v1/spaces/{SPACE}/skills/executions/{done['id']}/artifacts/")
    download = httpx.get(url, headers=AUTH)
    assert download.status_code == 200 and download.headers["content-type"].startswith("application/json")
    assert download.json() == {"text": "kept"} and len(download.content) == artifact["size_bytes"]
    assert httpx.get(url, headers={"Authorization": f"Bearer {MEMBER_KEY}"}).status_code == 403  # not its space
    assert httpx.get(url, headers={"Authorization": f"Bearer {OTHER_KEY}"}).status_code == 404  # another tenant
    assert httpx.get(url).status_code == 401
    other = url.rsplit("/", 1)[0] + "/00000000-0000-4000-8000-000000000000"
    assert httpx.get(other, headers=AUTH).status_code == 404


# --- skills as tools (sub-executions) -------------------------------------------------------------------------

SCRIPT_INPUTS = {"type": "object", "properties": {"script": {"type": "array"}}, "required": ["script"]}


def test_a_response_calls_a_skill_as_a_tool_and_reads_its_outputs(start_gateway, scripted):
    import openai
    import orjson

    base = start_gateway(skills_catalogue(scripted[1], [ECHO_SKILL], "scripted"))
    client = openai.OpenAI(base_url=base + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=30)
    script = orjson.dumps({"script": [[["skill__echo", {"text": "inner"}]], "got {outputs}"]}).decode()
    response = client.responses.create(model="up", input=script, tools=[{"type": "skill", "slug": "echo"}])
    assert response.status == "completed"
    call = next(item for item in response.output if item.type == "mcp_call")
    assert (call.server_label, call.name, call.output) == ("skill", "echo", '{"text":"inner"}')
    assert response.output[-1].content[0].text == 'got {"text":"inner"}'
    found = httpx.get(f"{base}{BASE}/executions/by-chat-tool-call/{call.id}", headers=AUTH)
    assert found.status_code == 200, found.text
    sub = found.json()["data"]
    assert (sub["state"], sub["source"], sub["chat_tool_call_id"], sub["outputs"]) == (
        "succeeded",
        "response",
        call.id,
        {"text": "inner"},
    )
    assert sub["parent_execution_id"] is None
    bad = client.responses.with_raw_response.create
    with pytest.raises(openai.BadRequestError, match="is not a skill of this space"):
        bad(model="up", input=script, tools=[{"type": "skill", "slug": "nope"}])


def test_a_skill_calls_a_skill_as_a_sub_execution_counted_in_its_totals(start_gateway, scripted):
    outer = skill(slug="outer", inputs=SCRIPT_INPUTS, instructions="Delegate.", model="up", tools=[{"skill": "echo"}])
    base = start_gateway(skills_catalogue(scripted[1], [ECHO_SKILL, outer], "scripted"))
    script = [[["skill__echo", {"text": "deep"}]], "{outputs}"]
    done = ended(base, start_execution(base, "outer", {"inputs": {"script": script}}).json()["data"]["id"])
    assert (done["state"], done["outputs"]) == ("succeeded", {"text": "deep"}), done
    (sub,) = done["sub_executions"]
    assert (sub["skill_slug"], sub["source"], sub["parent_execution_id"], sub["state"]) == (
        "echo",
        "skill",
        done["id"],
        "succeeded",
    )
    own = 20  # the outer skill's two rounds on the scripted upstream (10 input tokens each)
    assert done["resource_usage"]["input_tokens"] == own + sub["resource_usage"]["input_tokens"]
    assert sub["resource_usage"]["input_tokens"] > 0
    full = execution(base, sub["id"])
    assert full["chat_tool_call_id"] and full["outputs"] == {"text": "deep"}


def test_a_skill_calling_a_skill_not_in_the_space_fails_the_start(tmp_path):
    outer = skill(slug="outer", tools=[{"skill": "echo"}])
    cat = skills_catalogue("http://127.0.0.1:9", [ECHO_SKILL, outer])
    cat["tenants"][0]["spaces"][0]["skills"] = ["outer"]
    with pytest.raises(CatalogueError, match="skill 'outer' uses 'echo', not in the space"):
        load_catalogue(_write(tmp_path, cat))
    cat["tenants"][0]["skills"][1] = skill(slug="outer", tools=[{"skill": "echo", "mcp": "x"}])
    with pytest.raises(CatalogueError, match="a tool is either"):
        load_catalogue(_write(tmp_path, cat))
