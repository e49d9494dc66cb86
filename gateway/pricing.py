"""Money: token usage priced per tenant model, kept as integer micro-dollars, shown as 6-decimal strings.

A tenant model's ``pricing`` in the catalogue wins; a model without one is priced from litellm's bundled price
map, read once at start straight from the file inside the installed package (litellm itself is not imported,
and nothing touches the network). A model found in neither costs 0 and is logged once at start.
"""

import importlib.util
import json
import logging
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from config.catalog import Catalogue, Pricing, TenantModel
from gateway.context import Usage

log = logging.getLogger("gateway.pricing")
_PRICE_MAP = "model_prices_and_context_window_backup.json"


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
    # (USD per 1e6 tokens) × tokens = micro-dollars, exactly
    total = (
        (usage.input_tokens - cached) * pricing.input_per_mtok
        + cached * cached_price
        + (usage.output_tokens - reasoning) * pricing.output_per_mtok
        + reasoning * reasoning_price
    )
    return int(total.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def usd(micros: int) -> str:
    """Micro-dollars as the 6-decimal string the native API shows (``"0.000150"``)."""
    return f"{Decimal(micros) / Decimal(1_000_000):.6f}"


def _bundled_price_map() -> dict[str, Any]:
    spec = importlib.util.find_spec("litellm")
    if spec is None or spec.origin is None:
        return {}
    path = Path(spec.origin).parent / _PRICE_MAP
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _from_map(entry: dict[str, Any]) -> Pricing | None:
    def per_mtok(key: str) -> Decimal | None:
        value = entry.get(key)
        return None if value is None else Decimal(str(value)) * 1_000_000

    inp, out = per_mtok("input_cost_per_token"), per_mtok("output_cost_per_token")
    if inp is None or out is None:
        return None
    return Pricing(
        input_per_mtok=inp, output_per_mtok=out, cached_input_per_mtok=per_mtok("cache_read_input_token_cost")
    )


class PriceBook:
    """The price of every tenant model, resolved once at start."""

    def __init__(self, catalogue: Catalogue) -> None:
        self._prices: dict[object, Pricing | None] = {}
        unpriced = (m for t in catalogue.tenants for m in t.models if m.pricing is None)
        table = _bundled_price_map() if any(m.deployments[0].type != "fake" for m in unpriced) else {}
        for tenant in catalogue.tenants:
            for model in tenant.models:
                self._prices[model.id] = model.pricing or _lookup(table, model)

    def pricing(self, model: TenantModel | None) -> Pricing | None:
        return None if model is None else self._prices.get(model.id)

    def cost(self, model: TenantModel | None, usage: Usage | None) -> int:
        return cost_micros(usage, self.pricing(model))


def _lookup(table: dict[str, Any], model: TenantModel) -> Pricing | None:
    dep = model.deployments[0]
    if dep.type == "fake":
        return None
    names = [dep.model, f"{dep.type}/{dep.model}", dep.model.split("/", 1)[-1]]
    for name in names:
        entry = table.get(name)
        if isinstance(entry, dict) and (pricing := _from_map(entry)) is not None:
            return pricing
    log.warning("no price for tenant model %s (%s): its usage is counted at 0", model.alias, dep.model)
    return None
