"""The deployment's own key never comes back from its upstream: an upstream error that echoes the key it was
sent (providers do, in "invalid key" messages) reaches the caller, and the store, with the key redacted, on Chat
Completions (whole and streamed) and on Responses (whole, streamed, and the stored event log replayed)."""

import uuid

import httpx
import orjson
import pytest
import redis

from gateway.errors import redact_secret_bytes
from gateway.upstream import error_from_status
from tests.conftest import ADMIN_KEY, catalogue

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
SECRET = "sk-upstream-" + "k3y" * 12
ENV = "TEST_REDACTED_UPSTREAM_KEY"


@pytest.fixture(autouse=True)
def _deployment_key(monkeypatch):
    monkeypatch.setenv(ENV, SECRET)


def leaking(upstream_url: str, api: str = "chat") -> dict:
    cat = catalogue(upstream_url, "leak-key", api_key_env=ENV, api=api)
    cat["tenants"][0]["models"][0]["routing"] = {"retries": 0}
    return cat


def events(text: str) -> list[dict]:
    """The JSON data of each SSE event."""
    out = []
    for frame in text.split("\n\n"):
        data = [line[5:].strip() for line in frame.split("\n") if line.startswith("data:")]
        if data and data[0] != "[DONE]":
            out.append(orjson.loads("\n".join(data)))
    return out


def test_a_chat_answer_carrying_an_error_has_the_key_redacted(start_gateway, upstream):
    base = start_gateway(leaking(upstream[1]))
    r = httpx.post(
        base + "/v1/chat/completions",
        headers=AUTH,
        json={"model": "up", "messages": [{"role": "user", "content": "x"}]},
    )
    assert SECRET not in r.text
    assert r.json()["error"]["message"] == "Incorrect API key provided: Bearer ***"


def test_a_chat_stream_error_event_has_the_key_redacted(start_gateway, upstream):
    base = start_gateway(leaking(upstream[1]))
    body = {"model": "up", "messages": [{"role": "user", "content": "x"}], "stream": True}
    with httpx.stream("POST", base + "/v1/chat/completions", headers=AUTH, json=body) as r:
        text = r.read().decode()
    assert r.status_code == 200 and SECRET not in text
    relayed = events(text)
    assert relayed[0]["choices"][0]["delta"]["content"] == "one "  # content before the error passes untouched
    assert relayed[1]["error"]["message"] == "Incorrect API key provided: Bearer ***"
    assert "[DONE]" not in text


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_a_failed_responses_stream_and_its_stored_log_have_the_key_redacted(
    start_gateway, upstream, redis_url, redis_prefix, api
):
    prefix = redis_prefix + uuid.uuid4().hex + ":"
    base = start_gateway(leaking(upstream[1], api), redis_url=redis_url, redis_prefix=prefix)
    with httpx.stream(
        "POST", base + "/v1/responses", headers=AUTH, json={"model": "up", "input": "x", "stream": True}
    ) as r:
        text = r.read().decode()
    assert r.status_code == 200 and SECRET not in text
    failed = events(text)[-1]
    assert failed["type"] == "response.failed"
    assert failed["response"]["error"]["message"] == "Incorrect API key provided: Bearer ***"
    response_id = failed["response"]["id"]

    replayed = httpx.get(f"{base}/v1/responses/{response_id}", headers=AUTH, params={"stream": "true"})
    assert replayed.status_code == 200 and replayed.text == text  # the stored event log, as streamed
    stored = httpx.get(f"{base}/v1/responses/{response_id}", headers=AUTH).json()
    assert stored["status"] == "failed" and stored["error"]["message"].endswith("Bearer ***")
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        assert keys  # the response and its event log are there, and nothing of them holds the key
        for key in keys:
            kind = client.type(key)
            if kind == b"string":
                values = [client.get(key) or b""]
            elif kind == b"list":
                values = client.lrange(key, 0, -1)
            elif kind == b"hash":
                values = list(client.hgetall(key).values())
            else:
                values = []
            assert not any(SECRET.encode() in v for v in values), key
    finally:
        client.close()


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_a_failed_whole_response_has_the_key_redacted(start_gateway, upstream, api):
    base = start_gateway(leaking(upstream[1], api))
    r = httpx.post(base + "/v1/responses", headers=AUTH, json={"model": "up", "input": "x"})
    assert SECRET not in r.text
    if api == "responses":  # the upstream's failed response is relayed as failed, without the key
        assert r.json()["error"]["message"] == "Incorrect API key provided: Bearer ***"


def test_a_long_error_message_is_redacted_before_it_is_cut():
    body = orjson.dumps({"error": {"message": "x" * 290 + " " + SECRET}})
    err = error_from_status(401, body, secret=SECRET)
    assert SECRET[:5] not in err.message and err.message.endswith("***")


@pytest.mark.parametrize("secret", ['k"ey\\1', "key/é"])
def test_a_key_is_redacted_as_json_escapes_it_too(secret):
    raw = orjson.dumps({"error": {"message": f"bad key {secret}"}})
    assert orjson.loads(redact_secret_bytes(raw, secret))["error"]["message"] == "bad key ***"
