"""Providers: how a tenant model's deployment is reached. One module per provider type."""

import aiohttp

from config.deployments import Timeouts
from gateway.providers.base import Provider, UpstreamStream
from gateway.providers.fake import FakeProvider
from gateway.providers.litellm_bridge import LiteLLMProvider
from gateway.providers.openai import OpenAIProvider

__all__ = ["Provider", "UpstreamStream", "build_providers"]


def build_providers(session: aiohttp.ClientSession, defaults: Timeouts) -> dict[str, Provider]:
    """One provider per deployment family, sharing the process's upstream session. The litellm bridge
    imports litellm only when its first deployment is called."""
    return {"openai": OpenAIProvider(session, defaults), "fake": FakeProvider(), "litellm": LiteLLMProvider(defaults)}
