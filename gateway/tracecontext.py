"""W3C Trace Context (https://www.w3.org/TR/trace-context/): what a caller's ``traceparent`` and ``tracestate``
headers say, read defensively (bounded, validated, a duplicate ``traceparent`` trusted by no one)."""

import re

from starlette.types import Scope

# W3C Trace Context: version-traceid-parentid-flags, lowercase hex; a later version may append fields
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[ -~]*)?")
_STATE_MEMBER = re.compile(
    r"[a-z0-9][_0-9a-z\-*/]{0,240}(?:@[a-z][_0-9a-z\-*/]{0,13})?=[ -+\--<>-~]{0,255}[!-+\--<>-~]"
)
_HEADER_MAX = 512  # longer trace context headers are not read at all


def parse_traceparent(value: str) -> tuple[str, str, bool] | None:
    """A ``traceparent`` header's (trace id, parent span id, sampled), or None for anything invalid (then the
    gateway starts a trace of its own)."""
    found = _TRACEPARENT.fullmatch(value) if len(value) <= _HEADER_MAX else None
    if found is None:
        return None
    version, trace, parent, flags, rest = found.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace == "0" * 32 or parent == "0" * 16:
        return None
    return trace, parent, bool(int(flags, 16) & 1)


def parse_tracestate(value: str) -> str:
    """A ``tracestate`` header as sent on (members trimmed), or "" when any member is invalid or too many."""
    if len(value) > _HEADER_MAX:
        return ""
    members = [m.strip(" \t") for m in value.split(",")]
    members = [m for m in members if m]
    if len(members) > 32 or not all(_STATE_MEMBER.fullmatch(m) for m in members):
        return ""
    return ",".join(members)


def caller_context(scope: Scope) -> tuple[str, str, bool, str] | None:
    """The caller's (trace id, parent span id, sampled, trace state), when it sent a valid ``traceparent``."""
    headers = scope["headers"]
    if b"traceparent" not in dict(headers):  # most requests: one pass in C, not a loop over the headers
        return None
    parent = state = None
    for key, value in headers:
        if key == b"traceparent":
            if parent is not None:  # two of them: neither is to be trusted
                return None
            parent = value
        elif key == b"tracestate":
            state = value if state is None else state + b"," + value
    found = parse_traceparent(parent.decode("latin-1")) if parent is not None else None
    if found is None:
        return None
    return (*found, parse_tracestate(state.decode("latin-1")) if state is not None else "")
