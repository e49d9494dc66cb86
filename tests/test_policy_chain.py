"""The policy chain: a third-party policy loaded from config, run symmetrically on every exit path."""

import uuid

import httpx2
import pytest
import redis

from config.catalog import PolicySpec
from gateway.policy import PolicyChain, PolicyConfigError, load_policy
from tests.conftest import ADMIN_KEY, catalogue
from tests.servers import wait_for

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def recorded(start_gateway, upstream, redis_url, redis_prefix):
    """A gateway on Redis whose chain is recorder → allow_list → deny_word → canned; returns (url, read_log)."""

    def start(upstream_model: str = "ok") -> tuple[str, callable]:
        prefix = redis_prefix + uuid.uuid4().hex + ":"
        cat = catalogue(upstream[1], upstream_model)
        cat["tenants"][0]["policies"] = [
            {"use": "tests.plugins.recorder:Recorder", "log": "policy-log"},
            {"use": "allow_list"},
            {"use": "tests.plugins.recorder:DenyWord", "word": "forbidden"},
            {"use": "tests.plugins.recorder:Canned"},
        ]
        base = start_gateway(cat, redis_url=redis_url, redis_prefix=prefix)
        client = redis.Redis.from_url(redis_url)

        def read_log() -> list[str]:
            base.idle()  # the after phase runs once the answer is out: wait for it, never race it
            return [e.decode() for e in client.lrange(prefix + "policy-log", 0, -1)]

        return base, read_log

    return start


def chat(base: str, content: str = "hi", stream: bool = False, **headers: str) -> httpx2.Response:
    return httpx2.post(
        base + "/v1/chat/completions",
        headers={**AUTH, **headers},
        json={"model": "up", "messages": [{"role": "user", "content": content}], "stream": stream},
    )


def test_after_sees_success_with_usage_for_plain_and_streamed_requests(recorded):
    base, log = recorded()
    assert chat(base).status_code == 200
    assert chat(base, stream=True).status_code == 200
    done = "after:ok:3:recorder,allow_list,deny_word,canned"
    assert log() == ["before", done, "before", done]


def test_after_runs_when_a_later_policy_rejects(recorded):
    base, log = recorded()
    r = chat(base, "forbidden words")
    assert r.status_code == 403 and r.json()["error"]["code"] == "denied"
    assert log() == ["before", "after:rejected:None:recorder,allow_list"]


def test_after_runs_on_upstream_errors(recorded):
    base, log = recorded("status-500")
    assert chat(base).status_code == 502
    assert log() == ["before", "after:upstream_error:None:recorder,allow_list,deny_word,canned"]


def test_a_policy_can_answer_without_the_upstream(recorded, upstream):
    base, log = recorded()
    before = len(upstream[0].requests)
    r = chat(base, **{"x-canned": "1"})
    assert r.json() == {"canned": True}
    assert len(upstream[0].requests) == before
    assert log() == ["before", "after:replayed:None:recorder,allow_list,deny_word,canned"]


def test_after_runs_when_the_client_disconnects_mid_stream(recorded):
    base, log = recorded("stall")
    with httpx2.stream(
        "POST",
        base + "/v1/chat/completions",
        headers=AUTH,
        json={"model": "up", "messages": [{"role": "user", "content": "x"}], "stream": True},
    ) as r:
        next(r.iter_bytes())
    assert wait_for(log, lambda entries: len(entries) >= 2) == [
        "before",
        "after:disconnected:None:recorder,allow_list,deny_word,canned",
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"use": "no_such_policy"}, "unknown policy 'no_such_policy': use a built-in \\(allow_list, audit"),
        ({"use": "tests.plugins.missing:X"}, 'Could not import module "tests.plugins.missing"'),
        ({"use": "tests.plugins.recorder:Nope"}, 'Attribute "Nope" not found'),
        ({"use": "tests.conftest:catalogue"}, "is not a gateway.Policy subclass"),
        ({"use": "tests.plugins.recorder:Recorder"}, "invalid params: log: Field required"),
    ],
)
def test_policy_loading_errors_are_precise(spec, message):
    with pytest.raises(PolicyConfigError, match=message):
        load_policy(PolicySpec(**spec))


LIMITS = {"limits": [{"scope": "space", "period": "day", "usd": "1"}]}


@pytest.mark.parametrize(
    ("specs", "fails_open"),
    [
        ([{"use": "allow_list"}], False),  # nothing says open
        ([{"use": "allow_list"}, {"use": "rate_limit"}], True),  # rate_limit fails open by default
        ([{"use": "allow_list"}, {"use": "rate_limit"}, {"use": "budget", **LIMITS}], False),  # budget: closed
        ([{"use": "allow_list"}, {"use": "budget", "on_store_error": "open", **LIMITS}, {"use": "cost"}], True),
        ([{"use": "allow_list", "on_store_error": "open"}], True),
        ([{"use": "allow_list", "on_store_error": "closed"}, {"use": "rate_limit"}], False),
    ],
)
def test_the_chain_fails_open_when_a_policy_says_open_and_none_says_closed(specs, fails_open):
    assert PolicyChain([load_policy(PolicySpec(**spec)) for spec in specs]).fails_open is fails_open


@pytest.mark.parametrize("on_redis", [False, True], ids=["memory", "redis"])
def test_a_third_party_store_step_is_batched_and_halts_the_policies_after_it(
    start_gateway, upstream, redis_url, redis_prefix, on_redis
):
    prefix = redis_prefix + uuid.uuid4().hex + ":"
    cat = catalogue(upstream[1])
    cat["tenants"][0]["policies"] = [
        {"use": "tests.plugins.recorder:Recorder", "log": "policy-log"},
        {"use": "tests.plugins.recorder:DailyQuota", "requests": 2},
        {"use": "allow_list"},
    ]
    store = {"redis_url": redis_url, "redis_prefix": prefix} if on_redis else {}
    base = start_gateway(cat, **store)
    assert [chat(base).status_code for _ in range(2)] == [200, 200]
    refused = chat(base)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "quota_exceeded"
    if on_redis:
        base.idle()  # the after phase runs once the answer is out
        entries = redis.Redis.from_url(redis_url).lrange(prefix + "policy-log", 0, -1)
        # the quota's step halted: it and allow_list after it count as not having run
        assert entries[-1].decode() == "after:rejected:None:recorder"
        assert entries[-3].decode() == "after:ok:3:recorder,daily_quota,allow_list"
