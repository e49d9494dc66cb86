"""Any OpenAI-compatible upstream (OpenAI, vLLM, llama.cpp, Ollama, Groq…), spoken to directly over the
shared aiohttp session. Bodies go out as received but for the model name; answers come back untouched."""

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp

from config.deployments import Deployment, OpenAIDeployment, Timeouts
from gateway.upstream import credential, error_from_status, json_body, map_upstream_errors

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


class _Target:
    __slots__ = ("url", "responses_url", "headers", "secret", "timeout")

    def __init__(self, dep: OpenAIDeployment, defaults: Timeouts) -> None:
        self.secret = credential(dep)
        self.url = dep.base_url.rstrip("/") + "/chat/completions"
        self.responses_url = dep.base_url.rstrip("/") + "/responses"
        self.headers = dict(_JSON)
        if self.secret:
            self.headers["Authorization"] = f"Bearer {self.secret}"
        t = dep.timeouts
        # only deployments with timeouts of their own pay for a per-request timeout object
        self.timeout = (
            aiohttp.ClientTimeout(total=None, connect=t.connect or defaults.connect, sock_read=t.idle or defaults.idle)
            if t.connect or t.idle
            else None
        )


class OpenAIProvider:
    """The ``Provider`` for ``type: openai`` deployments."""

    def __init__(self, session: aiohttp.ClientSession, defaults: Timeouts) -> None:
        self.session = session
        self.defaults = defaults
        self._targets: dict[int, _Target] = {}
        # with traces on (gateway.tracing): the headers with the call's trace context (W3C traceparent)
        self.trace_headers: Callable[[Mapping[str, str]], Mapping[str, str]] | None = None

    def _target(self, dep: Deployment) -> _Target:
        """URL, headers, credential and timeouts of a deployment, resolved once."""
        target = self._targets.get(id(dep))
        if target is None:
            assert isinstance(dep, OpenAIDeployment)
            target = self._targets[id(dep)] = _Target(dep, self.defaults)
        return target

    async def _post(self, t: _Target, body: dict[str, Any], url: str) -> aiohttp.ClientResponse:
        headers = t.headers if self.trace_headers is None else self.trace_headers(t.headers)
        if t.timeout is None:
            resp = await self.session.post(url, data=json_body(body), headers=headers)
        else:
            resp = await self.session.post(url, data=json_body(body), headers=headers, timeout=t.timeout)
        if resp.status >= 300:
            try:
                data = await resp.read()
            finally:
                resp.release()
            raise error_from_status(resp.status, data, resp.headers.get("Retry-After"), t.secret)
        return resp

    async def _whole(self, deployment: Deployment, body: dict[str, Any], responses: bool) -> bytes:
        t = self._target(deployment)
        async with map_upstream_errors():
            resp = await self._post(t, body, t.responses_url if responses else t.url)
            try:
                return await resp.read()
            finally:
                resp.release()

    async def _stream(self, deployment: Deployment, body: dict[str, Any], responses: bool) -> _Stream:
        t = self._target(deployment)
        async with map_upstream_errors():
            return _Stream(await self._post(t, body, t.responses_url if responses else t.url))

    async def chat(self, deployment: Deployment, body: dict[str, Any]) -> bytes:
        return await self._whole(deployment, body, responses=False)

    async def open_stream(self, deployment: Deployment, body: dict[str, Any]) -> _Stream:
        return await self._stream(deployment, body, responses=False)

    async def responses(self, deployment: Deployment, body: dict[str, Any]) -> bytes:
        """A non-streaming call to the upstream's own ``/responses`` (deployments with ``api: responses``)."""
        return await self._whole(deployment, body, responses=True)

    async def open_responses_stream(self, deployment: Deployment, body: dict[str, Any]) -> _Stream:
        return await self._stream(deployment, body, responses=True)
