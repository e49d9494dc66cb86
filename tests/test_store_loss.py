"""A store that goes away, or comes back empty: a real redis-server stopped (by PID) under load and started again
empty on the same port, and a flush of a live one. The catalogue's state comes back by itself, /readyz tells
the truth meanwhile, and ``on_store_error`` decides what happens while the store is down."""

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import httpx2
import pytest
import redis

from tests.agents_helpers import agents_catalogue
from tests.conftest import ADMIN_KEY, FOREIGN_SPACE, MODEL_IDS, RESTRICTED, SPACE, catalogue
from tests.servers import free_port, redis_process

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
CHAT = "/v1/chat/completions"
PREFIX = "loss:"
MAIN_YAML = ["up", "fake-echo", "fake-slow", "fake-tool"]  # the main space's models in the test catalogue


def chain(mode: str) -> list[dict[str, Any]]:
    """Every policy that needs the store, each with ``on_store_error: mode`` (allow_list follows the chain)."""
    return [
        {"use": "idempotency", "on_store_error": mode},
        {"use": "allow_list"},
        {"use": "rate_limit", "space": {"requests_per_minute": 1_000_000}, "on_store_error": mode},
        {"use": "budget", "limits": [{"scope": "space", "period": "day", "usd": "1000"}], "on_store_error": mode},
        {"use": "cost"},
    ]


def store_catalogue(upstream_url: str, mode: str) -> dict[str, Any]:
    cat = catalogue(upstream_url)
    cat["tenants"][0]["models"][0]["routing"] = {"retries": 0}
    cat["tenants"][0]["policies"] = chain(mode)
    return cat


def wait_until(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        time.sleep(0.02)


def ready(base: str) -> int:
    return httpx2.get(base + "/readyz", timeout=15).status_code


def chat(base: str, model: str = "up", space: str | None = None) -> httpx2.Response:
    headers = {**AUTH, "Idempotency-Key": uuid.uuid4().hex, **({"x-space-id": space} if space else {})}
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return httpx2.post(base + CHAT, headers=headers, json=body, timeout=15)


def code(r: httpx2.Response) -> str | None:
    return None if r.status_code == 200 else r.json()["error"]["code"]


def remove(base: str, space: str, model: str) -> int:
    return httpx2.delete(f"{base}/v1/spaces/{space}/models/{MODEL_IDS[model]}", headers=AUTH, timeout=15).status_code


def markers(client: redis.Redis, *spaces: str) -> list[bool]:
    return [bool(client.exists(f"{PREFIX}space:{space}:seeded")) for space in spaces]


class Load:
    """Threads sending chat requests until stopped (and for ``seconds`` at most). Each answer is recorded with
    the phase the test was in when the request started and when it ended; only requests that began and ended
    in one phase are judged."""

    def __init__(self, base: str, threads: int = 3, seconds: float = 120.0) -> None:
        self.base = base
        self.phase = "up"
        self.results: list[tuple[str, str, int, str | None]] = []
        self._stop = threading.Event()
        self._deadline = time.monotonic() + seconds
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self) -> None:
        body = {"model": "up", "messages": [{"role": "user", "content": "hi"}]}
        with httpx2.Client(timeout=15) as client:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                began = self.phase
                try:
                    r = client.post(self.base + CHAT, headers={**AUTH, "Idempotency-Key": uuid.uuid4().hex}, json=body)
                    answer: tuple[int, str | None] = (r.status_code, code(r))
                except httpx2.TransportError as exc:
                    answer = (0, type(exc).__name__)
                self.results.append((began, self.phase, *answer))

    def answers(self, phase: str) -> list[tuple[int, str | None]]:
        return [(status, c) for began, ended, status, c in self.results if began == ended == phase]

    def wait_for(self, phase: str, count: int) -> None:
        wait_until(lambda: len(self.answers(phase)) >= count, f"{count} answers in phase {phase!r}")


@pytest.mark.parametrize(("mode", "while_down"), [("closed", (503, "store_unavailable")), ("open", (200, None))])
def test_redis_stopped_and_restarted_empty_under_load(start_gateway, upstream, mode, while_down):
    with redis_process() as server:
        base = start_gateway(store_catalogue(upstream[1], mode), redis_url=server.url, redis_prefix=PREFIX)
        client = redis.Redis.from_url(server.url)
        with Load(base) as load:
            load.wait_for("up", 20)
            load.phase = "stopping"  # not judged: Redis may die while these run
            server.stop()
            load.phase = "down"
            assert ready(base) == 503  # the store is down: not ready, in either mode
            load.wait_for("down", 20)
            load.phase = "starting"
            server.start()  # the same port, nothing in it: no allowed models, no seed markers
            load.phase = "back"
            load.wait_for("back", 50)
        # the probe seeds the spaces no request met (and says ready only once the catalogue is in place)
        unseeded = markers(client, RESTRICTED, FOREIGN_SPACE)
        probed = ready(base)
        seeded = markers(client, SPACE, RESTRICTED, FOREIGN_SPACE)
        client.close()
    assert set(load.answers("up")) == {(200, None)}
    assert set(load.answers("down")) == {while_down}
    assert set(load.answers("back")) == {(200, None)}  # without restarting the gateway: nothing is refused
    assert not [r for r in load.results if r[2] == 403]
    assert (unseeded, probed, seeded) == ([False, False], 200, [True, True, True])


def test_fail_open_lets_requests_through_and_the_yaml_decides_the_allow_list(start_gateway, upstream):
    with redis_process() as server:
        cat = store_catalogue(upstream[1], "open")
        # the restricted space keeps the same open policies but its allow-list fails closed
        restricted = cat["tenants"][0]["spaces"][1]
        closed_list = {"use": "allow_list", "on_store_error": "closed"}
        restricted["policies"] = [closed_list if p["use"] == "allow_list" else p for p in chain("open")]
        base = start_gateway(cat, redis_url=server.url, redis_prefix=PREFIX)
        headers = {**AUTH, "Idempotency-Key": "add-extra"}
        body = {"tenant_model_id": MODEL_IDS["extra"]}
        added = httpx2.post(f"{base}/v1/spaces/{SPACE}/models", headers=headers, json=body, timeout=15)
        assert added.status_code == 201  # a change through the API, not in the YAML
        assert chat(base, "extra").status_code == 200
        server.stop()
        # no request has read the breaker of "up" yet: it now meets the store down and acts on its own state
        r = chat(base, "up")
        assert r.status_code == 200, r.text
        r = chat(base, "extra")  # the YAML decides while the store is down: the API's addition is not in it
        assert (r.status_code, code(r)) == (403, "model_not_allowed")
        assert "Allowed models: up, fake-echo, fake-slow, fake-tool." in r.json()["error"]["message"]
        r = chat(base, "no-such-model")  # refused without the store, in any mode
        assert (r.status_code, code(r)) == (403, "model_not_allowed")
        r = chat(base, "fake-echo", space=RESTRICTED)
        assert (r.status_code, code(r)) == (503, "store_unavailable")
        server.start()
        assert chat(base, "up").status_code == 200
        assert chat(base, "fake-echo", space=RESTRICTED).status_code == 200
        r = chat(base, "extra")  # the store came back empty: the API's change is lost, the YAML is back
        assert (r.status_code, code(r)) == (403, "model_not_allowed")


def test_a_flushed_store_is_seeded_again_once_across_replicas(start_gateway, upstream):
    with redis_process() as server:
        cat = catalogue(upstream[1])  # the default chain: allow_list alone
        one, two = (start_gateway(cat, redis_url=server.url, redis_prefix=PREFIX) for _ in range(2))
        client = redis.Redis.from_url(server.url)
        assert remove(one, SPACE, "fake-tool") == 204
        client.flushall()  # the throwaway server's own data: every key, the seed markers included
        with ThreadPoolExecutor(8) as pool:  # the first requests after the loss, on both replicas at once
            answers = list(pool.map(lambda i: chat((one, two)[i % 2]).status_code, range(40)))
        assert answers == [200] * 40
        stamps = {k.decode(): v.decode() for k, v in client.hgetall(f"{PREFIX}space:{SPACE}:models").items()}
        assert set(stamps) == {MODEL_IDS[alias] for alias in MAIN_YAML}  # the YAML's list, fake-tool back
        # seeded once, by one replica: every stamp is that replica's, its YAML order a microsecond apart
        starts = {_parse(stamps[MODEL_IDS[a]]) - timedelta(microseconds=i) for i, a in enumerate(MAIN_YAML)}
        assert len(starts) == 1
        # the marker now stands: a change on one replica holds on the other, no seed brings it back
        assert remove(two, SPACE, "fake-tool") == 204
        assert code(chat(one, "fake-tool")) == "model_not_allowed"
        # an admin call first after a loss: the space is seeded, then the change applies to it
        client.flushall()
        assert remove(one, SPACE, "fake-tool") == 204
        assert code(chat(two, "fake-tool")) == "model_not_allowed"
        assert chat(two, "up").status_code == 200
        # spaces no request meets are seeded by the readiness probe
        client.flushall()
        assert ready(one) == 200
        assert markers(client, SPACE, RESTRICTED, FOREIGN_SPACE) == [True, True, True]
        assert chat(two, "fake-echo", space=RESTRICTED).status_code == 200
        client.close()


def _parse(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.mark.parametrize(("mode", "status"), [("closed", 503), ("open", 200)])
def test_a_read_only_or_full_redis_is_a_store_outage_not_a_500(start_gateway, upstream, mode, status):
    with redis_process() as server:
        base = start_gateway(store_catalogue(upstream[1], mode), redis_url=server.url, redis_prefix=PREFIX)
        assert chat(base).status_code == 200
        client = redis.Redis.from_url(server.url)
        client.config_set("maxmemory", "1")  # full, under the default noeviction: writes are refused (OOM)
        r = chat(base)
        assert (r.status_code, code(r)) == (status, None if status == 200 else "store_unavailable")
        client.config_set("maxmemory", "0")
        client.replicaof("127.0.0.1", str(free_port()))  # a failover not finished: a read-only replica
        r = chat(base)
        assert (r.status_code, code(r)) == (status, None if status == 200 else "store_unavailable")
        client.replicaof("NO", "ONE")
        assert chat(base).status_code == 200
        client.close()


def test_agents_while_the_store_is_down_answer_503_in_each_route_shape_and_models_still_run(start_gateway, upstream):
    """An agent lives in the store: with Redis down, invoking one is a 503 in the route's own shape (never a 500,
    never a silent fall-through to a model of that name); a tenant model still runs (an allow-list that fails
    open); and the agent answers again once the store is back (its YAML declaration is seeded again)."""
    with redis_process() as server:
        cat = agents_catalogue(upstream[1])
        cat["tenants"][0]["policies"] = [{"use": "allow_list", "on_store_error": "open"}]
        base = start_gateway(cat, redis_url=server.url, redis_prefix=PREFIX)

        def post(path: str, body: Any = None) -> httpx2.Response:
            body = body or {"model": "support-bot", "input": "hi"}
            return httpx2.post(base + path, headers=AUTH, json=body, timeout=15)

        assert post("/v1/responses").status_code == 200
        server.stop()
        openai_route = post("/v1/responses")
        assert openai_route.status_code == 503 and openai_route.json()["error"]["type"]
        native = post(f"/v1/spaces/{SPACE}/responses")
        assert native.status_code == 503 and "detail" in native.json()
        client = post("/api/client/v1/responses")
        assert client.status_code == 503 and isinstance(client.json()["error"], str)
        plain = post("/v1/responses", {"model": "up", "input": "hi", "store": False})
        assert plain.status_code == 200, plain.text
        server.start()  # empty: the agent's YAML declaration is seeded again by the first request that meets it
        wait_until(lambda: post("/v1/responses").status_code == 200, "the agent to answer again")


def test_files_and_skill_publishing_while_the_store_is_down_answer_503_and_keep_nothing(start_gateway, upstream):
    """Files and published skills live in the store: with Redis down, uploading, listing, reading and publishing
    are 503 in the route's shape (never a 500); once it is back, nothing half-written shows."""
    with redis_process() as server:
        base = start_gateway(catalogue(upstream[1]), redis_url=server.url, redis_prefix=PREFIX)
        upload = {"files": {"file": ("a.txt", b"x")}, "data": {"purpose": "user_data"}}
        kept = httpx2.post(base + "/v1/files", headers=AUTH, timeout=15, **upload).json()["id"]
        server.stop()
        down = httpx2.post(base + "/v1/files", headers=AUTH, timeout=15, **upload)
        assert down.status_code == 503 and down.json()["error"]["type"], down.text
        for path in ("/v1/files", f"/v1/files/{kept}", f"/v1/files/{kept}/content"):
            answer = httpx2.get(base + path, headers=AUTH, timeout=15)
            assert answer.status_code == 503 and "error" in answer.json()
        manifest = {
            "slug": "s",
            "version": "1",
            "inputs": {"type": "object"},
            "outputs": {"type": "object"},
            "instructions": "Do.",
        }
        publish = httpx2.post(f"{base}/v1/spaces/{SPACE}/skills", headers=AUTH, json=manifest, timeout=15)
        assert publish.status_code == 503 and isinstance(publish.json()["detail"], str)
        server.start()  # empty
        listed = httpx2.get(base + "/v1/files", headers=AUTH, timeout=15)
        assert listed.status_code == 200 and listed.json()["data"] == []
        assert httpx2.post(f"{base}/v1/spaces/{SPACE}/skills", headers=AUTH, json=manifest).status_code == 201
