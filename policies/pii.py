"""Detectors for the guardrails policy: e-mail addresses, phone numbers, card numbers (Luhn), IBANs (mod 97),
API-key-like secrets, and deny-listed phrases; finding them in text, masking them, and how much of a stream's
tail must be held back so that a match split over two chunks is still seen whole.

Every pattern has a bounded length (``max_len``), which is what makes masking across stream chunks exact:
text further than that from the end can no longer become part of a match.
"""

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

Action = Literal["mask", "reject"]
Validator = Callable[[str], int]  # the length of the valid part of a match (from its start), 0 when invalid


@dataclass(frozen=True, slots=True)
class Detector:
    kind: str  # also the mask: "[EMAIL]"
    label: str  # what a rejection says was found, never the text itself
    pattern: re.Pattern[str]
    max_len: int
    spaces: bool  # whether a match may contain whitespace
    valid: Validator | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    start: int
    end: int
    kind: str
    label: str
    action: Action

    @property
    def mask(self) -> str:
        return f"[{self.kind.upper()}]" if self.kind != "denied" else "[REDACTED]"


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(text: str) -> int:
    digits = "".join(ch for ch in text if ch.isdigit())
    return len(text) if 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_ok(digits) else 0


# ISO 13616 lengths of the countries that use IBANs; an unknown country is checked by mod 97 alone.
IBAN_LENGTHS = dict(
    (entry[:2], int(entry[2:]))
    for entry in (
        "AD24 AE23 AL28 AT20 AZ28 BA20 BE16 BG22 BH22 BR29 BY28 CH21 CR22 CY28 CZ24 DE22 DK18 DO28 EE20 EG29 "
        "ES24 FI18 FO18 FR27 GB22 GE22 GI23 GL18 GR27 GT28 HR21 HU28 IE22 IL23 IQ23 IS26 IT27 JO30 KW30 KZ20 "
        "LB28 LC32 LI21 LT20 LU20 LV21 MC27 MD24 ME22 MK19 MR27 MT31 MU30 NL18 NO15 PK24 PL28 PS29 PT25 QA29 "
        "RO24 RS22 SA24 SC31 SE24 SI19 SK24 SM27 ST25 SV28 TL23 TN24 TR26 UA29 VA22 VG24 XK20"
    ).split()
)


def iban_ok(iban: str) -> bool:
    """The ISO 7064 mod-97 check of a compact IBAN (no spaces)."""
    if not 15 <= len(iban) <= 34:
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _iban(text: str) -> int:
    want = IBAN_LENGTHS.get(text[:2])
    if want is None:
        return len(text) if iban_ok(text.replace(" ", "")) else 0
    count = 0
    for i, ch in enumerate(text):  # the first ``want`` characters, ignoring spaces: a trailing word is not part of it
        if ch != " ":
            count += 1
            if count == want:
                return i + 1 if iban_ok(text[: i + 1].replace(" ", "")) else 0
    return 0


def _phone(text: str) -> int:
    return len(text) if 8 <= sum(ch.isdigit() for ch in text) <= 15 else 0


def entropy(text: str) -> float:
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


def _random_token(text: str) -> int:
    """Long tokens that look random: upper and lower case and digits, mixed (not a CamelCase name ending in a year),
    and a high Shannon entropy. Hex digests and UUIDs (no upper case) never qualify."""
    if not (any(c.isupper() for c in text) and any(c.islower() for c in text) and any(c.isdigit() for c in text)):
        return 0
    switches = sum(a.isdigit() != b.isdigit() for a, b in zip(text, text[1:], strict=False))
    return len(text) if switches >= 4 and entropy(text) >= 4.0 else 0


_TOKEN_EDGE = r"(?<![A-Za-z0-9_+=-])", r"(?![A-Za-z0-9_+=-])"
_KEY_PREFIXES = "|".join(
    (
        r"sk-[A-Za-z0-9_-]{20,200}",  # OpenAI, Anthropic (sk-ant-…)
        r"(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,200}",  # Stripe
        r"(?:AKIA|ASIA)[A-Z0-9]{16}",  # AWS access key ids
        r"gh[pousr]_[A-Za-z0-9]{36,200}",
        r"github_pat_[A-Za-z0-9_]{22,200}",
        r"glpat-[A-Za-z0-9_-]{20,200}",
        r"xox[abprs]-[A-Za-z0-9-]{10,200}",  # Slack
        r"AIza[0-9A-Za-z_-]{35}",  # Google API keys
    )
)

DETECTORS: dict[str, tuple[Detector, ...]] = {
    "email": (
        Detector(
            "email",
            "an e-mail address",
            re.compile(
                r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9-]{1,63}\.){1,4}[A-Za-z]{2,24}"
                r"(?![\w-]|\.[A-Za-z0-9])"
            ),
            346,
            False,
        ),
    ),
    "phone": (
        Detector(
            "phone",
            "a phone number",
            re.compile(
                r"(?<![\w+])(?:\+[1-9]\d{0,2}(?:[ .-]?\(?\d{1,4}\)?){2,5}"
                r"|(?:\(\d{3}\) ?|\d{3}[.-])\d{3}[.-]\d{4})(?![\w-])"
            ),
            34,
            True,
            _phone,
        ),
    ),
    "card": (Detector("card", "a card number", re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)"), 37, True, _card),),
    "iban": (
        Detector(
            "iban",
            "an IBAN",
            re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])"),
            43,
            True,
            _iban,
        ),
    ),
    "secret": (
        Detector(
            "secret", "a secret key", re.compile(_TOKEN_EDGE[0] + f"(?:{_KEY_PREFIXES})" + _TOKEN_EDGE[1]), 211, False
        ),
        Detector(
            "secret",
            "a secret key",
            re.compile(_TOKEN_EDGE[0] + r"[A-Za-z0-9_+=-]{32,200}" + _TOKEN_EDGE[1]),
            200,
            False,
            _random_token,
        ),
    ),
}


def deny_detector(phrases: Sequence[str]) -> Detector:
    """One case-insensitive pattern for the phrases, on word boundaries; the words of a phrase may be separated by
    up to three whitespace characters."""
    words = [p.split() for p in phrases]
    parts = [r"\s{1,3}".join(re.escape(w) for w in ws) for ws in sorted(words, key=lambda ws: -len(" ".join(ws)))]
    pattern = re.compile(r"(?<!\w)(?:" + "|".join(parts) + r")(?!\w)", re.IGNORECASE)
    max_len = max(len("".join(ws)) + 3 * (len(ws) - 1) for ws in words)
    return Detector("denied", "a denied phrase", pattern, max_len, any(len(ws) > 1 for ws in words))


class Rules:
    """The detectors of one direction (input or output) with their actions."""

    def __init__(self, entries: Sequence[tuple[Detector, Action]]) -> None:
        self.entries = tuple(entries)
        self.space_bound = max((d.max_len for d, _ in self.entries if d.spaces), default=0)
        self.word_bound = max((d.max_len for d, _ in self.entries if not d.spaces), default=0)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def findings(self, text: str, pos: int = 0) -> list[Finding]:
        """Valid, non-overlapping matches from ``pos`` on (earlier text still counts as context), in order."""
        found: list[Finding] = []
        for detector, action in self.entries:
            for m in detector.pattern.finditer(text, pos):
                length = detector.valid(m.group()) if detector.valid else m.end() - m.start()
                if length:
                    found.append(Finding(m.start(), m.start() + length, detector.kind, detector.label, action))
        found.sort(key=lambda f: (f.start, -f.end))
        kept: list[Finding] = []
        for f in found:
            if not kept or f.start >= kept[-1].end:
                kept.append(f)
        return kept

    def apply(self, text: str) -> tuple[str, Finding | None]:
        """The text with every ``mask`` finding masked, and the first ``reject`` finding (if any)."""
        found = self.findings(text)
        reject = next((f for f in found if f.action == "reject"), None)
        return masked(text, found), reject

    def hold(self, text: str) -> int:
        """How many characters at the end of ``text`` could still become part of a match when more text arrives."""
        run = 0
        for ch in reversed(text[-self.word_bound :] if self.word_bound else ""):
            if ch.isspace():
                break
            run += 1
        return min(len(text), max(self.space_bound, run))


def masked(text: str, found: Sequence[Finding], offset: int = 0) -> str:
    """``text`` (which starts at ``offset`` of the text the findings were made in) with the mask findings replaced."""
    if not found:
        return text
    out: list[str] = []
    at = 0
    for f in found:
        if f.action == "mask":
            out.append(text[at : f.start - offset])
            out.append(f.mask)
            at = f.end - offset
    out.append(text[at:])
    return "".join(out)


class TailMasker:
    """Masks one streamed text (a Chat choice, a Responses content part) across chunk boundaries.

    ``feed`` returns the text that can be released now (masked) and keeps back the tail that could still be
    part of a match; ``flush`` releases the rest at the end. A ``reject`` finding stops the text: the text
    before it is returned along with the finding.
    """

    __slots__ = ("rules", "held", "context")
    CONTEXT = 8  # released characters kept so that look-behinds and word boundaries see what came before

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.held = ""
        self.context = ""

    def feed(self, text: str, final: bool = False) -> tuple[str, Finding | None]:
        buf = self.context + self.held + text
        base = len(self.context)
        found = self.rules.findings(buf, base)
        cut = len(buf) if final else max(base, len(buf) - self.rules.hold(buf))
        for f in found:
            if f.start < cut < f.end:
                cut = f.start
        released = [f for f in found if f.end <= cut]
        reject = next((f for f in released if f.action == "reject"), None)
        if reject is not None:
            cut = reject.start
            released = [f for f in released if f.end <= cut]
        out = masked(buf[base:cut], released, base)
        self.held = buf[cut:]
        self.context = buf[max(0, cut - self.CONTEXT) : cut]
        return out, reject

    def flush(self) -> tuple[str, Finding | None]:
        return self.feed("", final=True)
