"""The catalogue is validated at start; a wrong file fails with a message that names the field."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from config import CatalogueError, load_catalogue
from config.settings import DEFAULT_CONFIG
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
        "import gc; from gateway.__main__ import tune_gc; "
        f"tune_gc({threshold}); print(gc.get_threshold()[0], gc.get_freeze_count() > 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == expected
