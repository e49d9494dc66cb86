"""Start time and idle RSS of the gateway with and without a litellm-backed deployment.

Run by hand: ``.venv/bin/python benchmarks/litellm_startup.py``. For each catalogue, starts the gateway,
measures process start → first answered chat request (which, for the litellm catalogue, is the request that
imports litellm), then the resident memory once idle. The litellm deployment talks Anthropic's Messages API to
a loopback fake, so nothing leaves the machine.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import ADMIN_KEY, catalogue  # noqa: E402
from tests.fakes.upstream import Upstream  # noqa: E402
from tests.servers import free_port, serve  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def first_answer(port: int, deadline: float) -> None:
    body = json.dumps({"model": "up", "messages": [{"role": "user", "content": "hi"}]}).encode()
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body,
                                         {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError("no answer")


def measure(cat: dict, label: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        json.dump(cat, f)
    port = free_port()
    env = {**os.environ, "TEST_ANTHROPIC_KEY": "sk-test", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", f.name, "--port", str(port),
                             "--log-level", "warning"], cwd=ROOT, env=env)
    try:
        first_answer(port, start + 60)
        elapsed = time.monotonic() - start
        time.sleep(1.0)
        print(f"| {label} | {elapsed:.2f} s | {rss_mb(proc.pid):.0f} MB |")
    finally:
        proc.terminate()
        proc.wait(10)
        os.unlink(f.name)


def main() -> None:
    with serve(Upstream()) as url:
        plain = catalogue(url)
        bridged = catalogue(url)
        bridged["tenants"][0]["models"][0]["deployment"] = {
            "type": "anthropic", "model": "claude-test", "base_url": url, "api_key_env": "TEST_ANTHROPIC_KEY"}
        print("| catalogue | start → first answer | idle RSS after it |\n|---|---|---|")
        for _ in range(3):
            measure(plain, "OpenAI-compatible deployment only (litellm never imported)")
            measure(bridged, "an Anthropic deployment through the litellm bridge")


if __name__ == "__main__":
    main()
