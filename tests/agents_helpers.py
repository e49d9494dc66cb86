"""The agents' test catalogue: the conftest tenant with agents, and a few of them listed in the main space."""

import copy
from typing import Any

from tests.conftest import catalogue

SUPPORT = {
    "key": "support-bot",
    "name": "Support Bot",
    "description": "Customer support agent",
    "status": "active",
    "created_at": "2026-01-15T10:00:00Z",
    "versions": [
        {
            "version": 1,
            "model": "up",
            "instructions": "You are Support Bot (v1).",
            "temperature": 0.7,
            "top_p": 1,
            "max_output_tokens": 4096,
        },
        {
            "version": 2,
            "model": "up",
            "instructions": "You are Support Bot (v2).",
            "temperature": 0.2,
            "max_output_tokens": 256,
        },
        {"version": 3, "model": "up", "instructions": "Not ready.", "published": False},
    ],
}
AGENTS: list[dict[str, Any]] = [
    SUPPORT,
    {"key": "retired", "name": "Retired", "status": "inactive", "versions": [{"version": 1, "model": "up"}]},
    {"key": "on-extra", "name": "On a model the space does not allow", "versions": [{"version": 1, "model": "extra"}]},
    {"key": "hidden", "name": "Listed in no space", "versions": [{"version": 1, "model": "up"}]},
    {"key": "unpublished", "name": "Only a draft", "versions": [{"version": 1, "model": "up", "published": False}]},
]
LISTED = ["support-bot", "retired", "on-extra", "unpublished"]


def agents_catalogue(upstream_url: str, upstream_model: str = "ok") -> dict[str, Any]:
    cat = catalogue(upstream_url, upstream_model)
    tenant = cat["tenants"][0]
    tenant["agents"] = copy.deepcopy(AGENTS)
    tenant["spaces"][0]["agents"] = list(LISTED)
    return cat
