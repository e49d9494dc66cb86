"""The audit log: allowed-model changes and policy denials recorded (never prompts or secrets unless asked),
read newest first through ``GET /v1/spaces/{space_id}/audit`` by admin keys only, with cursor pagination, on
the in-memory store and on Redis."""

import asyncio
import json
import re
import uuid
from typing import Any

import httpx2
import pytest

from tests.conftest import ADMIN_KEY, FOREIGN_SPACE, MEMBER_KEY, MODEL_IDS, OTHER_KEY, RESTRICTED, SPACE, catalogue
from tests.servers import wait_for

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
CARD = "4111 1111 1111 1111"


def audited(upstream_url: str, upstream_model: str = "ok", **audit: Any) -> dict[str, Any]:
    cat = catalogue(upstream_url, upstream_model)
    cat["tenants"][0]["policies"] = [
        {"use": "audit", **audit},
        {"use": "allow_list"},
        {"use": "guardrails", "input": {"card": "reject"}, "output": {"email": "reject"}},
    ]
    return cat


def audit_log(base: str, space: str = SPACE, key: str = ADMIN_KEY, prefix: str = "", **query: Any) -> httpx2.Response:
    return httpx2.get(
        f"{base}{prefix}/v1/spaces/{space}/audit", headers={"Authorization": f"Bearer {key}"}, params=query
    )


def settled(base: str, count: int, **query: Any) -> httpx2.Response:
    """The audit page once it holds ``count`` entries (``after`` hooks run once the answer has been sent)."""
    return wait_for(lambda: audit_log(base, **query), lambda r: len(r.json().get("data", [])) >= count)


def chat(base: str, content: str, model: str = "fake-echo", stream: bool = False, **headers: str) -> httpx2.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream}
    return httpx2.post(base + "/v1/chat/completions", headers={**AUTH, **headers}, json=body)


def test_allowed_model_changes_are_recorded_once(start_gateway, upstream):
    base = start_gateway(catalogue(upstream[1]))
    models = f"{base}/v1/spaces/{SPACE}/models"
    add = {"tenant_model_id": MODEL_IDS["extra"]}
    assert httpx2.post(models, headers={**AUTH, "Idempotency-Key": "a-1"}, json=add).status_code == 201
    assert httpx2.post(models, headers={**AUTH, "Idempotency-Key": "a-1"}, json=add).status_code == 201  # replay
    assert httpx2.delete(f"{models}/{MODEL_IDS['extra']}", headers=AUTH).status_code == 204
    r = audit_log(base)
    assert r.status_code == 200 and r.json()["meta"] == {"next_cursor": None, "has_more": False}
    removed, added = r.json()["data"]
    assert [removed["action"], added["action"]] == ["allowed_models.remove", "allowed_models.add"]
    for entry in (removed, added):
        assert entry["kind"] == "admin_change" and ISO.match(entry["at"])
        assert entry["principal"] == "alice" and entry["key"] == "admin" and entry["space_id"] == SPACE
        assert entry["model"] == "extra" and entry["tenant_model_id"] == MODEL_IDS["extra"]
    assert added["route"] == "spaces.models.create" and removed["route"] == "spaces.models.delete"
    assert ADMIN_KEY not in r.text


def test_denials_are_recorded_without_prompts_or_secrets(start_gateway, upstream):
    base = start_gateway(audited(upstream[1], "pieces-3"))
    assert chat(base, "fine").status_code == 200  # not recorded
    assert chat(base, "my private words", model="extra", **{"x-request-id": "req-1"}).status_code == 403
    settled(base, 1)  # one at a time, so that the order is known
    assert chat(base, f"my card {CARD}", **{"x-request-id": "req-2"}).status_code == 403
    settled(base, 2)
    r = chat(base, "write to ann@example.com please", model="up", stream=True, **{"x-request-id": "req-3"})
    assert r.status_code == 200 and "guardrail_rejected" in r.text  # stopped mid-stream
    r = settled(base, 3)
    stream, card, model = r.json()["data"]
    assert [e["request_id"] for e in (stream, card, model)] == ["req-3", "req-2", "req-1"]
    assert model["error"]["code"] == "model_not_allowed" and model["status"] == 403 and model["model"] == "extra"
    assert card["error"] == {
        "code": "guardrail_rejected",
        "message": "The request was rejected by a guardrail: the input contains a card number.",
    }
    assert stream["error"]["code"] == "guardrail_rejected" and stream["model"] == "up"
    for entry in (stream, card, model):
        assert entry["kind"] == "policy_denial" and entry["action"] == "request.rejected"
        assert entry["principal"] == "alice" and entry["key"] == "admin" and entry["route"] == "chat.completions"
        assert "request" not in entry
    for secret in ("private words", "4111", "ann@", ADMIN_KEY):
        assert secret not in r.text


@pytest.mark.parametrize("route", ["chat", "responses"])
def test_a_stream_stopped_by_a_guardrail_is_audited_even_when_the_client_leaves_first(start_gateway, upstream, route):
    """The upstream never ends this stream, so the gateway learns the caller left (it read the guardrail's last
    event) while still relaying: the request stays a rejection, and the audit records it."""
    base = start_gateway(audited(upstream[1], "echo-stall"))
    text = "write to ann@example.com please"
    if route == "chat":
        r = chat(base, text, model="up", stream=True)
    else:
        body = {"model": "up", "input": text, "stream": True}
        r = httpx2.post(base + "/v1/responses", headers=AUTH, json=body)
    assert r.status_code == 200 and "guardrail_rejected" in r.text
    entries = settled(base, 1).json()["data"]
    assert [(e["action"], e["error"]["code"]) for e in entries] == [("request.rejected", "guardrail_rejected")]


def test_prompts_only_when_asked(start_gateway, upstream):
    base = start_gateway(audited(upstream[1], include_prompts=True))
    chat(base, "my private words", model="extra")
    entry = settled(base, 1).json()["data"][0]
    assert entry["request"] == {"messages": [{"role": "user", "content": "my private words"}]}


def test_admin_keys_only(start_gateway, upstream):
    base = start_gateway(catalogue(upstream[1]))
    assert audit_log(base, RESTRICTED, MEMBER_KEY).status_code == 403
    assert httpx2.get(f"{base}/v1/spaces/{SPACE}/audit").status_code == 401
    assert audit_log(base, FOREIGN_SPACE).status_code == 404  # another tenant's space does not exist here
    assert audit_log(base, SPACE, OTHER_KEY).status_code == 404
    assert audit_log(base, "not-a-uuid").status_code == 422
    r = audit_log(base, prefix="/api-proxy")
    assert r.status_code == 200 and r.json() == {"data": [], "meta": {"next_cursor": None, "has_more": False}}


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_pages_newest_first_with_a_cursor(start_gateway, upstream, redis_url, redis_prefix, store):
    settings = (
        {"redis_url": redis_url, "redis_prefix": redis_prefix + uuid.uuid4().hex + ":"} if store == "redis" else {}
    )
    base = start_gateway(audited(upstream[1]), **settings)
    for i in range(5):
        assert chat(base, "x", model="extra", **{"x-request-id": f"r{i}"}).status_code == 403
        settled(base, i + 1)
    seen, cursor, pages = [], None, []
    while True:
        r = audit_log(base, limit=2, **({"cursor": cursor} if cursor else {}))
        assert r.status_code == 200
        page = r.json()
        seen += [e["request_id"] for e in page["data"]]
        pages.append((len(page["data"]), page["meta"]["has_more"]))
        cursor = page["meta"]["next_cursor"]
        if cursor is None:
            break
    assert seen == ["r4", "r3", "r2", "r1", "r0"]
    assert pages == [(2, True), (2, True), (1, False)]
    assert audit_log(base, limit=0).status_code == 422
    r = audit_log(base, cursor="nonsense")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "cursor"]


def test_entries_are_json_lines_in_the_store(start_gateway, upstream):
    """The log is append-only in the store, one JSON object per entry, under the tenant and space."""
    base = start_gateway(audited(upstream[1]))
    chat(base, "x", model="extra")
    settled(base, 1)
    tenant = catalogue(upstream[1])["tenants"][0]["id"]
    raw = asyncio.run(base.app.state.gateway.store.read_log(f"audit:{tenant}:{SPACE}"))  # the in-memory store
    assert [json.loads(e)["action"] for e in raw] == ["request.rejected"]
