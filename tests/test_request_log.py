"""One JSON line per request (``gateway.requests``), through a real app on loopback: who, what, how it ended,
tokens and cost; refusals before a context (no key, a bad body, no route) too; never a key or a prompt, and the
caller's strings bounded."""

import json
import logging
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from gateway.logs import REQUESTS, JsonFormatter
from tests.conftest import ADMIN_KEY, SPACE, TENANT, catalogue
from tests.servers import spawn_gateway

PROMPT = "my secret prompt text"
BOGUS_KEY = "sk-not-a-key-but-secret-0123456789"


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.formatter = JsonFormatter()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def parsed(self) -> list[dict]:
        return [json.loads(line) for line in self.lines]


@pytest.fixture
def lines() -> Iterator[Lines]:
    logger = logging.getLogger(REQUESTS)
    handler, level = Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def chat(base: str, body: object, key: str = ADMIN_KEY, **headers: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", **headers}
    return httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers, timeout=30)


def test_each_request_logs_one_json_line_without_secrets(gateway, lines):
    messages = [{"role": "user", "content": PROMPT}]
    assert chat(gateway, {"model": "fake-echo", "messages": messages}, **{"X-Request-Id": "r" * 500}).status_code == 200
    streamed = chat(gateway, {"model": "fake-echo", "messages": messages, "stream": True})
    assert streamed.status_code == 200
    assert chat(gateway, {"model": "m" * 5000, "messages": messages}).status_code == 403  # not allowed here
    assert chat(gateway, {"model": "fake-echo", "messages": messages}, key=BOGUS_KEY).status_code == 401
    bad = httpx.post(f"{gateway}/v1/chat/completions", content=b"{not json", headers={"Authorization": "Bearer x"})
    assert bad.status_code in (400, 401)
    assert httpx.post(f"{gateway}/v1/" + "p" * 3000, json={}).status_code == 404
    gateway.idle()

    logged = lines.parsed()
    assert len(logged) == 6, logged
    whole, stream, refused_model, no_key, bad_body, no_route = logged
    assert whole["logger"] == REQUESTS and whole["msg"] == "request" and whole["level"] == "info"
    assert whole["request_id"] == "r" * 128  # cut where it is read
    assert (whole["tenant"], whole["space"], whole["key"], whole["model"]) == (TENANT, SPACE, "admin", "fake-echo")
    assert (whole["route"], whole["status"], whole["outcome"]) == ("chat.completions", 200, "ok")
    assert whole["stream"] is False
    assert whole["tokens_in"] > 0 and whole["tokens_out"] > 0 and whole["duration_ms"] >= 0
    assert whole["cost_usd"] == "0.000000" and whole["policies"] == ["allow_list"]
    assert (stream["stream"], stream["status"], stream["outcome"]) == (True, 200, "ok")
    assert refused_model["status"] == 403 and refused_model["outcome"] == "rejected"
    assert len(refused_model["model"]) <= 201
    assert (no_key["status"], no_key["outcome"], no_key["path"]) == (401, "rejected", "/v1/chat/completions")
    assert "key" not in no_key and no_key["error"] == "invalid_api_key"
    assert bad_body["status"] == bad.status_code
    assert no_route["status"] == 404 and len(no_route["path"]) <= 201
    text = "\n".join(lines.lines)
    for secret in (ADMIN_KEY, BOGUS_KEY, PROMPT, "Bearer"):
        assert secret not in text


def test_a_bad_body_with_a_key_logs_a_refusal(gateway, lines):
    answer = httpx.post(
        f"{gateway}/v1/chat/completions", content=b"{not json", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert answer.status_code == 400
    gateway.idle()
    (line,) = lines.parsed()
    assert (line["status"], line["outcome"], line["method"]) == (400, "rejected", "POST")
    assert ADMIN_KEY not in lines.lines[0]


def test_the_server_logs_json_at_the_configured_level():
    code = (
        "import logging; from config import Settings; from gateway.logs import configure; "
        "configure(Settings(log_level='warning')); log = logging.getLogger('gateway.x'); "
        "log.info('hidden'); log.warning('shown %s', 'x' * 9000)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    (line,) = [json.loads(text) for text in done.stderr.splitlines()]
    assert (line["level"], line["logger"]) == ("warning", "gateway.x")
    assert line["msg"].startswith("shown x") and len(line["msg"]) <= 4001


@pytest.mark.parametrize("request_log", [None, "true"])
def test_the_server_process_writes_request_lines_only_when_asked(tmp_path, monkeypatch, request_log):
    """``python -m gateway`` as it runs in production: uvicorn's own logging setup (which enables every existing
    logger) must not turn the request lines back on when they are off (the default)."""
    monkeypatch.delenv("GATEWAY_REQUEST_LOG", raising=False)
    env = {"GATEWAY_REQUEST_LOG": request_log} if request_log is not None else {}
    stderr = tmp_path / "stderr.txt"
    with stderr.open("wb") as err:
        proc, base = spawn_gateway(catalogue("http://127.0.0.1:9"), tmp_path, None, stderr=err, log_level="info", **env)
    try:
        assert chat(base, {"model": "fake-echo", "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
    finally:
        proc.terminate()
        proc.wait(30)
    logged = [json.loads(t) for t in stderr.read_text().splitlines() if t.startswith("{")]
    requests = [line for line in logged if line.get("logger") == REQUESTS]
    assert len(requests) == (1 if request_log else 0), requests
