"""Providers: how a tenant model's deployment is reached. One module per provider type."""

import aiohttp

from gateway.providers.base import Provider, UpstreamStream
from gateway.providers.fake import FakeProvider
from gateway.providers.openai import OpenAIProvider

__all__ = ["Provider", "UpstreamStream", "build_providers"]


def build_providers(session: aiohttp.ClientSession) -> dict[str, Provider]:
    """One provider instance per deployment ``type``, sharing the process's upstream session."""
    return {"openai": OpenAIProvider(session), "fake": FakeProvider()}
