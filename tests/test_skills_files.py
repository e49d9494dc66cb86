"""An execution's ``file_source_ids``: the caller's uploaded files (``POST /v1/files``, by filename or id) staged
as ``inputs/materials/<name>`` and shown to the model; missing ones, and other callers' files, skipped."""

import json
from collections.abc import Iterator

import httpx
import pytest
from openai import OpenAI

from tests.conftest import ADMIN_KEY, MEMBER_KEY
from tests.servers import serve
from tests.skills_helpers import AUTH, BASE, Turns, ended, skill, skills_catalogue, start_execution


@pytest.fixture
def turns() -> Iterator[tuple[Turns, str]]:
    fake = Turns(['{"text": "read"}'])
    with serve(fake, lifespan=False) as url:
        yield fake, url


def _upload(base: str, name: str, data: bytes, key: str = ADMIN_KEY) -> str:
    client = OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    return client.files.create(file=(name, data), purpose="user_data").id


def _events(base: str, execution_id: str) -> list[dict]:
    text = httpx.get(f"{base}{BASE}/executions/{execution_id}/events", headers=AUTH, timeout=30).text
    return [json.loads(line[6:]) for line in text.split("\n") if line.startswith("data: ")]


def test_the_callers_files_are_staged_as_materials_and_missing_ones_skipped(start_gateway, turns):
    fake, url = turns
    base = start_gateway(skills_catalogue(url, [skill(model="up")]))
    _upload(base, "notes.txt", b"an old version")
    _upload(base, "notes.txt", b"the notes: alpha, beta")  # a name names its newest file
    binary = _upload(base, "photo.png", b"\x89PNG\r\n\x1a\n\xff\xfe")
    _upload(base, "theirs.txt", b"not yours", key=MEMBER_KEY)  # another caller's collection
    names = ["notes.txt", binary, "missing.txt", "theirs.txt"]
    created = start_execution(base, "echo", {"inputs": {"text": "x"}, "file_source_ids": names})
    assert created.status_code == 201, created.text
    done = ended(base, created.json()["data"]["id"])
    assert done["state"] == "succeeded", done

    messages = fake.bodies[-1]["messages"]
    staged = next(m["content"] for m in messages if "inputs/materials/" in str(m.get("content")))
    assert "--- inputs/materials/notes.txt (22 bytes) ---\nthe notes: alpha, beta" in staged
    assert "an old version" not in staged and "not yours" not in staged
    assert "--- inputs/materials/photo.png (10 bytes): not text, not shown ---" in staged
    assert messages[-1]["content"] == '{"text":"x"}'  # the inputs document stays the last user message

    (materials,) = [e for e in _events(base, done["id"]) if e["event"] == "execution.materials"]
    assert [s["relpath"] for s in materials["staged"]] == ["inputs/materials/notes.txt", "inputs/materials/photo.png"]
    assert materials["staged"][1]["file_id"] == binary
    assert materials["skipped"] == ["missing.txt", "theirs.txt"]


def test_the_materials_shown_to_the_model_are_cut_at_the_setting(start_gateway, turns):
    fake, url = turns
    base = start_gateway(skills_catalogue(url, [skill(model="up")]), skills_materials_max_chars=10)
    _upload(base, "long.txt", b"0123456789abcdef")
    _upload(base, "more.txt", b"never shown")
    created = start_execution(base, "echo", {"inputs": {"text": "x"}, "file_source_ids": ["long.txt", "more.txt"]})
    assert ended(base, created.json()["data"]["id"])["state"] == "succeeded"
    staged = next(m["content"] for m in fake.bodies[-1]["messages"] if "inputs/materials/" in str(m.get("content")))
    assert "0123456789 [cut: 6 more characters not shown]" in staged
    assert "never shown" not in staged and "[cut: 11 more characters not shown]" in staged


def test_an_execution_without_files_stages_nothing(start_gateway, turns):
    fake, url = turns
    base = start_gateway(skills_catalogue(url, [skill(model="up")]))
    done = ended(base, start_execution(base, "echo", {"inputs": {"text": "x"}}).json()["data"]["id"])
    assert done["state"] == "succeeded"
    assert not any("inputs/materials/" in str(m.get("content")) for m in fake.bodies[-1]["messages"])
    assert "execution.materials" not in [e["event"] for e in _events(base, done["id"])]
