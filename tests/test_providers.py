"""The provider table: every deployment type the catalogue accepts is served by a named provider family, and a
gap is an error when the app is built, never a silent fallback at request time."""

import pytest

from config.deployments import Deployment
from gateway.providers import FAMILY, ResponsesProvider, by_type
from gateway.providers.fake import FakeProvider
from gateway.providers.litellm_bridge import LiteLLMProvider
from gateway.providers.openai import OpenAIProvider


def test_every_catalogue_type_has_a_family():
    from typing import get_args

    union = get_args(get_args(Deployment)[0])
    accepted = {t for cls in union for t in get_args(cls.model_fields["type"].annotation)}
    assert accepted == set(FAMILY)
    assert FAMILY["openai"] == "openai" and FAMILY["fake"] == "fake"
    assert {FAMILY[t] for t in ("anthropic", "gemini", "bedrock", "litellm")} == {"litellm"}


def test_a_missing_family_is_refused():
    with pytest.raises(RuntimeError, match="no provider for deployment types"):
        by_type({"openai": OpenAIProvider.__new__(OpenAIProvider), "fake": FakeProvider()})


def test_the_responses_capability_is_declared_not_assumed():
    assert isinstance(OpenAIProvider.__new__(OpenAIProvider), ResponsesProvider)
    assert not isinstance(FakeProvider(), ResponsesProvider)
    assert not isinstance(LiteLLMProvider.__new__(LiteLLMProvider), ResponsesProvider)
