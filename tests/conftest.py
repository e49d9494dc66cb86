"""Fixtures: real Redis (own key prefix per run), a loopback fake upstream, and gateways on loopback."""

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from config import Settings
from gateway.app import create_app
from tests.fakes.scripted import Scripted
from tests.fakes.upstream import Upstream
from tests.servers import InFlight, redis_server, serve

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

TENANT = "7734c3ab-fb41-4904-9e4e-c8a379e089ac"
OTHER_TENANT = "0b6f1b7e-9a51-4c55-8c1d-5a0c3f7d2e10"
SPACE = "c05bf97d-8571-4526-8ad9-fe3f1c896d0b"
RESTRICTED = "2f4d3c52-6a8e-4d0e-9d4e-2f6b1e0f7a11"
FOREIGN_SPACE = "9d2c7c9e-3f0a-4a55-bb1e-61e4f5a0c001"
ADMIN_KEY, MEMBER_KEY, OTHER_KEY = "sk-test-admin", "sk-test-member", "sk-test-other"
MODEL_IDS = {
    "up": "c72a0d0e-4d59-484a-8eb2-e698c46393dc",
    "fake-echo": "c917cc96-a19c-48f9-af27-11db5ca24fbd",
    "extra": "e39da1cd-a9d9-483b-bf02-c4f972216645",
    "fake-slow": "8ff75ad9-dfbb-43d9-a1e2-ce53b9318b3c",
    "fake-tool": "e37b3b2b-fb61-4a7a-86cd-dcc289578bee",
}


def _sha(key: str) -> str:
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()


def catalogue(upstream_url: str, upstream_model: str = "ok", **deployment: Any) -> dict[str, Any]:
    """The test catalogue: one tenant with two spaces and an upstream model, plus another tenant."""
    up = {"type": "openai", "model": upstream_model, "base_url": upstream_url + "/v1", **deployment}
    return {
        "tenants": [
            {
                "id": TENANT,
                "name": "acme",
                "models": [
                    {
                        "id": MODEL_IDS["up"],
                        "alias": "up",
                        "deployment": up,
                        "context_window": 4096,
                        "capabilities": ["chat", "tools"],
                        "logo_url": "https://example.com/l.png",
                    },
                    {
                        "id": MODEL_IDS["fake-echo"],
                        "alias": "fake-echo",
                        "deployment": {"type": "fake", "model": "echo"},
                    },
                    {
                        "id": MODEL_IDS["extra"],
                        "alias": "extra",
                        "deployment": {"type": "fake", "model": "echo"},
                    },
                    {
                        "id": MODEL_IDS["fake-slow"],
                        "alias": "fake-slow",
                        "deployment": {"type": "fake", "model": "slow-1500"},
                    },
                    {
                        "id": MODEL_IDS["fake-tool"],
                        "alias": "fake-tool",
                        "deployment": {"type": "fake", "model": "tool-call"},
                    },
                ],
                "spaces": [
                    {
                        "id": SPACE,
                        "name": "main",
                        "models": ["up", "fake-echo", "fake-slow", "fake-tool"],
                        "default_model": "fake-echo",
                    },
                    {
                        "id": RESTRICTED,
                        "name": "restricted",
                        "models": ["fake-echo"],
                        "default_model": "fake-echo",
                    },
                ],
                "api_keys": [
                    {
                        "name": "admin",
                        "sha256": _sha(ADMIN_KEY),
                        "principal": "alice",
                        "role": "admin",
                        "spaces": ["*"],
                        "default_space": SPACE,
                    },
                    {
                        "name": "member",
                        "sha256": _sha(MEMBER_KEY),
                        "principal": "bob",
                        "role": "member",
                        "spaces": [RESTRICTED],
                        "default_space": RESTRICTED,
                    },
                ],
            },
            {
                "id": OTHER_TENANT,
                "name": "other",
                "models": [],
                "spaces": [{"id": FOREIGN_SPACE, "name": "theirs"}],
                "api_keys": [
                    {
                        "name": "other",
                        "sha256": _sha(OTHER_KEY),
                        "principal": "eve",
                        "spaces": ["*"],
                        "default_space": FOREIGN_SPACE,
                    }
                ],
            },
        ]
    }


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this run's own, deleted at the end."""
    prefix = f"gwtest:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session")
def upstream() -> Iterator[tuple[Upstream, str]]:
    fake = Upstream()
    with serve(fake, lifespan=False) as url:
        yield fake, url


@pytest.fixture(scope="module")
def scripted() -> Iterator[tuple[Scripted, str]]:
    """An upstream that follows the script in the conversation (tests/fakes/scripted.py), one per test module."""
    fake = Scripted()
    with serve(fake, lifespan=False) as url:
        yield fake, url


class GatewayURL(str):
    """A running gateway's base URL that also carries its app (to inspect runtime state in tests) and ``idle``,
    which waits until no request is running (their ``after`` phase included)."""

    app: Any
    idle: Callable[[], None]


GatewayFactory = Callable[..., GatewayURL]


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[GatewayFactory]:
    """Start a gateway on loopback for a catalogue dict; returns its base URL. Stopped after the test."""
    with ExitStack() as stack:

        def start(cat: dict[str, Any], **settings: Any) -> GatewayURL:
            path = tmp_path / f"catalogue-{uuid.uuid4().hex[:8]}.yaml"
            path.write_text(yaml.safe_dump(cat))
            app = create_app(Settings(config=path, **settings))
            tracked = InFlight(app)
            url = GatewayURL(stack.enter_context(serve(tracked)))
            url.app, url.idle = app, tracked.idle
            return url

        yield start


@pytest.fixture
def gateway(start_gateway: GatewayFactory, upstream: tuple[Upstream, str]) -> GatewayURL:
    """A gateway on the in-memory store in front of the fake upstream."""
    return start_gateway(catalogue(upstream[1]))
