"""guardrails: input and output checks that pass, mask or reject.

Built-in detectors (e-mail, phone, card numbers with the Luhn check, IBANs with the mod-97 check, API-key-like
secrets), a deny-list of words and phrases, a maximum input size, and a webhook. Input checks run in
``before_call`` on the text each model call sends: the request's, and in the tool loop the tool outputs fed back
(masking rewrites ``call.body`` in place; a rejection is a 403 ``guardrail_rejected`` that never quotes the text,
or, between rounds, ends the response ``incomplete``); output checks run on the answer through ``wrap_send``
(policies/guard_output.py), on streams too.
"""

import asyncio
import logging
from typing import Any, Literal

import aiohttp
import orjson
from pydantic import AnyHttpUrl, Field, field_validator
from starlette.types import Send

from gateway import GatewayError, ModelCall, PermissionDenied, Policy, PolicyParams, RequestContext
from policies.guard_output import OutputGuard
from policies.pii import DETECTORS, Action, Detector, Rules, deny_detector, masked

log = logging.getLogger("gateway.policy.guardrails")
DETECTOR_NAMES = ("email", "phone", "card", "iban", "secret")


class WebhookParams(PolicyParams):
    """POSTs ``{"direction", "text", "tenant_id", "space_id", "route"}``; the answer is
    ``{"action": "pass"|"mask"|"reject", "text"?: <masked text>, "reason"?: str}``."""

    url: AnyHttpUrl
    timeout_seconds: float = Field(2.0, gt=0, le=60)
    fail: Literal["open", "closed"] = "closed"
    headers: dict[str, str] = Field(default_factory=dict)


class Checks(PolicyParams):
    email: Action | None = None
    phone: Action | None = None
    card: Action | None = None
    iban: Action | None = None
    secret: Action | None = None
    deny: list[str] = Field(default_factory=list, description="words or phrases, case-insensitive, whole words")
    deny_action: Action = "reject"
    webhook: WebhookParams | None = None

    @field_validator("deny")
    @classmethod
    def _words(cls, value: list[str]) -> list[str]:
        if any(not w.strip() for w in value):
            raise ValueError("deny-list entries must not be blank")
        return value


class InputChecks(Checks):
    max_chars: int | None = Field(None, ge=1, description="the most characters of text a request may carry")


def build_rules(checks: Checks) -> Rules:
    entries: list[tuple[Detector, Action]] = []
    for name in DETECTOR_NAMES:
        action = getattr(checks, name)
        if action is not None:
            entries.extend((detector, action) for detector in DETECTORS[name])
    if checks.deny:
        entries.append((deny_detector(checks.deny), checks.deny_action))
    return Rules(entries)


def input_slots(body: dict[str, Any]) -> list[tuple[Any, Any]]:
    """Where a request keeps its text: Chat ``messages[*].content`` (strings and text parts), Responses ``input``
    (a string, or items' content and text parts, function call outputs) and ``instructions``."""
    slots: list[tuple[Any, Any]] = []
    for key in ("messages", "input", "instructions"):  # instructions may be a list of items, like input
        value = body.get(key)
        if isinstance(value, str):
            slots.append((body, key))
        for item in value if isinstance(value, list) else ():
            if isinstance(item, dict):
                _content_slots(item, slots)
    return slots


def _content_slots(item: dict[str, Any], slots: list[tuple[Any, Any]]) -> None:
    content = item.get("content")
    if isinstance(content, str):
        slots.append((item, "content"))
    for part in content if isinstance(content, list) else ():
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            slots.append((part, "text"))
    if item.get("type") == "function_call_output" and isinstance(item.get("output"), str):
        slots.append((item, "output"))


def refused(reason: str) -> PermissionDenied:
    return PermissionDenied(f"The request was rejected by a guardrail: {reason}.", code="guardrail_rejected")


class Webhook:
    """One configured webhook; the aiohttp session is its policy's, shared by every request."""

    def __init__(self, params: WebhookParams, policy: "Guardrails") -> None:
        self.url = str(params.url)
        self.fail = params.fail
        self.timeout = aiohttp.ClientTimeout(total=params.timeout_seconds)
        self.headers = {"content-type": "application/json", **params.headers}
        self.policy = policy

    async def check(self, ctx: RequestContext, direction: str, text: str) -> tuple[str, str | None]:
        """``(text, None)`` to go on with (maybe masked), ``(text, reason)`` to reject."""
        payload = {"direction": direction, "text": text, "tenant_id": ctx.tenant_id, "space_id": ctx.space_id}
        payload["route"] = ctx.route
        try:
            async with self.policy.session().post(
                self.url, data=orjson.dumps(payload), headers=self.headers, timeout=self.timeout
            ) as resp:
                answer = orjson.loads(await resp.read()) if resp.status == 200 else None
        except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError):
            answer = None
        action = answer.get("action") if isinstance(answer, dict) else None
        if action == "pass":
            return text, None
        if action == "mask" and isinstance(answer, dict) and isinstance(answer.get("text"), str):
            return answer["text"], None
        if action == "reject" and isinstance(answer, dict):
            reason = answer.get("reason")
            return text, (str(reason)[:200] if reason else "the guardrail webhook refused it")
        if self.fail == "open":
            log.warning("guardrail webhook %s failed or answered badly; passing (fail: open)", self.url)
            return text, None
        raise GatewayError(
            "The guardrail webhook is unavailable; try again shortly.", code="guardrail_unavailable", status_code=503
        )


class Guardrails(Policy):
    """Masks or rejects what the request and the answer carry. Without output checks the answer is never parsed."""

    name = "guardrails"

    class Params(PolicyParams):
        input: InputChecks = Field(default_factory=InputChecks)
        output: Checks = Field(default_factory=Checks)

    def __init__(self, params: PolicyParams) -> None:
        super().__init__(params)
        assert isinstance(params, Guardrails.Params)
        self.input_rules = build_rules(params.input)
        self.output_rules = build_rules(params.output)
        self.max_chars = params.input.max_chars
        self.input_hook = Webhook(params.input.webhook, self) if params.input.webhook else None
        self.output_hook = Webhook(params.output.webhook, self) if params.output.webhook else None
        self.checks_input = bool(self.input_rules or self.input_hook or self.max_chars)
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The policy's one HTTP session, opened on first use (inside the running loop)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _redact(self, text: str) -> str:
        """Every output finding masked, whatever its action: what the gateway may keep of an answer."""
        return masked(text, self.output_rules.findings(text))

    async def before(self, ctx: RequestContext) -> None:
        if self.output_rules:
            ctx.redactors.append(self._redact)

    async def before_call(self, ctx: RequestContext, call: ModelCall) -> None:
        if not self.checks_input:
            return None
        slots = [(holder, key) for holder, key in input_slots(call.body) if holder[key]]
        if self.max_chars is not None and sum(len(h[k]) for h, k in slots) > self.max_chars:
            raise refused(f"the input is longer than the {self.max_chars} characters allowed")
        if self.input_rules:
            for holder, key in slots:
                text, reject = self.input_rules.apply(holder[key])
                if reject is not None:
                    raise refused(f"the input contains {reject.label}")
                holder[key] = text
        if self.input_hook is not None and slots:
            hook = self.input_hook
            answers = await asyncio.gather(*(hook.check(ctx, "input", h[k]) for h, k in slots))
            for (holder, key), (text, reason) in zip(slots, answers, strict=True):
                if reason is not None:
                    raise refused(reason)
                holder[key] = text
        return None

    def wrap_send(self, ctx: RequestContext, send: Send) -> Send:
        if not (self.output_rules or self.output_hook):
            return send
        hook = self.output_hook
        webhook = None if hook is None or ctx.stream else (lambda text: hook.check(ctx, "output", text))
        return OutputGuard(self.output_rules, webhook, ctx, send)
