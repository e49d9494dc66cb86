"""Table tests of the Responses translation layer, with helpers shared by its test modules."""

import json
import re
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"
# Real llama.cpp recordings (tests/data/llamacpp/README.md says how they were made).
LLAMACPP = Path(__file__).parent.parent / "data" / "llamacpp"
_MINTED = re.compile(r"^(msg|fc|rs|call)_[0-9a-f]{32}$")
# Keys OpenAI sends that the installed SDK's models do not declare (yet): `store` is in the openapi examples of a
# Response, `name` in the openapi `ResponseFunctionCallArgumentsDoneEvent`.
WIRE_ONLY = {"Response": {"store"}, "ResponseFunctionCallArgumentsDoneEvent": {"name"}}


def load(name: str) -> list[dict[str, Any]]:
    """A fixture file of this folder: a list of cases, each with a ``name``."""
    return json.loads((DATA / name).read_text())


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def read_sse(path: Path) -> list[dict[str, Any]]:
    """The JSON payloads of a recorded ``text/event-stream`` body, in order, without the ``[DONE]`` sentinel."""
    payloads = []
    for frame in path.read_text().split("\n\n"):
        data = "".join(line[5:].lstrip() for line in frame.splitlines() if line.startswith("data:"))
        if data and data != "[DONE]":
            payloads.append(json.loads(data))
    return payloads


def normalize_ids(value: Any) -> Any:
    """Replace ids the gateway minted (random) by ``<prefix>_<n>``, numbered per prefix in order of appearance."""
    seen: dict[str, str] = {}
    counts: dict[str, int] = {}

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: walk(item) for key, item in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        if isinstance(node, str) and (match := _MINTED.match(node)):
            if node not in seen:
                prefix = match.group(1)
                counts[prefix] = counts.get(prefix, 0) + 1
                seen[node] = f"{prefix}_{counts[prefix]}"
            return seen[node]
        return node

    return walk(value)


def assert_subset(actual: Any, expected: Any, path: str = "$") -> None:
    """Every key of ``expected`` is in ``actual`` with an equal value; lists must have the same length."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected an object, got {actual!r}"
        for key, value in expected.items():
            assert key in actual, f"{path}: missing key {key!r}"
            assert_subset(actual[key], value, f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{path}: {actual!r} != {expected!r}"
        for i, (got, want) in enumerate(zip(actual, expected, strict=True)):
            assert_subset(got, want, f"{path}[{i}]")
    else:
        assert actual == expected and type(actual) is type(expected), f"{path}: {actual!r} != {expected!r}"


def sdk_extras(model: Any, path: str = "$") -> list[str]:
    """Keys the official SDK's models did not recognise (pydantic keeps them as extras), anywhere in ``model``,
    except the few OpenAI itself sends (``WIRE_ONLY``)."""
    from pydantic import BaseModel

    found: list[str] = []
    if isinstance(model, BaseModel):
        allowed = WIRE_ONLY.get(type(model).__name__, set())
        found += [f"{path}.{key}" for key in (model.model_extra or {}) if key not in allowed]
        for name in type(model).model_fields:
            found += sdk_extras(getattr(model, name), f"{path}.{name}")
    elif isinstance(model, list):
        for i, item in enumerate(model):
            found += sdk_extras(item, f"{path}[{i}]")
    return found
