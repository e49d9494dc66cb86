"""Any OpenAI-compatible upstream (OpenAI, vLLM, llama.cpp, Ollama, Groq…), spoken to directly over the
shared aiohttp session. Bodies go out as received but for the model name; answers come back untouched."""

import os
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import aiohttp

from config.catalog import OpenAIDeployment, TenantModel
from gateway.upstream import error_from_status, json_body, map_upstream_errors

_JSON = {"Content-Type": "application/json"}


class _Stream:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async with map_upstream_errors():
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def close(self) -> None:
        # Closing (not releasing) drops a connection whose stream was not read to the end.
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class OpenAIProvider:
    """The ``Provider`` for ``type: openai`` deployments."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self._targets: dict[UUID, tuple[str, dict[str, str], str | None]] = {}

    def _target(self, model: TenantModel) -> tuple[str, dict[str, str], str | None]:
        """URL, headers and credential of a deployment, resolved once (the credential from its env var)."""
        target = self._targets.get(model.id)
        if target is None:
            dep = model.deployment
            assert isinstance(dep, OpenAIDeployment)
            secret = os.environ.get(dep.api_key_env) if dep.api_key_env else None
            headers = dict(_JSON)
            if secret:
                headers["Authorization"] = f"Bearer {secret}"
            target = self._targets[model.id] = (
                dep.base_url.rstrip("/") + "/chat/completions",
                headers,
                secret,
            )
        return target

    async def chat(self, model: TenantModel, body: dict[str, Any]) -> bytes:
        url, headers, secret = self._target(model)
        async with map_upstream_errors():
            async with self.session.post(url, data=json_body(body), headers=headers) as resp:
                data = await resp.read()
                if resp.status >= 300:
                    raise error_from_status(resp.status, data, resp.headers.get("Retry-After"), secret)
                return data

    async def open_stream(self, model: TenantModel, body: dict[str, Any]) -> _Stream:
        url, headers, secret = self._target(model)
        async with map_upstream_errors():
            resp = await self.session.post(url, data=json_body(body), headers=headers)
            if resp.status >= 300:
                try:
                    data = await resp.read()
                finally:
                    resp.release()
                raise error_from_status(resp.status, data, resp.headers.get("Retry-After"), secret)
        return _Stream(resp)
