"""What an execution writes besides its outputs document: the ``write_artifact`` tool, offered to the model of a
skill whose ``limits.max_artifacts`` is above 0 (a ``gateway.tools.ToolServer`` of the gateway's own, server
label ``workspace``). Each call keeps one text document as an artifact of the execution (``artifacts``, with a
``download_url`` on the native route that checks the caller's rights), at a path of the workspace the model
names: relative, without ``..``, not ``outputs/`` (the outputs document's own), at most ``MAX_BYTES``.
A call past a limit, or with a bad path, is an error the model reads; nothing is kept then."""

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from gateway.skills.records import Execution
from gateway.tools.results import ToolResult

if TYPE_CHECKING:
    from gateway.skills.records import ExecutionRecords

LABEL = "workspace"
TOOL = "write_artifact"
MAX_BYTES = 1024 * 1024  # one artifact's text, UTF-8
_PATH = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}(/[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}){0,7}$")
DOCUMENT_TYPES = ("text/plain", "text/markdown", "text/csv", "application/json")
SCHEMA = {
    "type": "object",
    "properties": {
        "relpath": {"type": "string", "description": "Where in the workspace, e.g. report/summary.md"},
        "content": {"type": "string", "description": "The document's text"},
        "document_type": {"type": "string", "enum": list(DOCUMENT_TYPES)},
    },
    "required": ["relpath", "content"],
}


def path_problem(relpath: Any) -> str | None:
    if not isinstance(relpath, str) or not _PATH.match(relpath) or ".." in relpath.split("/"):
        return "relpath must be a relative path of letters, digits, '.', '_' and '-' (no '..', at most 8 levels)"
    if relpath.split("/", 1)[0] == "outputs":
        return "outputs/ holds the outputs document: write elsewhere"
    return None


@dataclass
class ArtifactServer:
    """One execution's ``write_artifact`` tool; ``written`` collects what its calls kept."""

    records: "ExecutionRecords"
    execution: Execution
    limit: int
    written: list[dict[str, Any]] = field(default_factory=list)
    taken: list[str] = field(default_factory=list)  # paths of the calls that passed the checks (some still saving)
    label: str = LABEL
    declared: bool = True
    listed: bool = False

    def allows_tool(self, name: str) -> bool:
        return name == TOOL

    def needs_approval(self, tool_name: str) -> bool:
        return False

    async def list_tools(self) -> Sequence[Mapping[str, Any]]:
        text = f"Keep a text document in the execution's workspace as an artifact (at most {self.limit})."
        return [{"name": TOOL, "description": text, "input_schema": SCHEMA}]

    async def call(
        self, name: str, arguments: dict[str, Any], timeout: float | None, call_id: str | None
    ) -> ToolResult:
        relpath, content = arguments.get("relpath"), arguments.get("content")
        document_type = arguments.get("document_type", "text/plain")
        problem = path_problem(relpath)
        if problem is None and not isinstance(content, str):
            problem = "content must be a string"
        if problem is None and document_type not in DOCUMENT_TYPES:
            problem = f"document_type must be one of {', '.join(DOCUMENT_TYPES)}"
        if problem is None and len(self.taken) >= self.limit:
            problem = f"this execution keeps at most {self.limit} artifacts"
        body = content.encode() if isinstance(content, str) else b""
        if problem is None and len(body) > MAX_BYTES:
            problem = f"an artifact holds at most {MAX_BYTES} bytes"
        if problem is None and relpath in self.taken:
            problem = f"{relpath} was written already"
        if problem is not None:
            return ToolResult.failed(problem)
        self.taken.append(str(relpath))  # before the store is reached: the concurrent calls of one round count too
        try:
            artifact = await self.records.save_artifact(self.execution, str(relpath), str(document_type), body)
        except BaseException:
            self.taken.remove(str(relpath))
            raise
        self.written.append(artifact)
        keep = ("artifact_id", "relpath_in_workspace", "size_bytes")
        return ToolResult(orjson.dumps({k: artifact[k] for k in keep}).decode())
