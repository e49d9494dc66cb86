"""The bridge to every provider litellm speaks (Anthropic, Gemini, Bedrock, Vertex, Mistral, Cohere, …).

The only module that imports litellm, and only when the first such deployment is called, with its bundled
price map (``LITELLM_LOCAL_MODEL_COST_MAP``) so importing it never touches the network. None of litellm's
process-wide settings are used: every call passes what it needs (no retries of its own: ours decide).
Answers are re-encoded as OpenAI Chat Completions JSON / SSE, so routes treat them like any upstream's.
"""

import importlib
import os
from collections.abc import AsyncIterator
from typing import Any

import orjson

from config.deployments import Deployment, LiteLLMDeployment, Timeouts
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout, UpstreamUnavailable, redact_secret
from gateway.upstream import credential, error_from_status

# The OpenAI Chat Completions request fields a provider may see: an allow-list, so that no option litellm reads
# from its keyword arguments (api_base, api_key, extra_headers, aws_*, mock_response, ... and whatever a later
# release adds) can come from a request body. model, stream and stream_options are set by the bridge; store,
# metadata and user are the gateway's business.
FORWARDED = frozenset(
    """
    messages audio frequency_penalty function_call functions logit_bias logprobs max_completion_tokens max_tokens
    modalities n parallel_tool_calls prediction presence_penalty reasoning_effort response_format seed
    service_tier stop temperature tool_choice tools top_logprobs top_p verbosity web_search_options
    """.split()
)


def litellm_model(dep: LiteLLMDeployment) -> str:
    """``type: anthropic, model: claude-x`` → ``anthropic/claude-x``; ``type: litellm`` takes ``model`` as is."""
    if dep.type == "litellm" or dep.model.startswith(dep.type + "/"):
        return dep.model
    return f"{dep.type}/{dep.model}"


def call_kwargs(dep: LiteLLMDeployment, body: dict[str, Any], defaults: Timeouts, stream: bool) -> dict[str, Any]:
    """The arguments of ``litellm.acompletion`` for an OpenAI Chat Completions body (pure; table-tested)."""
    kwargs = {k: v for k, v in body.items() if k in FORWARDED}
    kwargs.update(model=litellm_model(dep), stream=stream, num_retries=0, drop_params=True)
    kwargs["timeout"] = dep.timeouts.idle or defaults.idle
    if stream:
        kwargs["stream_options"] = {"include_usage": True}
    # Always explicit: None lets litellm use the provider's own endpoint and environment, never anything else.
    kwargs["api_base"] = dep.base_url or None
    kwargs["api_key"] = credential(dep)
    return kwargs


def error_from_litellm(exc: Exception, secret: str | None) -> GatewayError:
    """A litellm exception as our error: provider statuses kept by the same rules as any upstream's."""
    name = type(exc).__name__
    # first line only: litellm messages may carry a traceback with local paths
    message = redact_secret(str(getattr(exc, "message", None) or exc).strip().split("\n", 1)[0], secret)[:300]
    if name in ("Timeout", "APITimeoutError") or isinstance(exc, TimeoutError):
        return UpstreamTimeout("Upstream did not answer in time.")
    if name == "APIConnectionError":
        return UpstreamUnavailable(f"Cannot reach the provider: {message}", status_code=503)
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and status >= 400:
        body = orjson.dumps({"error": {"message": message}})
        response = getattr(exc, "response", None)
        retry_after = response.headers.get("retry-after") if response is not None else None
        return error_from_status(status, body, retry_after)
    return UpstreamError(f"Provider call failed: {name}.")


class _Stream:
    def __init__(self, chunks: Any, secret: str | None) -> None:
        self._chunks = chunks
        self._secret = secret

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._chunks:
                yield b"data: " + chunk.model_dump_json(exclude_none=True).encode() + b"\n\n"
        except GatewayError:
            raise
        except Exception as exc:
            raise error_from_litellm(exc, self._secret) from None
        yield b"data: [DONE]\n\n"

    async def close(self) -> None:
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()


class LiteLLMProvider:
    """The ``Provider`` for litellm-backed deployment types."""

    def __init__(self, defaults: Timeouts) -> None:
        self.defaults = defaults
        self._litellm: Any = None

    def _lib(self) -> Any:
        if self._litellm is None:
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            lib: Any = importlib.import_module("litellm")
            lib.suppress_debug_info = True  # no "Give Feedback" banners on stdout; cosmetic only
            self._litellm = lib
        return self._litellm

    async def _call(self, deployment: Deployment, body: dict[str, Any], stream: bool) -> Any:
        assert isinstance(deployment, LiteLLMDeployment)
        kwargs = call_kwargs(deployment, body, self.defaults, stream)
        try:
            return await self._lib().acompletion(**kwargs)
        except Exception as exc:
            raise error_from_litellm(exc, kwargs.get("api_key")) from None

    async def chat(self, deployment: Deployment, body: dict[str, Any]) -> bytes:
        response = await self._call(deployment, body, stream=False)
        return response.model_dump_json(exclude_none=True).encode()  # type: ignore[no-any-return]

    async def open_stream(self, deployment: Deployment, body: dict[str, Any]) -> _Stream:
        chunks = await self._call(deployment, body, stream=True)
        return _Stream(chunks, credential(deployment))
