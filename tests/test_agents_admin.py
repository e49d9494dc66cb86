"""The native agents API across two gateway replicas on one real Redis: create, version, publish, change the
status; every change visible on the other replica at once, published versions immutable, all audited; hostile
inputs answered with clear 4xx in the native shape."""

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2
import pytest

from tests.agents_helpers import agents_catalogue
from tests.conftest import ADMIN_KEY, MEMBER_KEY, RESTRICTED, SPACE

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
AGENTS = f"/v1/spaces/{SPACE}/agents"


def _two_replicas(start_gateway, cat: dict[str, Any], redis_url: str, redis_prefix: str) -> list[str]:
    prefix = f"{redis_prefix}{uuid.uuid4().hex[:8]}:"  # a store of this test's own
    return [start_gateway(cat, redis_url=redis_url, redis_prefix=prefix) for _ in range(2)]


@pytest.fixture
def replicas(start_gateway, upstream, redis_url, redis_prefix):
    return _two_replicas(start_gateway, agents_catalogue(upstream[1]), redis_url, redis_prefix)


def _invoke(base: str, model: str) -> httpx2.Response:
    return httpx2.post(base + "/v1/responses", headers=AUTH, json={"model": model, "input": "hi"}, timeout=30)


def _post(base: str, path: str, body: Any = None) -> httpx2.Response:
    return httpx2.post(base + AGENTS + path, headers=AUTH, json=body)


def test_an_agent_made_on_one_replica_runs_on_the_other(replicas, upstream):
    a, b = replicas
    r = _post(a, "", {"key": "helper", "name": "Helper", "description": "Helps"})
    assert r.status_code == 201, r.text
    assert r.json()["data"]["status"] == "draft" and r.json()["data"]["versions"] == []
    assert "helper" in [x["key"] for x in httpx2.get(b + AGENTS, headers=AUTH).json()["data"]]
    assert _invoke(b, "helper").json()["error"]["code"] == "agent_not_active"

    r = _post(a, "/helper/versions", {"model": "up", "instructions": "Helper v1", "temperature": 0.3})
    assert r.status_code == 201 and r.json()["data"]["version"] == 1 and r.json()["data"]["published"] is False
    r = httpx2.patch(b + AGENTS + "/helper", headers=AUTH, json={"status": "active"})
    assert r.status_code == 200 and r.json()["data"]["status"] == "active"
    assert _invoke(a, "helper").json()["error"]["code"] == "agent_not_published"
    assert _invoke(a, "helper@1").json()["error"]["code"] == "version_not_published"

    r = _post(b, "/helper/versions/1/publish")
    assert r.status_code == 200 and r.json()["data"]["published"] is True
    assert _post(a, "/helper/versions/1/publish").status_code == 409
    r = httpx2.patch(a + AGENTS + "/helper/versions/1", headers=AUTH, json={"model": "up", "instructions": "changed"})
    assert r.status_code == 409 and "never change" in r.json()["detail"]

    assert _invoke(b, "helper").status_code == 200
    sent = upstream[0].requests[-1]
    assert (sent["messages"][0]["content"], sent["temperature"]) == ("Helper v1", 0.3)

    assert _post(a, "/helper/versions", {"model": "up", "instructions": "draft two"}).json()["data"]["version"] == 2
    r = httpx2.patch(b + AGENTS + "/helper/versions/2", headers=AUTH, json={"model": "up", "instructions": "Helper v2"})
    assert r.status_code == 200
    assert _invoke(a, "helper").status_code == 200 and upstream[0].requests[-1]["messages"][0]["content"] == "Helper v1"
    assert _post(a, "/helper/versions/2/publish").status_code == 200
    assert _invoke(b, "helper").status_code == 200 and upstream[0].requests[-1]["messages"][0]["content"] == "Helper v2"
    assert _invoke(b, "helper@1").status_code == 200
    assert upstream[0].requests[-1]["messages"][0]["content"] == "Helper v1"  # pinned: still there, unchanged

    actions = [e["action"] for e in httpx2.get(f"{a}/v1/spaces/{SPACE}/audit", headers=AUTH).json()["data"]]
    for action in ("agents.create", "agents.update", "agents.versions.create", "agents.versions.publish"):
        assert action in actions


def test_concurrent_versions_on_two_replicas_get_distinct_numbers(replicas):
    a, b = replicas
    assert _post(a, "", {"key": "busy", "name": "Busy"}).status_code == 201
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: _post((a, b)[i % 2], "/busy/versions", {"model": "up"}), range(16)))
    assert sorted(r.json()["data"]["version"] for r in answers) == list(range(1, 17))


def test_the_yaml_agents_are_seeded_once_and_the_store_is_the_truth(replicas):
    a, b = replicas
    r = httpx2.patch(a + AGENTS + "/support-bot", headers=AUTH, json={"status": "inactive", "name": "Old bot"})
    assert r.status_code == 200
    got = httpx2.get(b + AGENTS + "/support-bot", headers=AUTH).json()["data"]
    assert (got["name"], got["status"], [v["version"] for v in got["versions"]]) == ("Old bot", "inactive", [1, 2, 3])
    assert _invoke(b, "support-bot").json()["error"]["code"] == "agent_not_active"


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "", {"key": "has space", "name": "x"}, 422),
        ("POST", "", {"key": "k" * 5000, "name": "x"}, 422),
        ("POST", "", {"key": "a@1", "name": "x"}, 422),
        ("POST", "", {"key": "ok", "name": "x" * 300}, 422),
        ("POST", "", {"key": "ok", "name": "x", "status": "paused"}, 422),
        ("POST", "", {"key": "ok", "name": "x", "extra": 1}, 422),
        ("POST", "", {"key": "up", "name": "a model's alias"}, 409),
        ("POST", "", {"key": "support-bot", "name": "taken"}, 409),
        ("POST", "", [1, 2], 422),
        ("PATCH", "/support-bot", {}, 422),
        ("PATCH", "/support-bot", {"status": "on"}, 422),
        ("PATCH", "/nope", {"status": "active"}, 404),
        ("POST", "/support-bot/versions", {"model": "nope"}, 422),
        ("POST", "/support-bot/versions", {"model": "up", "tools": ["nope"]}, 422),
        ("POST", "/support-bot/versions", {"model": "up", "tools": ["bad label!"]}, 422),
        ("POST", "/support-bot/versions", {"model": "up", "temperature": 9}, 422),
        ("POST", "/support-bot/versions", {"model": "up", "instructions": "x" * 100_001}, 422),
        ("POST", "/support-bot/versions", {"model": "up", "policies": [{"use": "policies.cost:Cost"}]}, 422),
        ("POST", "/support-bot/versions", {"model": "up", "policies": [{"use": "guardrails", "nope": 1}]}, 422),
        ("POST", "/support-bot/versions", {"model": "up", "version": 7}, 422),
        ("POST", "/support-bot/versions/abc/publish", None, 422),
        ("POST", "/support-bot/versions/0/publish", None, 422),
        ("POST", "/support-bot/versions/99999999999999999999/publish", None, 422),
        ("POST", "/support-bot/versions/9/publish", None, 404),
        ("POST", "/support-bot/versions/2/publish", None, 409),
        ("PATCH", "/support-bot/versions/3", {"model": "nope"}, 422),
        ("GET", "/hidden", None, 404),  # another space's agent
        ("GET", "/" + "k" * 5000, None, 404),
    ],
)
def test_hostile_inputs(gateway_with_agents, method, path, body, status):
    r = httpx2.request(method, gateway_with_agents + AGENTS + path, headers=AUTH, json=body)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"detail"} and len(r.text) < 1500


def test_members_read_and_only_admins_change(gateway_with_agents):
    member = {"Authorization": f"Bearer {MEMBER_KEY}"}
    base = f"{gateway_with_agents}/v1/spaces/{RESTRICTED}/agents"
    assert httpx2.get(base, headers=member).json() == {"data": []}
    r = httpx2.post(base, headers=member, json={"key": "mine", "name": "Mine"})
    assert r.status_code == 403 and "admin" in r.json()["detail"]
    assert httpx2.get(f"{gateway_with_agents}{AGENTS}", headers=member).status_code == 403  # not its space
    assert httpx2.get(f"{gateway_with_agents}{AGENTS}", headers={}).status_code == 401


@pytest.fixture
def gateway_with_agents(start_gateway, upstream):
    return start_gateway(agents_catalogue(upstream[1]))


def test_an_idempotent_retry_replays_the_version_it_ran_after_a_new_one_is_published(
    start_gateway, upstream, redis_url, redis_prefix
):
    """The key promises the first answer: an unpinned retry after a publish replays v1's answer (the fingerprint is
    the request body, which did not change) and reaches no upstream; a new key runs the new version."""
    cat = agents_catalogue(upstream[1])
    cat["tenants"][0]["policies"] = [{"use": "idempotency"}, {"use": "allow_list"}]
    a, b = _two_replicas(start_gateway, cat, redis_url, redis_prefix)
    assert _post(a, "", {"key": "stable", "name": "Stable"}).status_code == 201
    assert _post(a, "/stable/versions", {"model": "up", "instructions": "Stable v1"}).status_code == 201
    assert _post(a, "/stable/versions/1/publish").status_code == 200
    assert httpx2.patch(a + AGENTS + "/stable", headers=AUTH, json={"status": "active"}).status_code == 200

    def call(base: str, key: str) -> httpx2.Response:
        headers = {**AUTH, "Idempotency-Key": key}
        return httpx2.post(base + "/v1/responses", headers=headers, json={"model": "stable", "input": "hi"}, timeout=30)

    first = call(a, "retry-me")
    assert first.status_code == 200 and upstream[0].requests[-1]["messages"][0]["content"] == "Stable v1"
    assert _post(b, "/stable/versions", {"model": "up", "instructions": "Stable v2"}).status_code == 201
    assert _post(b, "/stable/versions/2/publish").status_code == 200
    sent = len(upstream[0].requests)

    retry = call(b, "retry-me")
    assert retry.status_code == 200 and retry.headers["idempotent-replayed"] == "true"
    assert retry.json()["id"] == first.json()["id"] and len(upstream[0].requests) == sent
    fresh = call(b, "another-key")
    assert fresh.status_code == 200 and upstream[0].requests[-1]["messages"][0]["content"] == "Stable v2"


def test_another_space_lists_an_agent_of_the_api_and_unlists_it(replicas):
    """An agent made through the API in one space is listed in a second space by that space's admin (on the other
    replica), appears there at once, and is taken out of it again; the first space keeps it throughout."""
    a, b = replicas
    assert _post(a, "", {"key": "shared", "name": "Shared"}).status_code == 201
    here, there = f"{b}/v1/spaces/{RESTRICTED}/agents", f"{a}/v1/spaces/{RESTRICTED}/agents"
    assert httpx2.get(there + "/shared", headers=AUTH).status_code == 404  # not listed there yet
    listed = httpx2.put(here + "/shared/listing", headers=AUTH)
    assert listed.status_code == 200 and listed.json()["data"]["key"] == "shared"
    assert "shared" in [x["key"] for x in httpx2.get(there, headers=AUTH).json()["data"]]
    assert httpx2.put(here + "/shared/listing", headers=AUTH).status_code == 200  # idempotent
    member = {"Authorization": f"Bearer {MEMBER_KEY}"}
    assert httpx2.delete(here + "/shared/listing", headers=member).status_code == 403
    assert httpx2.put(here + "/ghost/listing", headers=AUTH).status_code == 404
    assert httpx2.put(here + "/" + "x" * 300 + "/listing", headers=AUTH).status_code == 404

    assert httpx2.delete(there + "/shared/listing", headers=AUTH).status_code == 204
    assert httpx2.get(here + "/shared", headers=AUTH).status_code == 404
    assert httpx2.delete(here + "/shared/listing", headers=AUTH).status_code == 404  # not listed any more
    assert "shared" in [x["key"] for x in httpx2.get(b + AGENTS, headers=AUTH).json()["data"]]
    actions = [e["action"] for e in httpx2.get(f"{a}/v1/spaces/{RESTRICTED}/audit", headers=AUTH).json()["data"]]
    assert "agents.list" in actions and "agents.unlist" in actions


def test_listing_on_the_in_memory_store(gateway_with_agents):
    here = f"{gateway_with_agents}/v1/spaces/{RESTRICTED}/agents"
    assert httpx2.put(here + "/support-bot/listing", headers=AUTH).status_code == 200
    assert httpx2.get(here + "/support-bot", headers=AUTH).status_code == 200
    assert httpx2.delete(here + "/support-bot/listing", headers=AUTH).status_code == 204
    assert httpx2.delete(here + "/support-bot/listing", headers=AUTH).status_code == 404
    assert httpx2.get(f"{gateway_with_agents}{AGENTS}/support-bot", headers=AUTH).status_code == 200
