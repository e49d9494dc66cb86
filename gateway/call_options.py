"""Request fields that would choose how the gateway calls its upstream: refused at the edge of every route.

Where the gateway connects, which credential it sends, which provider or API version it speaks and which headers
ride along are the deployment's, never the caller's. litellm reads such options from its keyword arguments
(``api_base``, ``api_key``, ``extra_headers``, ``custom_llm_provider``, ``aws_*``, ``mock_response``, …), and
an OpenAI-compatible upstream may honour some of them too, so a body carrying one is refused with 400 naming the
field (422 on native routes). None of these is an OpenAI request field, and the OpenAI SDKs never send them:
their ``extra_body`` / ``extra_headers`` arguments are merged by the SDK, not sent as fields. The litellm bridge
additionally forwards only an allow-list of OpenAI fields, so an option litellm learns later cannot open a hole.
"""

from typing import Any

from gateway.errors import InvalidRequest

REFUSED = frozenset(
    """
    base_url url endpoint deployment_id api_key_env user_config headers custom_llm_provider provider
    model_list fallbacks context_window_fallbacks content_policy_fallbacks num_retries max_retries timeout
    request_timeout stream_timeout client http_client organization project region_name location tenant_id
    client_id client_secret credentials secret_fields input_cost_per_token output_cost_per_token
    input_cost_per_second output_cost_per_second cost_per_token proxy_server_request preset_cache_key
    hf_model_name custom_prompt_dict model_info caching cache no-log drop_params additional_drop_params
    allowed_openai_params acompletion callbacks logger_fn
    """.split()
)
REFUSED_PREFIXES = (
    "api_", "aws_", "azure_", "vertex_", "vertexai_", "watsonx_", "litellm_", "mock_", "extra_", "ssl_",
    "bedrock_", "sagemaker_", "google_", "gcp_", "oci_", "databricks_", "openrouter_", "anthropic_",
)  # fmt: skip
MAX_NAME = 64  # a field name echoed in an error is cut to this many characters


def refuse_call_options(body: dict[str, Any]) -> None:
    """Raise ``InvalidRequest`` for the first top-level field that would set an upstream call option."""
    for key in body:
        if key in REFUSED or key.startswith(REFUSED_PREFIXES):
            name = key[:MAX_NAME]
            raise InvalidRequest(
                f"'{name}' cannot be set by a request: the upstream, its credentials and call options are the "
                "deployment's.",
                param=name,
                code="unsupported_parameter",
            )
