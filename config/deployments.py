"""Provider deployments of a tenant model, and how a request picks among them (fallbacks, weights, retries,
timeouts, circuit breaking)."""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

# Named provider types served through the litellm bridge; ``litellm`` itself takes a full litellm model string.
LITELLM_TYPES = ("litellm", "anthropic", "gemini", "vertex_ai", "bedrock", "mistral", "cohere", "groq", "azure")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Strict):
    """Seconds. Unset values fall back to the process settings (``GATEWAY_UPSTREAM_*_TIMEOUT``)."""

    connect: float | None = Field(None, gt=0, description="to open the connection")
    first_byte: float | None = Field(None, gt=0, description="to the whole answer, or a stream's first chunk")
    idle: float | None = Field(None, gt=0, description="longest silence while reading")


class _Deployment(_Strict):
    model: str = Field(min_length=1, description="Model name sent upstream.")
    weight: int = Field(1, ge=0, description="Share of traffic under routing.strategy=weighted.")
    timeouts: Timeouts = Timeouts()


class OpenAIDeployment(_Deployment):
    """Any OpenAI-compatible upstream: OpenAI, Azure-style base URLs, vLLM, llama.cpp, Ollama, Groq…"""

    type: Literal["openai"]
    api: Literal["chat", "responses"] = Field(
        "chat", description="chat: Responses requests are translated to Chat Completions; responses: sent natively."
    )
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str | None = Field(None, description="Environment variable holding the upstream key.")


class LiteLLMDeployment(_Deployment):
    """Any provider litellm speaks. ``type: litellm`` takes a litellm model string (``anthropic/claude-…``);
    a named type (``anthropic``, ``gemini``, …) prefixes ``model`` with itself."""

    type: Literal["litellm", "anthropic", "gemini", "vertex_ai", "bedrock", "mistral", "cohere", "groq", "azure"]
    base_url: str | None = Field(None, description="The provider's API base, when not its public one.")
    api_key_env: str | None = None


class FakeDeployment(_Deployment):
    """The deterministic in-process provider; ``model`` picks its behaviour (see docs/config.md)."""

    type: Literal["fake"]
    model: str = "echo"


Deployment = Annotated[OpenAIDeployment | LiteLLMDeployment | FakeDeployment, Field(discriminator="type")]


class Breaker(_Strict):
    """Eject a deployment after ``failures`` retryable failures within ``window`` seconds, for ``cooldown``
    seconds; then one probe request decides whether it comes back."""

    failures: int = Field(5, ge=1)
    window: float = Field(30.0, gt=0)
    cooldown: float = Field(30.0, gt=0)


class Routing(_Strict):
    strategy: Literal["fallback", "weighted"] = Field(
        "fallback", description="fallback: deployments in order; weighted: random by weight, the rest as fallbacks"
    )
    retries: int = Field(1, ge=0, le=5, description="Extra attempts on one deployment before moving on.")
    backoff: float = Field(0.2, ge=0, description="Base of the exponential backoff (seconds, with jitter).")
    max_retry_after: float = Field(10.0, ge=0, description="Longest upstream Retry-After waited for.")
    breaker: Breaker = Breaker()
