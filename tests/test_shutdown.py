"""Shutting down with requests in flight that outlast the grace period (test_drain.py has those that finish
within it): SIGTERM to a real ``python -m gateway`` process ends every stream with
its error event (Chat Completions: an OpenAI error data frame and no ``[DONE]``; Responses, background ones
included: ``response.failed``, stored so), answers a request not yet answered with 503 ``gateway_shutting_down``,
releases every budget hold and idempotency claim before the process exits, and the process exits 0."""

import signal
import threading
import time
import uuid
from typing import Any

import httpx
import orjson
import redis
import yaml

from config import Settings
from gateway.app import create_app
from tests.conftest import ADMIN_KEY, catalogue
from tests.servers import kill_if_running, serve, spawn_gateway

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
STREAMS = 20  # half Chat Completions, half Responses
BOUND = 60.0  # seconds any wait may take before the test fails


def stalling_catalogue(upstream_url: str) -> dict[str, Any]:
    """Model ``up`` streams one chunk and then nothing until the client goes away (``native`` too, spoken to
    as a Responses upstream), ``hang`` never answers; idempotency and a budget that every request holds a
    reservation against."""
    cat = catalogue(upstream_url, "stall")
    tenant = cat["tenants"][0]
    pricing = tenant["models"][0]["pricing"] = {"input_per_mtok": "0", "output_per_mtok": "1"}
    for alias, model, api in (("hang", "hang", "chat"), ("native", "stall", "responses")):
        deployment = {"type": "openai", "model": model, "base_url": upstream_url + "/v1", "api": api}
        tenant["models"].append({"id": str(uuid.uuid4()), "alias": alias, "deployment": deployment, "pricing": pricing})
        tenant["spaces"][0]["models"].append(alias)
    tenant["policies"] = [
        {"use": "allow_list"},
        {"use": "idempotency"},
        {"use": "budget", "limits": [{"scope": "space", "period": "day", "usd": "1000"}]},
        {"use": "cost"},
    ]
    return cat


class Client(threading.Thread):
    """One request (``kind``: chat, responses, native (a Responses stream from a Responses upstream),
    background, whole, or follow: ``GET ?stream=true`` of the response ``follows``); ``started`` is set once
    its first event arrived, ``text`` is all it read."""

    def __init__(self, base: str, kind: str, follows: str = "") -> None:
        super().__init__(daemon=True)
        self.base, self.kind, self.follows = base, kind, follows
        self.started = threading.Event()
        self.status = 0
        self.text = ""
        self.failure: BaseException | None = None

    def request(self) -> tuple[str, dict[str, Any]]:
        if self.kind in ("responses", "background", "native"):
            body = {"model": "native" if self.kind == "native" else "up", "input": "hi", "max_output_tokens": 3}
            return "/v1/responses", {**body, "stream": True, "background": self.kind == "background"}
        body = {"model": "up", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}
        return "/v1/chat/completions", body if self.kind == "chat" else {**body, "model": "hang", "stream": False}

    def run(self) -> None:
        path, body = self.request()
        headers = {**AUTH, "Idempotency-Key": uuid.uuid4().hex}
        if self.kind == "follow":
            method, path, body, headers = "GET", f"/v1/responses/{self.follows}?stream=true", None, AUTH
        else:
            method = "POST"
        try:
            with httpx.stream(method, self.base + path, headers=headers, json=body, timeout=BOUND) as r:
                self.status = r.status_code
                for chunk in r.iter_text():
                    self.text += chunk
                    if "\n\n" in self.text:
                        self.started.set()
        except BaseException as exc:  # reported by the test, with what was read
            self.failure = exc

    def events(self) -> list[dict[str, Any]]:
        out = []
        for frame in self.text.split("\n\n"):
            data = [line[5:].strip() for line in frame.split("\n") if line.startswith("data:")]
            if data:
                out.append({"[DONE]": "[DONE]"}.get(data[0]) or orjson.loads("\n".join(data)))
        return out

    def check_stopped(self) -> str | None:
        """Asserts the request ended as a shutdown ends it; returns the id of a Responses stream."""
        assert self.failure is None, (self.failure, self.text)
        if self.kind == "whole":
            assert self.status == 503, self.text
            assert orjson.loads(self.text)["error"]["code"] == "gateway_shutting_down"
            return None
        last = self.events()[-1]
        if self.kind == "follow":  # the response's own end, or this replay's, whichever came first
            assert last["type"] == "response.failed" or last["code"] == "gateway_shutting_down", self.text
            return None
        if self.kind == "chat":
            assert last["error"]["code"] == "gateway_shutting_down", self.text
            assert last["error"]["type"] == "server_error" and "[DONE]" not in self.text
            return None
        assert last["type"] == "response.failed", self.text
        assert last["response"]["status"] == "failed" and last["response"]["error"]["code"] == "server_error"
        if self.kind == "native":  # relayed events: the response as the upstream's last lifecycle event had it
            assert '"delta":"first"' in self.text
            return None
        assert last["response"]["output"][0]["content"][0]["text"] == "first"  # with the partial output
        return str(last["response"]["id"])


def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.02)


def prefix_keys(client: redis.Redis, prefix: str, part: str) -> list[bytes]:
    return list(client.scan_iter(match=f"{prefix}{part}*", count=1000))


def holds(client: redis.Redis, prefix: str) -> int:
    """Budget reservations held under ``prefix`` (members of the budgets' sorted sets)."""
    return sum(client.zcard(key) for key in prefix_keys(client, prefix, "budget:") if key.endswith(b":held"))


def test_sigterm_ends_every_request_cleanly_and_releases_what_it_held(
    start_gateway, upstream, redis_url, redis_prefix, tmp_path
):
    prefix = redis_prefix + uuid.uuid4().hex + ":"
    cat = stalling_catalogue(upstream[1])
    proc, base = spawn_gateway(cat, tmp_path, redis_url, prefix, GATEWAY_SHUTDOWN_GRACE_SECONDS="0.5")
    store = redis.Redis.from_url(redis_url)
    kinds = ["chat", "responses"] * (STREAMS // 2) + ["native", "native", "background", "whole", "whole"]
    clients = [Client(base, kind) for kind in kinds]
    hanging = upstream[0].counts.get("hang", 0) + 2
    try:
        for c in clients:
            c.start()
        streams = [c for c in clients if c.kind != "whole"]
        wait_for(lambda: all(c.started.is_set() or not c.is_alive() for c in streams), "every stream's first event")
        wait_for(lambda: upstream[0].counts.get("hang", 0) >= hanging, "the whole answers' upstream calls")
        assert all(c.started.is_set() for c in streams), [c.failure for c in streams]
        background = next(c for c in clients if c.kind == "background").events()[0]["response"]["id"]
        clients.append(follower := Client(base, "follow", background))
        follower.start()
        wait_for(follower.started.is_set, "the follower's first event")
        assert holds(store, prefix) == len(kinds)  # each request holds a reservation...
        assert len(prefix_keys(store, prefix, "idem:")) == len(kinds)  # ... and an idempotency claim

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(BOUND) == 0
        stored = []
        for c in clients:
            c.join(BOUND)
            assert not c.is_alive()
            stored.append(c.check_stopped())
        assert holds(store, prefix) == 0
        assert prefix_keys(store, prefix, "idem:") == []  # released, not stored: a retry runs again
    finally:
        kill_if_running(proc)
        store.close()

    reader = start_gateway(cat, redis_url=redis_url, redis_prefix=prefix)  # the stored responses, as left
    for response_id in filter(None, stored):
        answer = httpx.get(f"{reader}/v1/responses/{response_id}", headers=AUTH).json()
        assert answer["status"] == "failed" and answer["output"][0]["content"][0]["text"] == "first"
        replay = httpx.get(f"{reader}/v1/responses/{response_id}", headers=AUTH, params={"stream": "true"})
        assert '"type":"response.failed"' in replay.text.rsplit("\n\n", 2)[-2]  # the log ends as the stream did


def test_requests_cut_by_uvicorn_itself_still_release_what_they_held(upstream, redis_url, redis_prefix, tmp_path):
    """Served without ``python -m gateway`` (uvicorn cancels what is left at its graceful timeout, then runs the
    lifespan shutdown): the store stays open until the cut requests have released their holds and claims."""
    prefix = redis_prefix + uuid.uuid4().hex + ":"
    path = tmp_path / "catalogue.yaml"
    path.write_text(yaml.safe_dump(stalling_catalogue(upstream[1])))
    app = create_app(Settings(config=path, redis_url=redis_url, redis_prefix=prefix))
    store = redis.Redis.from_url(redis_url)
    try:
        with serve(app) as base:  # uvicorn's graceful timeout: 2 s
            clients = [Client(base, kind) for kind in ("chat", "responses", "chat", "responses")]
            for c in clients:
                c.start()
            wait_for(lambda: all(c.started.is_set() or not c.is_alive() for c in clients), "the first events")
            assert holds(store, prefix) == len(clients) == len(prefix_keys(store, prefix, "idem:"))
        for c in clients:
            c.join(BOUND)
            assert not c.is_alive()
        assert holds(store, prefix) == 0
        assert prefix_keys(store, prefix, "idem:") == []
    finally:
        store.close()
