"""The guardrails policy: each detector (positive and negative), input mask and reject on both APIs, deny-lists,
the input size limit, a webhook on loopback (pass, mask, reject, timeouts open and closed), and output checks on
whole answers and on streams, with secrets split across chunks and streams stopped cleanly on a rejection."""

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import httpx2
import orjson
import pytest

from config.catalog import PolicySpec
from gateway.policy import PolicyConfigError, load_policy
from policies.pii import DETECTORS, Rules, TailMasker, deny_detector, iban_ok, luhn_ok
from tests.conftest import ADMIN_KEY, RESTRICTED, SPACE, catalogue
from tests.servers import serve

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
SECRETS = "mail ann@example.com, call +1 415 555 2671, card 4111 1111 1111 1111, iban DE89 3704 0044 0532 0130 00."
MASKED = "mail [EMAIL], call [PHONE], card [CARD], iban [IBAN]."
EVERYTHING = {"email": "mask", "phone": "mask", "card": "mask", "iban": "mask", "secret": "mask"}


def rules(**actions: str) -> Rules:
    return Rules([(d, a) for name, a in actions.items() for d in DETECTORS[name]])


@pytest.mark.parametrize(
    ("kind", "found", "not_found"),
    [
        ("email", ["ann@example.com", "first.last+tag@mail.example.co.uk"], ["ann@", "@example.com", "a@b", "x@y.z1"]),
        (
            "phone",
            ["+1 415 555 2671", "+44 20 7946 0958", "(415) 555-2671", "415-555-2671", "+4915112345678"],
            ["2024-01-15", "version 1.2.3", "12345678", "+12 34", "415 555 2671"],
        ),
        (
            "card",
            ["4111 1111 1111 1111", "4111-1111-1111-1111", "5555555555554444", "378282246310005"],
            ["4111 1111 1111 1112", "1234567812345678", "0000 0000 0000 0000", "4111 1111 1111"],
        ),
        (
            "iban",
            ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "FR1420041010050500013M02606"],
            ["DE89 3704 0044 0532 0130 01", "GB82 WEST 1234 5698 7654 33", "XX00 1234 5678 9012"],
        ),
        (
            "secret",
            ["sk-proj-abcdefghijklmnopqrstuvwx1234", "AKIAIOSFODNN7EXAMPLE", "tok Xq3bT9vLp2Wm8RzK4nHy6Jd1Fs5Gc7Ae0"],
            [
                "sk-short",
                "ThisIsAVeryLongIdentifierName2024Version",
                "0123456789abcdef0123456789abcdef01234567",  # a hex digest
                "c05bf97d-8571-4526-8ad9-fe3f1c896d0b",  # a UUID
                "https://example.com/some/long/path/to/a/Resource2024",
            ],
        ),
    ],
)
def test_detectors(kind, found, not_found):
    check = rules(**{kind: "mask"})
    for text in found:
        assert f"[{kind.upper()}]" in check.apply(f"x {text} y")[0], text
    for text in not_found:
        assert check.apply(f"x {text} y")[0] == f"x {text} y", text


def test_luhn_and_mod97():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("DE89370400440532013000") and not iban_ok("DE89370400440532013001")
    iban = rules(iban="mask")
    assert iban.apply("DE89 3704 0044 0532 0130 00 OK")[0] == "[IBAN] OK"  # a trailing word is not part of it


def test_deny_list_is_case_insensitive_on_word_boundaries():
    check = Rules([(deny_detector(["project hydra", "secretword"]), "mask")])
    assert check.apply("About PROJECT  Hydra, and SecretWord.")[0] == "About [REDACTED], and [REDACTED]."
    assert check.apply("hydration projects secretwords")[0] == "hydration projects secretwords"


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13])
def test_tail_masker_masks_across_every_chunk_boundary(size):
    check = Rules([*rules(**EVERYTHING).entries, (deny_detector(["project hydra"]), "mask")])
    text = SECRETS + " key sk-proj-abcdefghijklmnopqrstuvwx1234 about project hydra"
    want = check.apply(text)[0]
    for offset in range(size):
        masker, out = TailMasker(check), ""
        pieces = [text[:offset]] + [text[i : i + size] for i in range(offset, len(text), size)]
        for piece in pieces:
            released, reject = masker.feed(piece)
            assert reject is None
            out += released
        out += masker.flush()[0]
        assert out == want


def test_tail_masker_stops_at_a_rejected_match():
    masker = TailMasker(rules(card="reject"))
    released = ""
    for piece in ("pay 4111 11", "11 1111 1111 now", " and more text after it, long enough to pass the hold"):
        text, reject = masker.feed(piece)
        released += text
        if reject:
            break
    assert released == "pay " and reject is not None and reject.label == "a card number"


# --- through the gateway ------------------------------------------------------------------------------------
def guarded(upstream_url: str, upstream_model: str = "ok", **params: Any) -> dict[str, Any]:
    cat = catalogue(upstream_url, upstream_model)
    cat["tenants"][0]["policies"] = [{"use": "allow_list"}, {"use": "guardrails", **params}]
    return cat


def chat(base: str, content: str, model: str = "up", stream: bool = False, **extra: Any) -> httpx2.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream, **extra}
    return httpx2.post(base + "/v1/chat/completions", headers=AUTH, json=body)


def events(text: str) -> list[tuple[str | None, Any]]:
    """(event name, data) of each SSE event; data parsed as JSON unless it is [DONE]."""
    out = []
    for block in text.split("\n\n"):
        name = next((line[7:] for line in block.split("\n") if line.startswith("event: ")), None)
        data = "\n".join(line[6:] for line in block.split("\n") if line.startswith("data: "))
        if data:
            out.append((name, data if data == "[DONE]" else orjson.loads(data)))
    return out


def chat_text(stream: list[tuple[str | None, Any]]) -> str:
    parts = [e[1] for e in stream if e[1] != "[DONE]" and e[1].get("choices")]
    return "".join(p["choices"][0]["delta"].get("content") or "" for p in parts)


def test_input_is_masked_before_the_upstream_sees_it(start_gateway, upstream):
    base = start_gateway(guarded(upstream[1], input=EVERYTHING))
    r = chat(base, SECRETS + " key sk-proj-abcdefghijklmnopqrstuvwx1234")
    assert r.status_code == 200
    assert upstream[0].requests[-1]["messages"][0]["content"] == MASKED + " key [SECRET]"


def test_input_of_the_responses_api_is_masked_too(start_gateway, upstream):
    base = start_gateway(guarded(upstream[1], input={"email": "mask"}))
    body = {
        "model": "up",
        "instructions": "reply to boss@example.com",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "I am ann@example.com"}]}],
    }
    assert httpx2.post(base + "/v1/responses", headers=AUTH, json=body).status_code == 200
    sent = orjson.dumps(upstream[0].requests[-1]["messages"]).decode()
    assert "example.com" not in sent and "reply to [EMAIL]" in sent and "I am [EMAIL]" in sent


def test_instructions_given_as_items_are_checked_too(start_gateway, upstream):
    base = start_gateway(guarded(upstream[1], input={"email": "mask"}))
    instructions = [{"role": "developer", "content": [{"type": "input_text", "text": "cc boss@example.com"}]}]
    body = {"model": "up", "instructions": instructions, "input": "hi"}
    assert httpx2.post(base + "/v1/responses", headers=AUTH, json=body).status_code == 200
    sent = orjson.dumps(upstream[0].requests[-1]["messages"]).decode()
    assert "example.com" not in sent and "cc [EMAIL]" in sent


def test_input_reject_never_echoes_the_text_nor_calls_the_upstream(start_gateway, upstream):
    base = start_gateway(guarded(upstream[1], input={"card": "reject", "email": "mask"}))
    calls = len(upstream[0].requests)
    r = chat(base, "my card is 4111 1111 1111 1111")
    assert r.status_code == 403
    error = r.json()["error"]
    assert error["code"] == "guardrail_rejected" and "a card number" in error["message"]
    assert "4111" not in r.text and len(upstream[0].requests) == calls
    assert chat(base, "not a card: 4111 1111 1111 1112").status_code == 200  # fails the Luhn check
    r = httpx2.post(f"{base}/v1/spaces/{SPACE}/responses", headers=AUTH, json={"input": "4111111111111111"})
    assert r.status_code == 403 and "a card number" in r.json()["detail"]


def test_deny_list_and_maximum_input_size(start_gateway, upstream):
    base = start_gateway(guarded(upstream[1], input={"deny": ["Project Hydra"], "max_chars": 40}))
    r = chat(base, "tell me about project HYDRA")
    assert r.status_code == 403 and "a denied phrase" in r.json()["error"]["message"]
    assert chat(base, "hydration projects").status_code == 200
    r = chat(base, "x" * 41)
    assert r.status_code == 403 and "longer than the 40 characters" in r.json()["error"]["message"]


class Hook:
    """A guardrail webhook: rejects 'forbidden', masks 'mask-me', stalls on 'slow', fails on 'broken' (the last two
    with a reject the gateway must never act on)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = orjson.loads((await receive())["body"])
        self.seen.append(body)
        text, status = body["text"], 200
        answer: dict[str, Any] = {"action": "pass"}
        if "forbidden" in text:
            answer = {"action": "reject", "reason": "topic 7 is not allowed"}
        elif "mask-me" in text:
            answer = {"action": "mask", "text": text.replace("mask-me", "[HIDDEN]")}
        elif "slow" in text:  # too late: a reject here can only be seen if the timeout failed to cut it off
            await asyncio.sleep(1)
            answer = {"action": "reject", "reason": "too late"}
        elif "broken" in text:  # an error status: its reject body must not be read
            status, answer = 500, {"action": "reject", "reason": "broken"}
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
        )
        await send({"type": "http.response.body", "body": orjson.dumps(answer)})


@pytest.fixture(scope="module")
def hook() -> Iterator[tuple[Hook, str]]:
    app = Hook()
    with serve(app, lifespan=False) as url:
        yield app, url


def test_webhook_passes_masks_rejects_and_fails_open_or_closed(start_gateway, upstream, hook):
    cat = catalogue(upstream[1], "pieces-4")
    main, restricted = cat["tenants"][0]["spaces"]
    webhook = {"url": hook[1] + "/check", "timeout_seconds": 0.2}
    main["policies"] = [{"use": "guardrails", "input": {"webhook": {**webhook, "fail": "open"}}}]
    restricted["policies"] = [{"use": "guardrails", "input": {"webhook": webhook}}]  # fail: closed by default
    base = start_gateway(cat)
    assert chat(base, "all fine").status_code == 200
    assert hook[0].seen[-1] == {
        "direction": "input",
        "text": "all fine",
        "tenant_id": cat["tenants"][0]["id"],
        "space_id": SPACE,
        "route": "chat.completions",
    }
    assert chat(base, "please mask-me now").json()["choices"][0]["message"]["content"] == "please [HIDDEN] now"
    r = chat(base, "a forbidden topic")
    assert r.status_code == 403 and r.json()["error"]["message"].endswith("topic 7 is not allowed.")
    assert chat(base, "slow answer").status_code == 200  # timed out, fail open
    assert chat(base, "broken hook").status_code == 200
    closed = {"x-space-id": RESTRICTED}
    body = {"model": "fake-echo", "messages": [{"role": "user", "content": "slow answer"}]}
    r = httpx2.post(base + "/v1/chat/completions", headers={**AUTH, **closed}, json=body)
    assert r.status_code == 503 and r.json()["error"]["code"] == "guardrail_unavailable"
    policy = base.app.state.gateway.chains[SPACE].policies[0]
    session = policy._session
    chat(base, "again")
    assert policy._session is session and not session.closed  # one session per policy, not per request


def test_output_is_masked_in_whole_answers(start_gateway, upstream, hook):
    output = {**EVERYTHING, "webhook": {"url": hook[1], "timeout_seconds": 2}}
    base = start_gateway(guarded(upstream[1], "pieces-4", output=output))
    r = chat(base, SECRETS + " mask-me")
    assert r.json()["choices"][0]["message"]["content"] == MASKED + " [HIDDEN]"
    assert int(r.headers["content-length"]) == len(r.content)
    assert hook[0].seen[-1]["direction"] == "output"
    r = httpx2.post(base + "/v1/responses", headers=AUTH, json={"model": "fake-echo", "input": SECRETS})
    assert r.json()["output"][0]["content"][0]["text"] == MASKED
    r = httpx2.post(f"{base}/v1/spaces/{SPACE}/responses", headers=AUTH, json={"input": SECRETS})
    assert r.json()["data"]["output"][0]["content"][0]["text"] == MASKED


def test_output_reject_replaces_a_whole_answer(start_gateway, upstream):
    base = start_gateway(guarded(upstream[1], output={"card": "reject"}))
    r = chat(base, "card 4111 1111 1111 1111", model="fake-echo")
    assert r.status_code == 403 and r.json()["error"]["code"] == "guardrail_rejected" and "4111" not in r.text


def test_a_secret_split_over_chat_chunks_is_still_masked(start_gateway, upstream):
    base = start_gateway(guarded(upstream[1], "pieces-3", output=EVERYTHING))
    r = chat(base, SECRETS, stream=True)
    stream = events(r.text)
    deltas = [e[1]["choices"][0]["delta"].get("content") for e in stream if e[1] != "[DONE]" and e[1]["choices"]]
    assert chat_text(stream) == MASKED and stream[-1][1] == "[DONE]"
    assert not any("@" in (d or "") or "4111" in (d or "") for d in deltas)
    r = chat(base, "write to ann@example.com", model="fake-echo", stream=True)  # the product's fake, word by word
    assert chat_text(events(r.text)) == "write to [EMAIL]"


def test_a_secret_split_over_responses_deltas_is_still_masked(start_gateway, upstream):
    base = start_gateway(guarded(upstream[1], "pieces-3", output=EVERYTHING))
    r = httpx2.post(base + "/v1/responses", headers=AUTH, json={"model": "up", "input": SECRETS, "stream": True})
    stream = events(r.text)
    assert [e[1]["sequence_number"] for e in stream] == list(range(len(stream)))
    deltas = [e[1]["delta"] for e in stream if e[0] == "response.output_text.delta"]
    assert "".join(deltas) == MASKED and not any("@" in d for d in deltas)
    done = next(e[1] for e in stream if e[0] == "response.output_text.done")
    assert done["text"] == MASKED
    assert stream[-1][0] == "response.completed"
    assert stream[-1][1]["response"]["output"][0]["content"][0]["text"] == MASKED
    response_id = stream[-1][1]["response"]["id"]
    stored = httpx2.get(f"{base}/v1/responses/{response_id}", headers=AUTH).json()
    assert stored["output"][0]["content"][0]["text"] == MASKED  # what the gateway keeps is masked too
    replay = httpx2.get(f"{base}/v1/responses/{response_id}", headers=AUTH, params={"stream": "true"})
    assert "@" not in replay.text  # the unfiltered event log was not kept


def test_a_rejected_stream_stops_cleanly(start_gateway, upstream):
    base = start_gateway(guarded(upstream[1], "pieces-3", output={"card": "reject"}))
    r = chat(base, "here it is: 4111 1111 1111 1111 and then more words", stream=True)
    stream = events(r.text)
    assert r.status_code == 200 and "[DONE]" not in [e[1] for e in stream]
    assert stream[-1][1]["error"]["code"] == "guardrail_rejected" and "4111" not in r.text
    assert chat_text(stream[:-1]) == "here it is: "
    r = httpx2.post(
        base + "/v1/responses", headers=AUTH, json={"model": "up", "input": "pay 4111111111111111", "stream": True}
    )
    stream = events(r.text)
    assert [e[1]["sequence_number"] for e in stream] == list(range(len(stream)))
    assert stream[-1][0] == "response.failed" and stream[-1][1]["response"]["error"]["code"] == "guardrail_rejected"
    assert "4111" not in r.text


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"input": {"email": "hide"}}, "input.email: Input should be 'mask' or 'reject'"),
        ({"input": {"deny": ["ok", " "]}}, "deny-list entries must not be blank"),
        ({"output": {"webhook": {"url": "not a url"}}}, "output.webhook.url"),
        ({"output": {"max_chars": 5}}, "output.max_chars: Extra inputs are not permitted"),
    ],
)
def test_params_are_checked_at_start(params, message):
    with pytest.raises(PolicyConfigError, match=re.escape(message)):
        load_policy(PolicySpec(use="guardrails", **params))
