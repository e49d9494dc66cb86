"""Catalogues with skills, a fake upstream that answers each model turn from a list, and polling helpers for
the skills tests."""

from typing import Any

import httpx

from tests.conftest import ADMIN_KEY, SPACE, catalogue
from tests.fakes.scripted import Scripted
from tests.servers import wait_for

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
BASE = f"/v1/spaces/{SPACE}/skills"

ECHO_SKILL: dict[str, Any] = {
    "slug": "echo",
    "version": "1.0.0",
    "title": "Echo",
    "description": "Says the text back.",
    "inputs": {
        "type": "object",
        "properties": {"text": {"type": "string"}, "count": {"type": "integer", "minimum": 0}},
        "required": ["text"],
    },
    "outputs": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    "instructions": "Repeat {{ text }}.",
}


def skill(**fields: Any) -> dict[str, Any]:
    return {**ECHO_SKILL, **fields}


def skills_catalogue(upstream_url: str, skills: list[Any], upstream_model: str = "ok", **space: Any) -> dict[str, Any]:
    """The test catalogue with ``skills`` (manifests or directories) in the tenant, all runnable in SPACE."""
    cat = catalogue(upstream_url, upstream_model)
    tenant = cat["tenants"][0]
    tenant["skills"] = skills
    slugs = sorted({s["slug"] if isinstance(s, dict) else s.rsplit("/", 1)[-1] for s in skills})
    tenant["spaces"][0].update({"skills": slugs, **space})
    return cat


class Turns(Scripted):
    """A Chat Completions upstream answering the n-th model turn of a conversation (n = the assistant messages
    already in it) with ``answers[n]`` (the last one from then on). Keeps every body it received."""

    def __init__(self, answers: list[str]) -> None:
        super().__init__()
        self.answers = answers

    def step(self, body: dict[str, Any]) -> Any:
        done = sum(1 for m in body.get("messages") or [] if m.get("role") == "assistant")
        return self.answers[min(done, len(self.answers) - 1)]


def start_execution(base: str, slug: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(f"{base}{BASE}/{slug}/executions", json=body, headers={**AUTH, **headers}, timeout=30)


def execution(base: str, execution_id: str) -> dict[str, Any]:
    answer = httpx.get(f"{base}{BASE}/executions/{execution_id}", headers=AUTH, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]  # type: ignore[no-any-return]


def ended(base: str, execution_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """The execution once it has ended (or as it stands after ``timeout``)."""
    return wait_for(
        lambda: execution(base, execution_id),
        lambda e: e["state"] in ("succeeded", "failed", "cancelled"),
        timeout,
    )
