"""Executions on Redis: the queue survives a restart, a worker process killed mid-execution has its execution
taken over and finished, and several workers never run one execution twice."""

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
import yaml

from tests.fakes.scripted import _completion, _send
from tests.fakes.upstream import read_json
from tests.servers import kill_if_running, serve, wait_for
from tests.skills_helpers import AUTH, BASE, ECHO_SKILL, ended, execution, skill, skills_catalogue, start_execution

BOUND = 60.0
FAST = {"heartbeat_seconds": 0.3, "executions_claim_idle_seconds": 1.0}  # a dead worker is noticed within ~1 s


class Hold:
    """An upstream whose first ``hold`` requests hang until their client goes away; the others answer with
    the inputs document (the conversation's user message) as the model's text. Counts requests per input."""

    def __init__(self, hold: int = 0) -> None:
        self.hold = hold
        self.seen: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_json(receive)
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        self.seen.append(user)
        if len(self.seen) <= self.hold:
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        await _send(send, 200, b"application/json", orjson.dumps(_completion(user)))


@pytest.fixture
def hold() -> Iterator[tuple[Hold, str]]:
    fake = Hold()
    with serve(fake, lifespan=False) as url:
        yield fake, url


def _prefix(redis_prefix: str) -> str:
    return redis_prefix + uuid.uuid4().hex[:8] + ":"


def _redis(redis_url: str, prefix: str, **settings: Any) -> dict[str, Any]:
    return {"redis_url": redis_url, "redis_prefix": prefix, **settings}


def _worker_process(cat: dict[str, Any], folder: Path, redis_url: str, prefix: str) -> subprocess.Popen[bytes]:
    """``python -m gateway worker`` on the catalogue, once it proved alive (its liveness key in Redis)."""
    config = folder / f"worker-{uuid.uuid4().hex[:8]}.yaml"
    config.write_text(yaml.safe_dump(cat))
    env = {
        **os.environ,
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_REDIS_PREFIX": prefix,
        "GATEWAY_HEARTBEAT_SECONDS": str(FAST["heartbeat_seconds"]),
        "GATEWAY_EXECUTIONS_CLAIM_IDLE_SECONDS": str(FAST["executions_claim_idle_seconds"]),
    }
    before = _instances(redis_url, prefix)
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "worker", "--config", str(config)], env=env)
    alive = wait_for(lambda: _instances(redis_url, prefix) - before, bool, BOUND)
    if not alive:
        kill_if_running(proc)
        raise RuntimeError("the worker process did not start")
    return proc


def _instances(redis_url: str, prefix: str) -> set[bytes]:
    client = redis.Redis.from_url(redis_url)
    try:
        return set(client.scan_iter(match=f"{prefix}instance:*"))
    finally:
        client.close()


def test_a_queued_execution_waits_for_a_worker_and_survives_the_process_that_queued_it(
    start_gateway, upstream, redis_url, redis_prefix
):
    prefix = _prefix(redis_prefix)
    cat = skills_catalogue(upstream[1], [ECHO_SKILL])
    stopped = start_gateway(cat, **_redis(redis_url, prefix, executions_worker=False))
    queued = start_execution(stopped, "echo", {"inputs": {"text": "later"}}).json()["data"]
    assert execution(stopped, queued["id"])["state"] == "queued"
    again = start_gateway(cat, **_redis(redis_url, prefix))  # another process would do the same
    done = ended(again, queued["id"])
    assert (done["state"], done["outputs"]) == ("succeeded", {"text": "later"})


def test_a_worker_process_killed_mid_execution_is_taken_over_and_the_execution_finished(
    start_gateway, hold, redis_url, redis_prefix, tmp_path
):
    fake, url = hold
    fake.hold = 1  # the first model turn hangs: the worker is killed under it
    prefix = _prefix(redis_prefix)
    cat = skills_catalogue(url, [skill(model="up")])
    api = start_gateway(cat, **_redis(redis_url, prefix, executions_worker=False, **FAST))
    first = _worker_process(cat, tmp_path, redis_url, prefix)
    second = None
    try:
        created = start_execution(api, "echo", {"inputs": {"text": "survivor"}}).json()["data"]
        assert wait_for(lambda: len(fake.seen), lambda n: n == 1, BOUND) == 1  # running, in the first worker
        assert execution(api, created["id"])["state"] == "running"
        os.kill(first.pid, signal.SIGKILL)
        first.wait(BOUND)
        second = _worker_process(cat, tmp_path, redis_url, prefix)
        done = ended(api, created["id"], BOUND)
        assert (done["state"], done["outputs"]) == ("succeeded", {"text": "survivor"}), done
        events = httpx.get(f"{api}{BASE}/executions/{created['id']}/events", headers=AUTH, timeout=BOUND).text
        assert '"attempt":1' in events and '"attempt":2' in events
        assert len(fake.seen) == 2
    finally:
        kill_if_running(first)
        if second is not None:
            second.terminate()
            second.wait(BOUND)


def test_an_execution_whose_worker_died_too_often_fails_as_lost(start_gateway, hold, redis_url, redis_prefix, tmp_path):
    fake, url = hold
    fake.hold = 10
    prefix = _prefix(redis_prefix)
    cat = skills_catalogue(url, [skill(model="up")])
    api = start_gateway(cat, **_redis(redis_url, prefix, executions_worker=False, executions_max_attempts=1, **FAST))
    worker = _worker_process(cat, tmp_path, redis_url, prefix)
    try:
        created = start_execution(api, "echo", {"inputs": {"text": "x"}}).json()["data"]
        assert wait_for(lambda: len(fake.seen), lambda n: n == 1, BOUND) == 1
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(BOUND)
    finally:
        kill_if_running(worker)
    taker = start_gateway(cat, **_redis(redis_url, prefix, executions_max_attempts=1, **FAST))
    done = ended(taker, created["id"], BOUND)
    assert (done["state"], done["failure_reason"]) == ("failed", "worker_lost")
    assert len(fake.seen) == 1


def test_two_workers_never_run_one_execution_twice(start_gateway, hold, redis_url, redis_prefix):
    fake, url = hold
    prefix = _prefix(redis_prefix)
    cat = skills_catalogue(url, [skill(model="up")])
    # claims every half second: each worker keeps looking at the other's pending entries while they run
    settings = _redis(redis_url, prefix, heartbeat_seconds=0.3, executions_claim_idle_seconds=0.2)
    one, two = start_gateway(cat, **settings), start_gateway(cat, **settings)
    ids = [
        start_execution((one, two)[i % 2], "echo", {"inputs": {"text": f"n{i}"}}).json()["data"]["id"]
        for i in range(30)
    ]
    states = [ended(one, i, BOUND)["state"] for i in ids]
    assert states == ["succeeded"] * 30
    assert sorted(fake.seen) == sorted(f'{{"text":"n{i}"}}' for i in range(30))  # one model turn each
    assert {_running_events(one, i) for i in ids} == {1}


def _running_events(base: str, execution_id: str) -> int:
    text = httpx.get(f"{base}{BASE}/executions/{execution_id}/events", headers=AUTH, timeout=BOUND).text
    return text.count("event: execution.running")


def test_a_live_worker_keeps_its_execution_while_others_claim_its_entry(start_gateway, hold, redis_url, redis_prefix):
    fake, url = hold
    fake.hold = 1
    prefix = _prefix(redis_prefix)
    cat = skills_catalogue(url, [skill(model="up")])
    settings = _redis(redis_url, prefix, heartbeat_seconds=0.3, executions_claim_idle_seconds=0.2)
    one = start_gateway(cat, **settings)
    created = start_execution(one, "echo", {"inputs": {"text": "mine"}}).json()["data"]
    assert wait_for(lambda: len(fake.seen), lambda n: n == 1, BOUND) == 1
    two = start_gateway(cat, **settings)
    gw_two = two.app.state.gateway
    claims = wait_for(lambda: _pending_owner(redis_url, prefix), lambda owner: owner == gw_two.jobs.instance.encode())
    assert claims == gw_two.jobs.instance.encode()  # the second worker has claimed the entry: and left it running
    assert len(fake.seen) == 1
    cancel = httpx.post(f"{one}{BASE}/executions/{created['id']}/cancel", headers=AUTH, timeout=BOUND)
    assert cancel.json()["data"]["state"] == "cancelled"
    assert len(fake.seen) == 1


def _pending_owner(redis_url: str, prefix: str) -> bytes | None:
    client = redis.Redis.from_url(redis_url)
    try:
        pending = client.xpending_range(f"{prefix}executions:queue", "workers", "-", "+", 10)
    finally:
        client.close()
    return pending[0]["consumer"] if pending else None


def test_a_worker_process_needs_redis_and_exits_0_at_sigterm(upstream, redis_url, redis_prefix, tmp_path):
    cat = skills_catalogue(upstream[1], [ECHO_SKILL])
    config = tmp_path / "worker.yaml"
    config.write_text(yaml.safe_dump(cat))
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_REDIS_URL"}
    command = [sys.executable, "-m", "gateway", "worker", "--config", str(config)]
    refused = subprocess.run(command, env=env, capture_output=True, timeout=BOUND)
    assert refused.returncode == 2
    assert b"needs the shared store" in refused.stderr
    worker = _worker_process(cat, tmp_path, redis_url, _prefix(redis_prefix))
    try:
        worker.terminate()
        assert worker.wait(BOUND) == 0
    finally:
        kill_if_running(worker)


def test_a_cancel_through_another_replica_reaches_the_worker_running_the_execution(
    start_gateway, hold, redis_url, redis_prefix
):
    fake, url = hold
    fake.hold = 1
    prefix = _prefix(redis_prefix)
    cat = skills_catalogue(url, [skill(model="up")])
    api = start_gateway(cat, **_redis(redis_url, prefix, executions_worker=False))
    start_gateway(cat, **_redis(redis_url, prefix))  # the only worker
    created = start_execution(api, "echo", {"inputs": {"text": "stop"}}).json()["data"]
    assert wait_for(lambda: len(fake.seen), lambda n: n == 1, BOUND) == 1
    cancel = httpx.post(f"{api}{BASE}/executions/{created['id']}/cancel", headers=AUTH, timeout=BOUND)
    assert cancel.status_code == 202
    assert cancel.json()["data"]["state"] == "cancelled"
    assert execution(api, created["id"])["failure_reason"] == "cancelled"
