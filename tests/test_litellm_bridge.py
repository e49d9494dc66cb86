"""The litellm bridge: table tests of its translation boundary, a provider reached through it end to end
(Anthropic's Messages API on a loopback server), and the promise that nobody else pays for importing it."""

import subprocess
import sys

import litellm
import openai
import pytest

from config.deployments import LiteLLMDeployment, Timeouts
from gateway.errors import UpstreamError, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from gateway.providers.litellm_bridge import call_kwargs, error_from_litellm, litellm_model
from tests.conftest import ADMIN_KEY, catalogue

DEFAULTS = Timeouts(connect=10, first_byte=60, idle=30)


def dep(**kw: object) -> LiteLLMDeployment:
    return LiteLLMDeployment.model_validate({"type": "anthropic", "model": "claude-x", **kw})


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"type": "anthropic", "model": "claude-x"}, "anthropic/claude-x"),
        ({"type": "anthropic", "model": "anthropic/claude-x"}, "anthropic/claude-x"),
        ({"type": "litellm", "model": "bedrock/anthropic.claude-v2"}, "bedrock/anthropic.claude-v2"),
        ({"type": "gemini", "model": "gemini-2.0-flash"}, "gemini/gemini-2.0-flash"),
    ],
)
def test_model_strings(fields, expected):
    assert litellm_model(LiteLLMDeployment.model_validate(fields)) == expected


@pytest.mark.parametrize(
    ("body", "stream", "expected"),
    [
        (
            {
                "model": "alias",
                "messages": [{"role": "user", "content": "hi"}],
                "temperature": 0.2,
                "user": "u1",
                "metadata": {"a": "b"},
                "store": True,
            },
            False,
            {
                "model": "anthropic/claude-x",
                "messages": [{"role": "user", "content": "hi"}],
                "temperature": 0.2,
                "stream": False,
                "num_retries": 0,
                "drop_params": True,
                "timeout": 30,
                "api_base": None,
                "api_key": None,
            },
        ),
        (
            {
                "model": "alias",
                "messages": [],
                "stream": True,
                "stream_options": {"include_usage": False},
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "max_tokens": 5,
            },
            True,
            {
                "model": "anthropic/claude-x",
                "messages": [],
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "max_tokens": 5,
                "stream": True,
                "stream_options": {"include_usage": True},
                "num_retries": 0,
                "drop_params": True,
                "timeout": 30,
                "api_base": None,
                "api_key": None,
            },
        ),
    ],
)
def test_call_kwargs(body, stream, expected):
    assert call_kwargs(dep(), body, DEFAULTS, stream) == expected


def test_call_kwargs_credentials_and_base(monkeypatch):
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", "sk-ant-secret")
    kwargs = call_kwargs(
        dep(api_key_env="TEST_ANTHROPIC_KEY", base_url="http://h:1", timeouts={"idle": 5}),
        {"messages": []},
        DEFAULTS,
        False,
    )
    assert kwargs["api_key"] == "sk-ant-secret" and kwargs["api_base"] == "http://h:1" and kwargs["timeout"] == 5


HOSTILE = {
    "api_base": "http://127.0.0.1:9/v1",
    "base_url": "http://127.0.0.1:9/v1",
    "api_key": "sk-caller",
    "extra_headers": {"x": "y"},
    "custom_llm_provider": "openai",
    "aws_region_name": "x",
    "vertex_project": "x",
    "azure_ad_token": "x",
    "litellm_params": {"api_base": "http://127.0.0.1:9"},
    "mock_response": "pwned",
    "user_config": {"api_base": "http://127.0.0.1:9"},
    "extra_body": {"api_base": "http://127.0.0.1:9"},
    "a_field_from_a_future_litellm": 1,
}


@pytest.mark.parametrize("deployment", [{}, {"base_url": "http://h:1", "api_key_env": "TEST_ANTHROPIC_KEY"}])
def test_no_request_field_reaches_litellm_but_openai_ones(monkeypatch, deployment):
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", "sk-ant-secret")
    kwargs = call_kwargs(dep(**deployment), {"messages": [], "seed": 1, **HOSTILE}, DEFAULTS, False)
    assert not set(HOSTILE) & (set(kwargs) - {"api_base", "api_key"})
    assert kwargs["seed"] == 1
    assert kwargs["api_base"] == deployment.get("base_url")  # the deployment's, or None: litellm's default
    assert kwargs["api_key"] == ("sk-ant-secret" if deployment else None)


def _exc(cls: type, **kw: object) -> Exception:
    return cls(message="boom sk-ant-secret", llm_provider="anthropic", model="claude-x", **kw)


@pytest.mark.parametrize(
    ("exc", "kind", "status"),
    [
        (_exc(litellm.RateLimitError), UpstreamRejected, 429),
        (_exc(litellm.BadRequestError), UpstreamRejected, 400),
        (_exc(litellm.AuthenticationError), UpstreamError, 502),
        (_exc(litellm.InternalServerError), UpstreamError, 502),
        (_exc(litellm.ServiceUnavailableError), UpstreamUnavailable, 503),
        (_exc(litellm.Timeout), UpstreamTimeout, 504),
        (_exc(litellm.APIConnectionError), UpstreamUnavailable, 503),
        (ValueError("odd"), UpstreamError, 502),
    ],
)
def test_errors_map_by_the_same_rules_as_any_upstream(exc, kind, status):
    err = error_from_litellm(exc, "sk-ant-secret")
    assert type(err) is kind and err.status_code == status
    assert "sk-ant-secret" not in err.message


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_through_the_bridge(start_gateway, upstream, stream, monkeypatch):
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", "sk-ant-test")
    fake, url = upstream
    cat = catalogue(url)
    cat["tenants"][0]["models"][0]["deployment"] = {
        "type": "anthropic",
        "model": "claude-test",
        "base_url": url,
        "api_key_env": "TEST_ANTHROPIC_KEY",
    }
    base = start_gateway(cat)
    c = openai.OpenAI(base_url=base + "/v1", api_key=ADMIN_KEY, max_retries=0)
    messages = [{"role": "user", "content": "hello"}]
    if stream:
        chunks = list(
            c.chat.completions.create(
                model="up", messages=messages, stream=True, stream_options={"include_usage": True}
            )
        )
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "hi from claude"
        assert chunks[-1].usage.completion_tokens == 3
    else:
        answer = c.chat.completions.create(model="up", messages=messages)
        assert answer.choices[0].message.content == "hi from claude" and answer.usage.prompt_tokens == 5
    sent = fake.requests[-1]
    assert sent["model"] == "claude-test"
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]
    assert fake.headers[-1]["x-api-key"] == "sk-ant-test"


def test_a_gateway_without_litellm_deployments_never_imports_it(tmp_path):
    code = (
        "import sys, asyncio; from config import Settings; from gateway.app import create_app;"
        "app = create_app(Settings()); gw = app.state.gateway;"
        "asyncio.run(gw.start()); asyncio.run(gw.stop());"
        "print('litellm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
