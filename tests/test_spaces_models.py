"""The native allowed-models API of a space, on both prefixes, in FastAPI's shapes."""

import uuid

import httpx2
import openai
import pytest

from tests.conftest import (
    ADMIN_KEY,
    FOREIGN_SPACE,
    MEMBER_KEY,
    MODEL_IDS,
    OTHER_KEY,
    RESTRICTED,
    SPACE,
    catalogue,
)

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def models_url(base: str, space: str = SPACE, prefix: str = "") -> str:
    return f"{base}{prefix}/v1/spaces/{space}/models"


def add(
    base: str,
    model: str,
    key: str | None = None,
    space: str = RESTRICTED,
    prefix: str = "",
    headers: dict | None = None,
) -> httpx2.Response:
    h = {**AUTH, **({"Idempotency-Key": key} if key else {}), **(headers or {})}
    return httpx2.post(models_url(base, space, prefix), headers=h, json={"tenant_model_id": MODEL_IDS[model]})


@pytest.mark.parametrize("prefix", ["", "/api-proxy"])
def test_list_has_the_documented_shape(gateway, prefix):
    r = httpx2.get(models_url(gateway, prefix=prefix), headers=AUTH)
    assert r.status_code == 200
    body = r.json()
    assert body["meta"] == {"next_cursor": None, "has_more": False}
    first = body["data"][0]
    assert set(first) == {
        "tenant_model_id",
        "alias",
        "is_enabled",
        "is_default",
        "context_window",
        "capabilities",
        "reasoning",
        "logo_url",
        "logo_url_dark",
        "added_at",
    }
    assert first["alias"] == "up" and first["context_window"] == 4096 and first["is_default"] is False
    assert first["added_at"].endswith("Z")
    assert [m["is_default"] for m in body["data"]] == [False, True, False, False]


def test_cursor_pagination(gateway):
    r = httpx2.get(models_url(gateway), headers=AUTH, params={"limit": 2})
    page1 = r.json()
    assert [m["alias"] for m in page1["data"]] == ["up", "fake-echo"] and page1["meta"]["has_more"] is True
    r = httpx2.get(models_url(gateway), headers=AUTH, params={"limit": 2, "cursor": page1["meta"]["next_cursor"]})
    page2 = r.json()
    assert [m["alias"] for m in page2["data"]] == ["fake-slow", "fake-tool"] and page2["meta"] == {
        "next_cursor": None,
        "has_more": False,
    }


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"cursor": "!!"}, "cursor"),
    ],
)
def test_bad_query_is_422(gateway, params, loc):
    r = httpx2.get(models_url(gateway), headers=AUTH, params=params)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", loc]


def test_add_is_idempotent_and_applies_to_openai_routes_at_once(gateway):
    oa = openai.OpenAI(base_url=gateway + "/v1", api_key=ADMIN_KEY, project=RESTRICTED, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        oa.chat.completions.create(model="extra", messages=[{"role": "user", "content": "hi"}])
    first = add(gateway, "extra", "key-1")
    assert first.status_code == 201
    assert first.json()["data"]["alias"] == "extra"
    again = add(gateway, "extra", '"key-1"')  # a Structured-Field string is the same key
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert [m.id for m in oa.models.list()] == ["fake-echo", "extra"]  # added once, visible at once
    answer = oa.chat.completions.create(model="extra", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "hi"
    # another key for the same model: a clear 409, and that answer is replayed too
    assert add(gateway, "extra", "key-2").status_code == 409
    assert add(gateway, "extra", "key-2").status_code == 409


def test_idempotency_key_rules(gateway):
    r = add(gateway, "extra")
    assert r.status_code == 400 and "Idempotency-Key" in r.json()["detail"]
    assert add(gateway, "extra", "k").status_code == 201
    r = add(gateway, "up", "k")  # same key, another body
    assert r.status_code == 422 and "different request body" in r.json()["detail"]


def test_delete_then_refused_on_openai_routes(gateway):
    r = httpx2.delete(models_url(gateway) + "/" + MODEL_IDS["up"], headers=AUTH)
    assert r.status_code == 204 and r.content == b""
    assert httpx2.delete(models_url(gateway) + "/" + MODEL_IDS["up"], headers=AUTH).status_code == 404
    oa = openai.OpenAI(base_url=gateway + "/v1", api_key=ADMIN_KEY, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        oa.chat.completions.create(model="up", messages=[{"role": "user", "content": "hi"}])


def test_auth_and_space_errors(gateway):
    assert httpx2.get(models_url(gateway)).status_code == 401
    assert httpx2.get(models_url(gateway), headers={"Authorization": "Bearer nope"}).json() == {
        "detail": "Invalid API key."
    }
    member = {"Authorization": f"Bearer {MEMBER_KEY}"}
    assert httpx2.get(models_url(gateway, SPACE), headers=member).status_code == 403  # no rights on that space
    assert httpx2.get(models_url(gateway, RESTRICTED), headers=member).status_code == 200
    assert add(gateway, "extra", "m", headers=member).status_code == 403  # members may not change it
    assert httpx2.get(models_url(gateway, FOREIGN_SPACE), headers=AUTH).status_code == 404
    assert httpx2.get(models_url(gateway, SPACE), headers={"Authorization": f"Bearer {OTHER_KEY}"}).status_code == 404
    assert httpx2.get(models_url(gateway, str(uuid.uuid4())), headers=AUTH).status_code == 404


def test_malformed_uuids_and_bodies_are_422(gateway):
    r = httpx2.get(models_url(gateway, "not-a-uuid"), headers=AUTH)
    assert r.status_code == 422
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["path", "space_id"] and detail["type"] == "uuid_parsing"
    assert detail["input"] == "not-a-uuid" and detail["msg"].startswith("Input should be a valid UUID")
    r = httpx2.delete(models_url(gateway) + "/nope", headers=AUTH)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "tenant_model_id"]
    h = {**AUTH, "Idempotency-Key": "b"}
    r = httpx2.post(models_url(gateway), headers=h, json={"tenant_model_id": "nope"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "tenant_model_id"]
    r = httpx2.post(models_url(gateway), headers=h, json={})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "missing"
    r = httpx2.post(models_url(gateway), headers={**h, "content-type": "application/json"}, content=b"{x")
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
    r = httpx2.post(
        models_url(gateway),
        headers={**AUTH, "Idempotency-Key": "c"},
        json={"tenant_model_id": str(uuid.uuid4())},
    )
    assert r.status_code == 404


def test_changes_persist_in_redis_and_reach_every_replica(start_gateway, upstream, redis_url, redis_prefix):
    cat = catalogue(upstream[1])
    settings = {"redis_url": redis_url, "redis_prefix": redis_prefix + uuid.uuid4().hex + ":"}
    one, two = start_gateway(cat, **settings), start_gateway(cat, **settings)
    assert add(one, "extra", "r1").status_code == 201
    assert add(two, "extra", "r1").headers["idempotent-replayed"] == "true"  # the record is shared too
    listed = httpx2.get(models_url(two, RESTRICTED), headers=AUTH).json()["data"]
    assert [m["alias"] for m in listed] == ["fake-echo", "extra"]
    r = httpx2.delete(models_url(two, RESTRICTED) + "/" + MODEL_IDS["fake-echo"], headers=AUTH)
    assert r.status_code == 204
    three = start_gateway(cat, **settings)  # a restart does not re-seed from YAML over the store
    listed = httpx2.get(models_url(three, RESTRICTED), headers=AUTH).json()["data"]
    assert [m["alias"] for m in listed] == ["extra"]
