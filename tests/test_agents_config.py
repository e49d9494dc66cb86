"""A bad agent in the catalogue fails the start with the field named."""

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from config import Settings
from config.catalog import CatalogueError, load_catalogue
from gateway.app import create_app
from gateway.policy import PolicyConfigError
from tests.agents_helpers import agents_catalogue


def _broken(change: Any) -> dict[str, Any]:
    cat = copy.deepcopy(agents_catalogue("http://127.0.0.1:9"))
    change(cat["tenants"][0])
    return cat


def _agent(tenant: dict[str, Any]) -> dict[str, Any]:
    return tenant["agents"][0]


CASES = {
    "model": (lambda t: _agent(t)["versions"][0].update(model="nope"), "model 'nope' is not a model alias"),
    "tool": (lambda t: _agent(t)["versions"][0].update(tools=["calc"]), "'calc' is not an MCP server or HTTP tool"),
    "key": (lambda t: _agent(t).update(key="up"), "'up' is also a model alias"),
    "bad key": (lambda t: _agent(t).update(key="has space"), "agents.0.key"),
    "space": (lambda t: t["spaces"][0]["agents"].append("ghost"), "agent 'ghost' is not an agent of this tenant"),
    "status": (lambda t: _agent(t).update(status="paused"), "agents.0.status"),
    "versions": (lambda t: _agent(t)["versions"][1].update(version=1), "the same version number twice"),
    "temperature": (lambda t: _agent(t)["versions"][0].update(temperature=3), "versions.0.temperature"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_agent_fails_the_catalogue_naming_the_field(tmp_path: Path, case: str) -> None:
    change, expected = CASES[case]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_broken(change)))
    with pytest.raises(CatalogueError) as err:
        load_catalogue(path)
    assert expected in str(err.value).replace("[", ".").replace("]", "")


def test_a_bad_agent_policy_fails_the_start_naming_where_it_is(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_broken(lambda t: _agent(t)["versions"][0].update(policies=[{"use": "nope"}]))))
    with pytest.raises(PolicyConfigError, match=r"tenants\[0\]\.agents\[0\]\.versions\[0\]\.policies: unknown policy"):
        create_app(Settings(config=path))
