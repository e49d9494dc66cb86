"""The provider contract: one Chat Completions call to one deployment, whole or streamed, in OpenAI's format;
optionally (``ResponsesProvider``) one Responses API call.

Providers receive the request body as a dict (already carrying the deployment's model name) and answer with
OpenAI-compatible bytes, so the route can pass them to the caller without re-encoding. Every failure is a
``gateway.errors.UpstreamError``; a stream's failure before its first byte raises from ``open_stream``.
"""

from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

from config.deployments import Deployment


class UpstreamStream(Protocol):
    """An open upstream SSE stream. ``close`` must be called on every path (it releases the connection)."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def close(self) -> None: ...


class Provider(Protocol):
    """What every provider family does: Chat Completions, whole and streamed."""

    async def chat(self, deployment: Deployment, body: dict[str, Any]) -> bytes:
        """A non-streaming Chat Completion: the upstream's JSON body on success."""
        ...

    async def open_stream(self, deployment: Deployment, body: dict[str, Any]) -> UpstreamStream:
        """Start a streaming Chat Completion; raises before any byte is read when the upstream refuses."""
        ...


@runtime_checkable
class ResponsesProvider(Provider, Protocol):
    """An optional capability: OpenAI's Responses API spoken natively (deployments with ``api: responses``).
    Bodies and answers are in the Responses format; the same error and stream rules hold."""

    async def responses(self, deployment: Deployment, body: dict[str, Any]) -> bytes:
        """A non-streaming Response: the upstream's JSON body on success."""
        ...

    async def open_responses_stream(self, deployment: Deployment, body: dict[str, Any]) -> UpstreamStream:
        """Start a streaming Response; raises before any byte is read when the upstream refuses."""
        ...
