"""Providers: how a tenant model's deployment is reached. One module per provider family, and one table
(``FAMILY``) saying which family serves each deployment type of the catalogue."""

from typing import get_args

import aiohttp

from config.deployments import FakeDeployment, LiteLLMDeployment, OpenAIDeployment, Timeouts
from gateway.providers.base import Provider, ResponsesProvider, UpstreamStream
from gateway.providers.fake import FakeProvider
from gateway.providers.litellm_bridge import LiteLLMProvider
from gateway.providers.openai import OpenAIProvider

__all__ = ["FAMILY", "Provider", "ResponsesProvider", "UpstreamStream", "build_providers", "by_type"]


def _types(deployment: type[OpenAIDeployment | LiteLLMDeployment | FakeDeployment]) -> tuple[str, ...]:
    return get_args(deployment.model_fields["type"].annotation)


# Every ``type`` a deployment may have (config.deployments) and the provider family that serves it. A type the
# catalogue accepts but this table does not name is an error when the first app is built, never a silent
# fallback to some provider at request time.
FAMILY: dict[str, str] = {
    **{t: "openai" for t in _types(OpenAIDeployment)},
    **{t: "litellm" for t in _types(LiteLLMDeployment)},
    **{t: "fake" for t in _types(FakeDeployment)},
}


def by_type(families: dict[str, Provider]) -> dict[str, Provider]:
    """The providers keyed by every deployment type, given one provider per family; refuses a gap."""
    missing = sorted(t for t, family in FAMILY.items() if family not in families)
    if missing:
        raise RuntimeError(f"no provider for deployment types {missing}")
    return {t: families[family] for t, family in FAMILY.items()}


def build_providers(session: aiohttp.ClientSession, defaults: Timeouts) -> dict[str, Provider]:
    """The providers by deployment type: one per family, sharing the process's upstream session. The litellm
    bridge imports litellm only when its first deployment is called."""
    families: dict[str, Provider] = {
        "openai": OpenAIProvider(session, defaults),
        "fake": FakeProvider(),
        "litellm": LiteLLMProvider(defaults),
    }
    return by_type(families)
