"""Publishing skill versions through the native API (``POST /v1/spaces/{id}/skills``): admin keys only, a bad
manifest refused with its field named, versions immutable across the tenant, visible and runnable on every
replica at once (Redis), audited."""

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.conftest import FOREIGN_SPACE, MEMBER_KEY, RESTRICTED, SPACE
from tests.skills_helpers import AUTH, BASE, ECHO_SKILL, ended, skill, skills_catalogue, start_execution

GREET = skill(slug="greet", version="1.0.0", title="Greet", instructions="Greet {{ text }}.")


def _publish(base: str, manifest: Any, space: str = SPACE, **headers: str) -> httpx.Response:
    return httpx.post(f"{base}/v1/spaces/{space}/skills", json=manifest, headers={**AUTH, **headers}, timeout=30)


@pytest.fixture
def replicas(start_gateway, upstream, redis_url):
    prefix = f"gwtest:{uuid.uuid4().hex}:"
    cat = skills_catalogue(upstream[1], [ECHO_SKILL])
    return [start_gateway(cat, redis_url=redis_url, redis_prefix=prefix) for _ in range(2)]


def test_a_published_version_lists_and_runs_on_every_replica(replicas):
    a, b = replicas
    answer = _publish(a, GREET)
    assert answer.status_code == 201, answer.text
    assert (answer.json()["data"]["slug"], answer.json()["data"]["version"]) == ("greet", "1.0.0")
    listed = httpx.get(f"{b}{BASE}", headers=AUTH).json()["data"]
    assert [s["slug"] for s in listed] == ["echo", "greet"]
    done = ended(b, start_execution(b, "greet", {"inputs": {"text": "hi"}}).json()["data"]["id"])
    assert (done["state"], done["skill_version"], done["outputs"]) == ("succeeded", "1.0.0", {"text": "hi"}), done

    assert _publish(b, {**GREET, "version": "1.1.0", "title": "Greet better"}).status_code == 201
    versions = httpx.get(f"{a}{BASE}/greet/versions", headers=AUTH).json()["data"]
    assert [v["version"] for v in versions] == ["1.1.0", "1.0.0"]
    assert start_execution(a, "greet", {"inputs": {"text": "x"}}).json()["data"]["skill_version"] == "1.1.0"
    # a new version of a catalogue skill runs beside the catalogue's
    assert _publish(a, {**ECHO_SKILL, "version": "2.0.0"}).status_code == 201
    assert httpx.get(f"{b}{BASE}/echo", headers=AUTH).json()["data"]["versions"] == ["2.0.0", "1.0.0"]

    actions = [e for e in httpx.get(f"{a}/v1/spaces/{SPACE}/audit", headers=AUTH).json()["data"]]
    assert [(e["skill"], e["version"]) for e in actions if e["action"] == "skills.publish"] == [
        ("echo", "2.0.0"),
        ("greet", "1.1.0"),
        ("greet", "1.0.0"),
    ]


def test_a_version_is_immutable_across_the_tenant(replicas):
    a, b = replicas
    assert _publish(a, GREET).status_code == 201
    again = _publish(b, GREET)
    assert again.status_code == 409 and "already published in this space" in again.json()["detail"]
    changed = _publish(b, {**GREET, "instructions": "Something else."}, space=RESTRICTED)
    assert changed.status_code == 409 and "another manifest" in changed.json()["detail"]
    assert _publish(a, GREET, space=RESTRICTED).status_code == 201  # the same manifest: into another space
    declared = _publish(a, {**ECHO_SKILL, "title": "Not the catalogue's"})
    assert declared.status_code == 409 and "another manifest" in declared.json()["detail"]
    assert _publish(a, ECHO_SKILL).status_code == 409  # the catalogue's version, already in the space


def test_concurrent_publishes_of_one_version_publish_one_manifest(replicas):
    def publish(i: int) -> int:
        return _publish(replicas[i % 2], {**GREET, "title": f"take {i}"}).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = sorted(pool.map(publish, range(8)))
    assert statuses == [201] + [409] * 7
    assert len(httpx.get(f"{replicas[0]}{BASE}/greet/versions", headers=AUTH).json()["data"]) == 1


@pytest.mark.parametrize(
    ("manifest", "loc", "words"),
    [
        ({k: v for k, v in GREET.items() if k != "outputs"}, ["body", "outputs"], "required"),
        ({**GREET, "version": "one"}, ["body", "version"], "numbers separated by dots"),
        ({**GREET, "slug": "Bad Slug"}, ["body", "slug"], "pattern"),
        ({**GREET, "inputs": {"type": "string"}}, ["body", "inputs"], "object"),
        (
            {**GREET, "outputs": {"type": "object", "properties": {"x": {"type": 5}}}},
            ["body", "outputs"],
            "JSON Schema",
        ),
        ({**GREET, "instructions": "Use {{ nothing }}."}, ["body"], "not a property of the inputs"),
        ({**GREET, "extra": 1}, ["body", "extra"], "Extra inputs"),
        ({**GREET, "tools": [{"mcp": "nowhere"}]}, ["body", "tools"], "not an MCP server of this tenant"),
        ({**GREET, "tools": [{"skill": "unknown"}]}, ["body", "tools"], "not among the space's tools or skills"),
        ({**GREET, "model": "no-such-model"}, ["body", "model"], "not a model of this tenant"),
        ([GREET], ["body"], "JSON object"),
    ],
)
def test_a_bad_manifest_is_422_naming_the_field_and_publishes_nothing(gateway, manifest, loc, words):
    answer = _publish(gateway, manifest)
    assert answer.status_code == 422, answer.text
    (detail,) = answer.json()["detail"]
    assert detail["loc"] == loc and words in detail["msg"], detail
    assert [s["slug"] for s in httpx.get(f"{gateway}{BASE}", headers=AUTH).json()["data"]] == []


def test_publishing_needs_an_admin_key_of_the_space_and_a_bounded_body(start_gateway, upstream):
    base = start_gateway(skills_catalogue(upstream[1], [ECHO_SKILL]))
    member = _publish(base, GREET, space=RESTRICTED, Authorization=f"Bearer {MEMBER_KEY}")
    assert member.status_code == 403 and "admin" in member.json()["detail"]
    assert _publish(base, GREET, space=FOREIGN_SPACE).status_code == 404
    assert _publish(base, GREET, Authorization="Bearer sk-nobody").status_code == 401
    huge = _publish(base, {**GREET, "description": "x" * 300_000})
    assert huge.status_code == 413
    assert [s["slug"] for s in httpx.get(f"{base}{BASE}", headers=AUTH).json()["data"]] == ["echo"]
