"""The end-to-end suite: the gateway in front of llama.cpp's real server (the ``xllamacpp`` wheel) serving
Gemma 3 270M. ``make e2e`` installs what it needs (requirements-e2e.lock) and runs ``pytest tests/e2e``.

A plain ``pytest`` (what ``make test`` runs, over ``testpaths``) does not collect this folder: its tests run
only when a path inside ``tests/e2e`` is named on the command line (see ``pytest_ignore_collect``).
"""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import GatewayFactory, catalogue
from tests.e2e.record import assemble_model, llama_server

E2E_DIR = Path(__file__).resolve().parent


def _named_on_command_line(config: pytest.Config) -> bool:
    """Whether an argument of this run is this folder or something inside it."""
    base = Path(config.invocation_params.dir)
    for arg in config.args:
        path = (base / arg.split("::", 1)[0]).resolve()
        if path == E2E_DIR or E2E_DIR in path.parents:
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if E2E_DIR in collection_path.parents and not _named_on_command_line(config):
        return True
    return None


@pytest.fixture(scope="session")
def llama() -> Iterator[str]:
    """llama.cpp's server on Gemma 3 270M (model assembled once into .cache/e2e/), for the whole session."""
    with llama_server(assemble_model()) as url:
        yield url


@pytest.fixture
def llama_gateway(start_gateway: GatewayFactory, llama: str) -> str:
    """A gateway (in-memory store) whose tenant model ``up`` is ``{"type": "openai", "model": "gemma",
    "base_url": "<llama>/v1"}``: allowed in the main space, not in the restricted one."""
    return start_gateway(catalogue(llama, upstream_model="gemma"))
