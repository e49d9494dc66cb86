"""What an agent's version puts into a request (``apply_version``), as a table."""

import copy
from typing import Any

import pytest

from config.agents import AgentVersion
from gateway.agents import apply_version
from gateway.errors import InvalidRequest

V = AgentVersion(version=1, model="m", instructions="Be kind.", temperature=0.5, max_output_tokens=100, tools=["kb"])
KB = {"type": "mcp", "server_label": "kb"}
FN = {"type": "function", "name": "f", "parameters": {}}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"input": "x"}, {"instructions": "Be kind.", "temperature": 0.5, "max_output_tokens": 100, "tools": [KB]}),
        ({"instructions": "Short."}, {"instructions": "Be kind.\n\nShort."}),
        (
            {"instructions": [{"role": "user", "content": "u"}]},
            {
                "instructions": [
                    {"type": "message", "role": "system", "content": "Be kind."},
                    {"role": "user", "content": "u"},
                ]
            },
        ),
        ({"temperature": 0.5}, {"temperature": 0.5}),
        ({"max_output_tokens": 10}, {"max_output_tokens": 10}),
        ({"max_output_tokens": 1000}, {"max_output_tokens": 100}),
        ({"tools": [FN]}, {"tools": [KB, FN]}),
        ({"top_p": 0.3}, {"top_p": 0.3}),  # the version leaves it to the caller
    ],
)
def test_apply(body: dict[str, Any], expected: dict[str, Any]) -> None:
    before = copy.deepcopy(body)
    out = apply_version(body, V)
    for key, value in expected.items():
        assert out[key] == value, key
    assert body == before  # the caller's body is not changed in place


def test_a_fixed_parameter_is_refused() -> None:
    with pytest.raises(InvalidRequest) as err:
        apply_version({"temperature": 1.0}, V)
    assert err.value.code == "agent_parameter_fixed" and err.value.param == "temperature"
