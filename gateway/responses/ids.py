"""Identifiers the gateway mints for Responses objects: a prefix and 32 random hex digits.

The prefixes follow OpenAI's (``resp_``, ``msg_``, ``fc_``, ``rs_``, ``call_``) so SDKs and logs that key on them
keep working; the random part is 128 bits from the OS so ids never collide across replicas.
"""

import os


def _new(prefix: str) -> str:
    return prefix + os.urandom(16).hex()


def new_response_id() -> str:
    """A response id: ``resp_`` + 32 hex digits."""
    return _new("resp_")


def new_message_id() -> str:
    """An output message item id: ``msg_`` + 32 hex digits."""
    return _new("msg_")


def new_function_call_id() -> str:
    """A function_call output item id: ``fc_`` + 32 hex digits (not the call id the tool output refers to)."""
    return _new("fc_")


def new_reasoning_id() -> str:
    """A reasoning output item id: ``rs_`` + 32 hex digits."""
    return _new("rs_")


def new_call_id() -> str:
    """A tool call id (``call_`` + 32 hex digits), for upstreams that stream a tool call without one."""
    return _new("call_")
