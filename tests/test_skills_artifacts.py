"""What an execution writes besides its outputs: a skill with ``limits.max_artifacts`` offers its model the
``write_artifact`` tool; each call keeps a document as an artifact of the execution, downloaded with the space's
rights; bad paths, the outputs document's folder, duplicates and calls past the limit are errors the model
reads, and keep nothing."""

import httpx

from tests.conftest import MEMBER_KEY
from tests.skills_helpers import AUTH, ended, skill, skills_catalogue, start_execution

SCRIPT_INPUTS = {"type": "object", "properties": {"script": {"type": "array"}}, "required": ["script"]}
WRITE = "workspace__write_artifact"


def _writer(**limits):
    return skill(
        slug="writer",
        inputs=SCRIPT_INPUTS,
        outputs={"type": "object"},
        instructions="Write.",
        model="up",
        limits=limits,
    )


def _tool_messages(fake) -> list[str]:
    return [str(m.get("content")) for m in fake.bodies[-1]["messages"] if m.get("role") == "tool"]


def test_the_model_writes_artifacts_within_the_skills_limit(start_gateway, scripted):
    fake, url = scripted
    base = start_gateway(skills_catalogue(url, [_writer(max_artifacts=2)], "scripted"))
    script = [
        [
            [WRITE, {"relpath": "report/summary.md", "content": "# Summary", "document_type": "text/markdown"}],
            [WRITE, {"relpath": "../escape.txt", "content": "x"}],
            [WRITE, {"relpath": "outputs/outputs.json", "content": "{}"}],
            [WRITE, {"relpath": "/etc/passwd", "content": "x"}],
        ],
        # the scripted upstream steps by the calls made so far (each goes to it as an assistant message of its own)
        *["unused"] * 3,
        [[WRITE, {"relpath": "report/summary.md", "content": "again"}]],
        [[WRITE, {"relpath": "notes.txt", "content": "second"}]],
        [[WRITE, {"relpath": "third.txt", "content": "over the limit"}]],
        '{"done": true}',
    ]
    done = ended(base, start_execution(base, "writer", {"inputs": {"script": script}}).json()["data"]["id"])
    assert (done["state"], done["outputs"]) == ("succeeded", {"done": True}), (done["failure_reason"], done["error"])
    assert [a["relpath_in_workspace"] for a in done["artifacts"]] == [
        "report/summary.md",
        "notes.txt",
        "outputs/outputs.json",
    ]
    summary = done["artifacts"][0]
    assert (summary["document_type"], summary["size_bytes"]) == ("text/markdown", 9)
    download = httpx.get(base + summary["download_url"], headers=AUTH)
    assert download.status_code == 200 and download.text == "# Summary"
    assert download.headers["content-type"].startswith("text/markdown")
    assert download.headers["x-content-type-options"] == "nosniff"
    assert (
        httpx.get(base + summary["download_url"], headers={"Authorization": f"Bearer {MEMBER_KEY}"}).status_code == 403
    )
    errors = " | ".join(_tool_messages(fake))
    assert errors.count("relpath must be a relative path") == 2  # ../ and /
    assert "outputs/ holds the outputs document" in errors
    assert "report/summary.md was written already" in errors
    assert "at most 2 artifacts" in errors


def test_a_skill_without_max_artifacts_is_offered_no_such_tool(start_gateway, scripted):
    fake, url = scripted
    base = start_gateway(skills_catalogue(url, [_writer()], "scripted"))
    script = [[[WRITE, {"relpath": "a.txt", "content": "x"}]], '{"done": true}']
    done = ended(base, start_execution(base, "writer", {"inputs": {"script": script}}).json()["data"]["id"])
    assert [a["relpath_in_workspace"] for a in done["artifacts"]] == ["outputs/outputs.json"]
    assert WRITE not in str(fake.bodies[-2].get("tools"))
    assert done["state"] == "succeeded"  # the unknown call ended the turn; the repair round answered
