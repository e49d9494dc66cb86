"""Native Responses routes of a space (seed 000), on both prefixes."""

import re
import signal
import uuid

import httpx2
import pytest
import yaml

from config import Settings
from gateway.app import create_app
from tests.conftest import ADMIN_KEY, MEMBER_KEY, RESTRICTED, SPACE, catalogue
from tests.servers import serve, spawn_gateway, wait_for

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def url(base: str, prefix: str = "", space: str = SPACE) -> str:
    return f"{base}{prefix}/v1/spaces/{space}/responses"


@pytest.mark.parametrize("prefix", ["", "/api-proxy"])
def test_create_answers_in_the_data_envelope(start_gateway, upstream, prefix):
    cat = catalogue(upstream[1])
    cat["tenants"][0]["models"][0]["pricing"] = {"input_per_mtok": "1.5", "output_per_mtok": "6"}
    base = start_gateway(cat)
    r = httpx2.post(
        url(base, prefix),
        headers={**AUTH, "Idempotency-Key": "k-1"},
        json={"model": "up", "input": "hello", "metadata": {"a": "b"}, "tool_mode": "manual"},
    )
    assert r.status_code == 200
    data = r.json()["data"]
    assert data["object"] == "response" and data["status"] == "completed" and data["space_id"] == SPACE
    assert ISO.match(data["created_at"]) and ISO.match(data["finished_at"]) and ISO.match(data["expires_at"])
    assert data["model_alias"] == "up" and data["metadata"] == {"a": "b"} and data["idempotency_key"] == "k-1"
    # 5 input tokens at $1.5/M + 3 output tokens at $6/M = $0.0000255, shown to 6 decimals (half-up)
    assert data["usage"] == {"input_tokens": 5, "output_tokens": 3, "reasoning_tokens": 0, "cost_usd": "0.000026"}
    assert data["aimable"] == {
        "langfuse_trace_id": None,
        "governance_applied": ["allow_list"],
        "iteration_count": 1,
        "agent": None,
        "failure_reason": None,
    }
    got = httpx2.get(url(base, prefix) + "/" + data["id"], headers=AUTH).json()["data"]
    assert got == data


def test_default_model_and_allow_list(gateway):
    r = httpx2.post(url(gateway), headers=AUTH, json={"input": "no model given"})
    assert r.json()["data"]["model_alias"] == "fake-echo"
    r = httpx2.post(url(gateway, space=RESTRICTED), headers=AUTH, json={"model": "up", "input": "x"})
    assert r.status_code == 403 and "Allowed models: fake-echo" in r.json()["detail"]


def test_validation_is_422_with_loc(gateway):
    r = httpx2.post(url(gateway), headers=AUTH, json={"model": "up"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "input"]
    r = httpx2.post(url(gateway), headers=AUTH, json={"input": "x", "temperature": 5})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "temperature"]
    r = httpx2.post(url(gateway), headers=AUTH, json={"input": "x", "tool_mode": "sometimes"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "tool_mode"]
    r = httpx2.post(url(gateway, space="nope"), headers=AUTH, json={"input": "x"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "uuid_parsing"
    r = httpx2.post(url(gateway), headers={**AUTH, "Idempotency-Key": "a"}, json={"input": "x", "idempotency_key": "b"})
    assert r.status_code == 422


def test_auth_and_space_rules(gateway):
    assert httpx2.post(url(gateway), json={"input": "x"}).status_code == 401
    member = {"Authorization": f"Bearer {MEMBER_KEY}"}
    assert httpx2.post(url(gateway), headers=member, json={"input": "x"}).status_code == 403
    created = httpx2.post(url(gateway), headers=AUTH, json={"input": "x"}).json()["data"]
    r = httpx2.get(url(gateway, space=RESTRICTED) + "/" + created["id"], headers=AUTH)
    assert r.status_code == 404  # another space's response does not exist here
    r = httpx2.post(url(gateway, space=RESTRICTED) + "/" + created["id"] + "/cancel", headers=AUTH)
    assert r.status_code == 404


def test_cancel_is_202_in_flight_and_200_when_finished(gateway):
    job = httpx2.post(url(gateway), headers=AUTH, json={"model": "fake-slow", "input": "x", "background": True})
    job_id = job.json()["data"]["id"]
    assert job.json()["data"]["status"] == "queued"
    r = httpx2.post(url(gateway) + f"/{job_id}/cancel", headers=AUTH)
    assert r.status_code == 202 and r.json()["data"]["status"] == "cancelled"
    r = httpx2.post(url(gateway) + f"/{job_id}/cancel", headers=AUTH)
    assert r.status_code == 200 and r.json()["data"]["status"] == "cancelled"


def test_stream_on_the_native_route(gateway):
    with httpx2.stream("POST", url(gateway), headers=AUTH, json={"input": "a b", "stream": True}) as r:
        text = r.read().decode()
    assert r.headers["content-type"].startswith("text/event-stream")
    assert "event: response.completed" in text and "id: 0\n" in text


def running(base: str, response_id: str) -> None:
    """Wait until a background job has started its upstream call."""
    status = lambda: httpx2.get(f"{url(base)}/{response_id}", headers=AUTH).json()["data"]["status"]  # noqa: E731
    assert wait_for(status, lambda s: s == "in_progress") == "in_progress"


def test_a_crash_ends_a_background_job_as_failed_not_stuck(start_gateway, upstream, redis_url, redis_prefix, tmp_path):
    settings = {"redis_url": redis_url, "redis_prefix": redis_prefix + uuid.uuid4().hex + ":"}
    cat = catalogue(upstream[1], "hang")
    proc, crashing = spawn_gateway(cat, tmp_path, redis_url, settings["redis_prefix"], GATEWAY_HEARTBEAT_SECONDS="0.2")
    try:
        job = httpx2.post(url(crashing), headers=AUTH, json={"model": "up", "input": "x", "background": True}).json()
        assert job["data"]["status"] == "queued"
        running(crashing, job["data"]["id"])
    finally:
        proc.send_signal(signal.SIGKILL)  # no shutdown code runs: only the heartbeat's expiry tells
        proc.wait(10)
    survivor = start_gateway(cat, **settings)
    read = lambda: httpx2.get(url(survivor) + "/" + job["data"]["id"], headers=AUTH).json()["data"]  # noqa: E731
    r = wait_for(read, lambda job: job["status"] != "in_progress")  # until the heartbeat has expired
    assert r["status"] == "failed" and "interrupted" in r["aimable"]["failure_reason"]


def test_a_stopping_gateway_marks_its_running_jobs_failed(start_gateway, upstream, redis_url, redis_prefix, tmp_path):
    settings = {"redis_url": redis_url, "redis_prefix": redis_prefix + uuid.uuid4().hex + ":"}
    cat = catalogue(upstream[1], "hang")
    config = tmp_path / "stop.yaml"
    config.write_text(yaml.safe_dump(cat))
    with serve(create_app(Settings(config=config, **settings))) as stopping:
        job = httpx2.post(url(stopping), headers=AUTH, json={"model": "up", "input": "x", "background": True}).json()
        running(stopping, job["data"]["id"])
    survivor = start_gateway(cat, **settings)
    r = httpx2.get(url(survivor) + "/" + job["data"]["id"], headers=AUTH).json()["data"]
    assert r["status"] == "failed" and "interrupted" in r["aimable"]["failure_reason"]
