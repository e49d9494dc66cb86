"""Chat Completions through the gateway, driven by the official openai SDK against a loopback upstream."""

import socket

import httpx2
import openai
import pytest

from tests.conftest import ADMIN_KEY, MEMBER_KEY, RESTRICTED, catalogue
from tests.servers import wait_for


def client(base: str, key: str = ADMIN_KEY, **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=10, **kw)  # type: ignore[arg-type]


MESSAGES = [{"role": "user", "content": "hello there"}]


def test_plain_completion_comes_from_the_upstream(gateway, upstream):
    fake, _ = upstream
    before = len(fake.requests)
    answer = client(gateway).chat.completions.create(model="up", messages=MESSAGES)
    assert answer.choices[0].message.content == "hi from upstream"
    assert answer.usage.total_tokens == 8
    sent = fake.requests[before]
    assert sent["model"] == "ok"  # the alias became the deployment's upstream model name
    assert sent["messages"] == MESSAGES


def test_stream_relays_every_chunk_and_hides_the_usage_chunk_unless_asked(gateway, upstream):
    fake, _ = upstream
    chunks = list(client(gateway).chat.completions.create(model="up", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two three"
    assert all(c.choices for c in chunks)  # no usage-only chunk: the caller did not ask for it
    assert fake.requests[-1]["stream_options"] == {"include_usage": True}  # but the gateway always asks


def test_stream_forwards_usage_when_asked(gateway):
    chunks = list(
        client(gateway).chat.completions.create(
            model="up", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 8


def test_fake_provider_echo_stream_and_tool_call(gateway):
    c = client(gateway)
    assert c.chat.completions.create(model="fake-echo", messages=MESSAGES).choices[0].message.content == "hello there"
    streamed = c.chat.completions.create(model="fake-echo", messages=MESSAGES, stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in streamed) == "hello there"


def test_models_list_is_exactly_the_space_allow_list(gateway):
    assert [m.id for m in client(gateway).models.list()] == ["up", "fake-echo", "fake-slow", "fake-tool"]
    assert [m.id for m in client(gateway, project=RESTRICTED).models.list()] == ["fake-echo"]
    assert client(gateway).models.retrieve("up").id == "up"


def test_model_outside_the_allow_list_is_refused_and_never_reaches_the_upstream(gateway, upstream):
    fake, _ = upstream
    before = len(fake.requests)
    with pytest.raises(openai.PermissionDeniedError) as err:
        client(gateway, project=RESTRICTED).chat.completions.create(model="up", messages=MESSAGES)
    assert "Allowed models: fake-echo" in err.value.message
    assert err.value.body["code"] == "model_not_allowed"
    with pytest.raises(openai.PermissionDeniedError):
        client(gateway).chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert len(fake.requests) == before


def test_missing_model_uses_the_space_default(gateway):
    r = httpx2.post(
        gateway + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        json={"messages": MESSAGES},
    )
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "hello there"


def test_space_chosen_by_header_or_key_default(gateway):
    # the member key's default space is the restricted one; naming another space it may not use is 403
    assert [m.id for m in client(gateway, MEMBER_KEY).models.list()] == ["fake-echo"]
    r = httpx2.get(
        gateway + "/v1/models",
        headers={
            "Authorization": f"Bearer {MEMBER_KEY}",
            "X-Space-Id": "c05bf97d-8571-4526-8ad9-fe3f1c896d0b",
        },
    )
    assert r.status_code == 403
    r = httpx2.get(
        gateway + "/v1/models",
        headers={
            "Authorization": f"Bearer {ADMIN_KEY}",
            "OpenAI-Project": "9d2c7c9e-3f0a-4a55-bb1e-61e4f5a0c001",
        },
    )
    assert r.status_code == 404  # another tenant's space does not exist for this key


@pytest.mark.parametrize(
    ("upstream_model", "status", "exc"),
    [
        ("status-400", 400, openai.BadRequestError),
        ("status-429", 429, openai.RateLimitError),
        ("status-500", 502, openai.InternalServerError),
        ("status-503", 503, openai.InternalServerError),
        ("text-503", 503, openai.InternalServerError),
        ("malformed", 502, openai.InternalServerError),
        ("echo-auth", 502, openai.InternalServerError),
    ],
)
def test_upstream_failures_map_to_clear_statuses(start_gateway, upstream, upstream_model, status, exc):
    base = start_gateway(catalogue(upstream[1], upstream_model, api_key_env="TEST_UPSTREAM_SECRET"))
    with pytest.raises(exc) as err:
        client(base).chat.completions.create(model="up", messages=MESSAGES)
    assert err.value.status_code == status
    assert "sk-upstream-secret" not in str(err.value.body)
    if upstream_model == "status-429":
        assert err.value.response.headers["retry-after"] == "7"


@pytest.fixture(autouse=True)
def _upstream_secret(monkeypatch):
    monkeypatch.setenv("TEST_UPSTREAM_SECRET", "sk-upstream-secret")


def test_upstream_set_cookie_never_reaches_the_caller(gateway):
    r = httpx2.post(
        gateway + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        json={"model": "up", "messages": MESSAGES},
    )
    assert r.status_code == 200 and "set-cookie" not in r.headers


def test_unreachable_upstream_is_503(start_gateway):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    base = start_gateway(catalogue(dead))
    with pytest.raises(openai.InternalServerError) as err:
        client(base).chat.completions.create(model="up", messages=MESSAGES)
    assert err.value.status_code == 503


def test_upstream_silence_is_504(start_gateway, upstream):
    base = start_gateway(catalogue(upstream[1], "hang"), upstream_read_timeout=0.5)
    with pytest.raises(openai.APIStatusError) as err:
        client(base).chat.completions.create(model="up", messages=MESSAGES)
    assert err.value.status_code == 504


def test_stream_cut_by_the_upstream_ends_with_an_error_event_and_no_done(start_gateway, upstream):
    base = start_gateway(catalogue(upstream[1], "cut"))
    r = httpx2.post(
        base + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        json={"model": "up", "messages": MESSAGES, "stream": True},
    )
    assert r.status_code == 200
    assert "[DONE]" not in r.text
    assert r.text.rstrip().endswith('"code":"upstream_stream_cut"}}')
    with pytest.raises(openai.APIError):
        list(client(base).chat.completions.create(model="up", messages=MESSAGES, stream=True))


def test_stream_error_before_first_byte_is_a_normal_error(start_gateway, upstream):
    base = start_gateway(catalogue(upstream[1], "status-429"))
    with pytest.raises(openai.RateLimitError):
        client(base).chat.completions.create(model="up", messages=MESSAGES, stream=True)


def test_client_disconnect_cancels_the_upstream_request(start_gateway, upstream):
    fake, url = upstream
    base = start_gateway(catalogue(url, "stall"))
    before = fake.disconnects
    with httpx2.stream(
        "POST",
        base + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        json={"model": "up", "messages": MESSAGES, "stream": True},
    ) as r:
        first = next(r.iter_bytes())
        assert b"first" in first
    assert wait_for(lambda: fake.disconnects, lambda n: n > before) == before + 1
