"""The Responses API on the OpenAI surface, driven by the official SDK, over a chat-only upstream (translated)
and a Responses-speaking one (native)."""

import time

import httpx2
import openai
import pytest
from openai.types.responses import Response

from tests.conftest import ADMIN_KEY, RESTRICTED, catalogue
from tests.servers import wait_pool_idle

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
REQUIRED = {
    "id",
    "object",
    "created_at",
    "model",
    "output",
    "error",
    "incomplete_details",
    "instructions",
    "metadata",
    "parallel_tool_calls",
    "temperature",
    "tool_choice",
    "tools",
    "top_p",
}


def client(base: str, **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=15, **kw)  # type: ignore[arg-type]


def native_catalogue(url: str) -> dict:
    cat = catalogue(url)
    cat["tenants"][0]["models"][0]["deployment"] = {
        "type": "openai",
        "api": "responses",
        "model": "up-native",
        "base_url": url + "/v1",
    }
    return cat


@pytest.fixture(params=["chat", "responses"])
def any_upstream(request, start_gateway, upstream):
    """A gateway whose model ``up`` is a chat-only upstream, or one that speaks /v1/responses."""
    fake, url = upstream
    return start_gateway(catalogue(url) if request.param == "chat" else native_catalogue(url)), request.param


def test_create_has_every_required_key(any_upstream):
    base, kind = any_upstream
    raw = httpx2.post(base + "/v1/responses", headers=AUTH, json={"model": "up", "input": "hello"}).json()
    assert REQUIRED <= set(raw) and raw["object"] == "response" and raw["id"].startswith("resp_")
    assert isinstance(raw["created_at"], int) and raw["status"] == "completed" and raw["model"] == "up"
    r = Response.model_validate(raw)
    assert r.output_text == ("hi from upstream" if kind == "chat" else "hello")
    assert r.usage.total_tokens in (8, 11)


def test_translated_request_reaches_the_chat_upstream(gateway, upstream):
    fake, _ = upstream
    client(gateway).responses.create(
        model="up",
        input="hello",
        instructions="be brief",
        temperature=0.5,
        max_output_tokens=50,
        metadata={"k": "v"},
        store=True,
    )
    sent = fake.requests[-1]
    assert sent["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    assert sent["temperature"] == 0.5 and sent["max_completion_tokens"] == 50
    assert "metadata" not in sent and "store" not in sent


def test_stream_events_in_canonical_order_with_sse_ids(any_upstream):
    base, kind = any_upstream
    with httpx2.stream(
        "POST", base + "/v1/responses", headers=AUTH, json={"model": "up", "input": "hello", "stream": True}
    ) as r:
        body = r.read().decode()
    frames = [f for f in body.split("\n\n") if f]
    ids = [int(f.split("\n")[0].removeprefix("id: ")) for f in frames]
    assert ids == list(range(len(frames)))  # id: <sequence_number>, from 0, no gaps
    assert "[DONE]" not in body
    with client(base).responses.stream(model="up", input="hello") as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "response.output_text.delta" in types
    assert final.output_text and final.usage.total_tokens > 0
    if kind == "chat":
        assert types == [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            *["response.output_text.delta"] * 3,
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]


def test_previous_response_id_rebuilds_history_without_instructions(gateway, upstream):
    fake, _ = upstream
    c = client(gateway)
    first = c.responses.create(model="up", input="first", instructions="sys one")
    second = c.responses.create(model="up", input="second", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    assert fake.requests[-1]["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "first"}]},  # as stored: an input_text part
        {"role": "assistant", "content": "hi from upstream"},
        {"role": "user", "content": "second"},
    ]
    third = c.responses.create(model="fake-echo", input="third", previous_response_id=second.id)  # switch model
    assert third.output_text == "third" and third.model == "fake-echo"


def test_retrieve_delete_and_input_items(gateway):
    c = client(gateway)
    created = c.responses.create(
        model="up",
        input=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "user", "content": "c"}],
    )
    assert c.responses.retrieve(created.id).output_text == created.output_text
    items = c.responses.input_items.list(created.id)
    assert [i.content[0].text for i in items.data] == ["c", "b", "a"]  # newest first by default
    page = c.responses.input_items.list(created.id, order="asc", limit=2)
    assert [i.content[0].text for i in page.data] == ["a", "b"] and page.has_more
    rest = c.responses.input_items.list(created.id, order="asc", after=page.data[-1].id)
    assert [i.content[0].text for i in rest.data] == ["c"] and not rest.has_more
    with pytest.raises(openai.BadRequestError):
        c.responses.input_items.list(created.id, limit=0)
    c.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(created.id)


def test_store_false_keeps_nothing(gateway):
    c = client(gateway)
    r = c.responses.create(model="up", input="x", store=False)
    assert r.output_text
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(r.id)
    with pytest.raises(openai.BadRequestError) as err:
        c.responses.create(model="up", input="y", previous_response_id=r.id)
    assert err.value.body["code"] == "previous_response_not_found"


def test_other_spaces_ids_do_not_exist(gateway):
    mine = client(gateway).responses.create(model="fake-echo", input="x")
    theirs = client(gateway, project=RESTRICTED)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.retrieve(mine.id)
    with pytest.raises(openai.BadRequestError) as err:
        theirs.responses.create(model="fake-echo", input="y", previous_response_id=mine.id)
    assert err.value.body["code"] == "previous_response_not_found"


def test_resume_replays_exactly_the_events_after_n(gateway):
    c = client(gateway)
    with c.responses.stream(model="up", input="hello") as stream:
        events = [{"type": e.type, "sequence_number": e.sequence_number} for e in stream]
        response_id = stream.get_final_response().id
    with httpx2.stream(
        "GET", f"{gateway}/v1/responses/{response_id}", headers=AUTH, params={"stream": "true", "starting_after": 4}
    ) as r:
        frames = [f for f in r.read().decode().split("\n\n") if f]
    assert [int(f.split("\n")[0][4:]) for f in frames] == [e["sequence_number"] for e in events[5:]]
    resumed = list(c.responses.retrieve(response_id, stream=True, starting_after=4))
    assert [e.type for e in resumed] == [e["type"] for e in events[5:]]


def test_background_runs_as_a_job_and_can_be_followed(gateway):
    c = client(gateway)
    job = c.responses.create(model="fake-slow", input="later", background=True)
    assert job.status == "queued" and job.background
    resumed = list(c.responses.retrieve(job.id, stream=True))  # follows it live to the end
    assert resumed[-1].type == "response.completed" and resumed[-1].response.output_text == "later"
    assert c.responses.retrieve(job.id).status == "completed"


def test_background_cancel(gateway):
    c = client(gateway)
    job = c.responses.create(model="fake-slow", input="never", background=True)
    start = time.monotonic()
    cancelled = c.responses.cancel(job.id)
    assert cancelled.status == "cancelled" and time.monotonic() - start < 5
    assert c.responses.retrieve(job.id).status == "cancelled"
    assert c.responses.cancel(job.id).status == "cancelled"  # idempotent once terminal
    done = c.responses.create(model="fake-echo", input="x")
    with pytest.raises(openai.BadRequestError):
        c.responses.cancel(done.id)  # only background responses can be cancelled


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "up"}, "input"),
        ({"model": "up", "input": [{"type": "nope"}]}, "input[0].type"),
        ({"model": "up", "input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"model": "up", "input": "x", "temperature": 3}, "temperature"),
        ({"model": "up", "input": "x", "metadata": {str(i): "v" for i in range(17)}}, "metadata"),
        ({"model": "up", "input": "x", "metadata": {"k": "v" * 513}}, "metadata"),
        ({"model": "up", "input": "x", "x_context": {"blob": "y" * 11000}}, "x_context"),
        ({"model": "up", "input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ],
)
def test_validation_names_the_param(gateway, body, param):
    r = httpx2.post(gateway + "/v1/responses", headers=AUTH, json=body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_x_context_is_rendered_ahead_and_kept_in_metadata(gateway, upstream):
    fake, _ = upstream
    c = client(gateway)
    r = c.responses.create(model="up", input="question", extra_body={"x_context": {"user": {"name": "Ann"}}})
    assert fake.requests[-1]["messages"][-1]["content"] == (
        "<user-context>\n[Context: user — name: Ann]\n</user-context>\n\nquestion"
    )
    stored = c.responses.input_items.list(r.id).data[0].model_dump()
    assert stored["metadata"] == {"context": {"user": {"name": "Ann"}}} and stored["content"][0]["text"] == "question"


def test_upstream_refusal_before_the_stream_is_a_plain_error(start_gateway, upstream):
    base = start_gateway(catalogue(upstream[1], "status-429"))
    with pytest.raises(openai.RateLimitError):
        client(base).responses.create(model="up", input="x", stream=True)


def test_a_background_job_the_upstream_refuses_ends_its_events_in_response_failed(start_gateway, upstream):
    cat = catalogue(upstream[1], "status-400")
    base = start_gateway(cat)
    c = client(base)
    events = list(c.responses.create(model="up", input="x", stream=True, background=True))
    assert [e.type for e in events] == ["response.failed"] and events[0].sequence_number == 0
    assert events[0].response.error.message == "Upstream rejected the request: upstream says 400"
    resumed = list(c.responses.retrieve(events[0].response.id, stream=True))  # the stored log ends so too
    assert [e.type for e in resumed] == ["response.failed"]


def test_upstream_cut_mid_stream_ends_in_response_failed(start_gateway, upstream):
    base = start_gateway(catalogue(upstream[1], "cut"))
    c = client(base)
    with c.responses.stream(model="up", input="x") as stream:
        events = list(stream)
    assert events[-1].type == "response.failed"
    failed = events[-1].response
    assert failed.error.code == "server_error" and failed.output[0].content[0].text == "one two "
    assert c.responses.retrieve(failed.id).status == "failed"


def test_max_output_tokens_maps_to_incomplete(start_gateway, upstream):
    base = start_gateway(catalogue(upstream[1], "length"))
    r = client(base).responses.create(model="up", input="x", max_output_tokens=3)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert upstream[0].requests[-1]["max_completion_tokens"] == 3
    assert client(base).responses.retrieve(r.id).status == "incomplete"


@pytest.mark.parametrize("upstream_model", ["malformed-sse", "stall"])
def test_garbled_or_stalled_upstream_stream_ends_in_response_failed(start_gateway, upstream, upstream_model):
    cat = catalogue(upstream[1], upstream_model)
    cat["tenants"][0]["models"][0]["deployment"]["timeouts"] = {"idle": 0.3}
    base = start_gateway(cat)
    events = list(client(base).responses.create(model="up", input="x", stream=True))
    assert events[-1].type == "response.failed" and events[-1].response.error.code == "server_error"
    assert wait_pool_idle(base) == 0  # the upstream connection went back (or was closed), none leaked
