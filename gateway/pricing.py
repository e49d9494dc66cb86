"""Money: token usage priced per tenant model, kept as integer micro-dollars, shown as 6-decimal strings."""

from decimal import ROUND_HALF_UP, Decimal

from config.catalog import Pricing
from gateway.context import Usage

_MICROS_PER_MTOK = Decimal(1)  # (USD per 1e6 tokens) × tokens = micro-dollars, exactly


def cost_micros(usage: Usage | None, pricing: Pricing | None) -> int:
    """Input, cached input, output and reasoning tokens priced separately; rounded half-up to a micro-dollar.

    Cached tokens are part of ``input_tokens`` and reasoning tokens part of ``output_tokens`` (OpenAI's
    counting); each is billed at its own price when one is set, else at the plain rate."""
    if usage is None or pricing is None:
        return 0
    cached_price = (
        pricing.cached_input_per_mtok if pricing.cached_input_per_mtok is not None else pricing.input_per_mtok
    )
    reasoning_price = pricing.reasoning_per_mtok if pricing.reasoning_per_mtok is not None else pricing.output_per_mtok
    cached = min(usage.cached_input_tokens, usage.input_tokens)
    reasoning = min(usage.reasoning_tokens, usage.output_tokens)
    total = (
        (usage.input_tokens - cached) * pricing.input_per_mtok
        + cached * cached_price
        + (usage.output_tokens - reasoning) * pricing.output_per_mtok
        + reasoning * reasoning_price
    ) * _MICROS_PER_MTOK
    return int(total.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def usd(micros: int) -> str:
    """Micro-dollars as the 6-decimal string the native API shows (``"0.000150"``)."""
    return f"{Decimal(micros) / Decimal(1_000_000):.6f}"
