"""The catalogue is validated at start; a wrong file fails with a message that names the field."""

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from openai import AsyncOpenAI

from config import CatalogueError, load_catalogue
from config.settings import DEFAULT_CONFIG
from gateway.exposure import exposure_problem
from tests.conftest import catalogue


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_the_example_catalogue_loads():
    cat = load_catalogue(DEFAULT_CONFIG)
    assert cat.tenants[0].spaces[0].default_model == "fake-echo"


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (
            lambda c: c["tenants"][0]["models"][0]["deployment"].update(type="nope"),
            "tenants[0].models[0].deployment",
        ),
        (lambda c: c["tenants"][0]["models"][0].update(id="not-a-uuid"), "tenants[0].models[0].id"),
        (lambda c: c["tenants"][0]["spaces"][0]["models"].append("ghost"), "model 'ghost' is not a model"),
        (lambda c: c["tenants"][0]["spaces"][0].update(default_model="extra"), "default_model 'extra'"),
        (lambda c: c["tenants"][0]["api_keys"][0].update(sha256="plain-key"), "tenants[0].api_keys[0]"),
        (lambda c: c["tenants"][0]["models"][0].update(colour="red"), "tenants[0].models[0].colour"),
        (lambda c: c["tenants"][0]["models"][1].update(alias="up"), "duplicate alias: up"),
    ],
)
def test_a_wrong_catalogue_names_the_field(tmp_path, mutate, needle):
    data = catalogue("http://127.0.0.1:9")
    mutate(data)
    with pytest.raises(CatalogueError) as err:
        load_catalogue(write(tmp_path, data))
    assert needle in str(err.value)


def test_unreadable_or_non_yaml_files(tmp_path):
    with pytest.raises(CatalogueError, match="cannot read"):
        load_catalogue(tmp_path / "missing.yaml")
    with pytest.raises(CatalogueError, match="not valid YAML"):
        load_catalogue(write(tmp_path, "tenants: [unclosed"))


def test_the_process_refuses_to_start_with_a_clear_message(tmp_path):
    data = catalogue("http://127.0.0.1:9")
    data["tenants"][0]["policies"] = [{"use": "allow_list", "colour": "red"}]
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(write(tmp_path, data)), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "policy 'allow_list': invalid params: colour" in proc.stderr


def test_hash_key_command():
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "hash-key", "sk-gw-demo-admin"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    assert out == "11765d891df666fd89b04a73b5113ad8242697f8c5d1f2830a55d426e65bfa0e"


@pytest.mark.parametrize(("threshold", "expected"), [(10_000, "10000 True"), (0, "700 False")])
def test_the_server_process_tunes_the_garbage_collector(threshold, expected):
    code = (
        "import gc; from gateway.server import tune_gc; "
        f"tune_gc({threshold}); print(gc.get_threshold()[0], gc.get_freeze_count() > 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == expected


def test_the_sample_error_in_the_docs_is_the_real_one(tmp_path):
    """docs/config.md shows what a wrong deployment type prints; it must stay what the process really says."""
    docs = (Path(__file__).parents[1] / "docs" / "config.md").read_text()
    shown = docs.split("```\ngateway: cannot start:", 1)[1].split("```", 1)[0]
    broken = tmp_path / "config" / "gateway.yaml"
    broken.parent.mkdir()
    broken.write_text(DEFAULT_CONFIG.read_text().replace("type: fake", "type: foo", 1))
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(broken), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.replace(str(tmp_path) + "/", "") == "gateway: cannot start:" + shown


def test_the_demo_keys_are_never_exposed_beyond_loopback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "--host", "0.0.0.0", "--port", "0"],  # the shipped demo catalogue
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "GATEWAY_DEMO"},
    )
    assert proc.returncode == 2
    assert "published demo key(s) demo-admin, demo-member" in proc.stderr and "GATEWAY_DEMO=1" in proc.stderr
    demo = load_catalogue(DEFAULT_CONFIG).tenants
    assert exposure_problem("0.0.0.0", demo, demo=True) is None  # GATEWAY_DEMO=1: meant
    for host in ("127.0.0.1", "127.3.0.1", "::1", "[::1]", "localhost"):
        assert exposure_problem(host, demo, demo=False) is None
    for host in ("0.0.0.0", "::", "10.0.0.5", "gateway.example.com"):
        assert exposure_problem(host, demo, demo=False) is not None
    own = load_catalogue(write(tmp_path, catalogue("http://127.0.0.1:9"))).tenants  # keys of its own
    assert exposure_problem("0.0.0.0", own, demo=False) is None


async def test_the_example_catalogue_ships_an_agent_the_openai_sdk_can_call(start_gateway):
    """The agent `make run` ships (config/gateway.yaml) answers `model: "greeter"` with its fixed settings."""
    base = start_gateway(yaml.safe_load(DEFAULT_CONFIG.read_text()))
    client = AsyncOpenAI(base_url=base + "/v1", api_key="sk-gw-demo-admin", max_retries=0)
    response = await client.responses.create(model="greeter", input="hello there")
    assert response.model == "greeter" and response.output_text == "hello there"
    assert response.instructions.startswith("You are the greeter of Acme.")
    assert response.temperature == 0.2 and response.max_output_tokens == 256
    assert "greeter" in [m.id async for m in client.models.list()]
    async with httpx.AsyncClient(base_url=base) as http:
        listed = await http.get("/api/client/v1/agents", headers={"Authorization": "Bearer sk-gw-demo-admin"})
    assert listed.status_code == 200 and [a["key"] for a in listed.json()["agents"]] == ["greeter"]
