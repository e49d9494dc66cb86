"""``GET /v1/spaces/{space_id}/usage?from=YYYY-MM-DD&to=YYYY-MM-DD`` (also under ``/api-proxy``): a space's
spend counters (written by the ``cost`` policy) over a range of UTC days, in the native ``{"data": …}`` shape.

Any key with rights on the space may read it (admin or member); 401 / 403 / 404 / 422 as on the other native
routes. ``to`` defaults to today (UTC), ``from`` to 29 days before ``to``; at most 366 days per request.
"""

from datetime import date, timedelta
from typing import Any

from pydantic import TypeAdapter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.spaces import space_context, validated
from gateway.errors import InvalidRequest
from gateway.http import json_response
from gateway.pricing import usd
from gateway.runtime import Gateway
from gateway.spend import MAX_RANGE_DAYS, SpaceUsage, Totals, utc_today

_DATE: TypeAdapter[date] = TypeAdapter(date)


def _totals(t: Totals) -> dict[str, Any]:
    return {
        "cost_usd": usd(t.cost_micros),
        "input_tokens": t.input_tokens,
        "output_tokens": t.output_tokens,
        "requests": t.requests,
    }


def _by_agent(usage: SpaceUsage) -> list[dict[str, Any]]:
    """Spend per agent key, each with its versions' (from the ``key@version`` counters)."""
    versions: dict[str, list[dict[str, Any]]] = {}
    for name, totals in usage.by_agent_version.items():
        key, _, number = name.rpartition("@")
        if number.isdigit():
            versions.setdefault(key, []).append({"version": int(number), **_totals(totals)})
    out = []
    for key in sorted(usage.by_agent):
        listed = sorted(versions.get(key, []), key=lambda v: int(v["version"]))
        out.append({"agent_key": key, **_totals(usage.by_agent[key]), "by_version": listed})
    return out


def _range(request: Request) -> tuple[date, date]:
    raw_to, raw_from = request.query_params.get("to"), request.query_params.get("from")
    last: date = validated(_DATE, raw_to, ("query", "to")) if raw_to else utc_today()
    first: date = validated(_DATE, raw_from, ("query", "from")) if raw_from else last - timedelta(days=29)
    if first > last:
        raise InvalidRequest("'from' must not be after 'to'.", loc=("query", "from"), input=raw_from)
    if (last - first).days + 1 > MAX_RANGE_DAYS:
        raise InvalidRequest(
            f"The range may cover at most {MAX_RANGE_DAYS} days.", loc=("query", "from"), input=raw_from
        )
    return first, last


async def space_usage(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    ctx = space_context(gw, request.scope, "spaces.usage.read")
    first, last = _range(request)
    usage = await gw.spend.read_space(gw.store, ctx.tenant_id, ctx.space_id, first, last)
    tenant = ctx.principal.tenant
    by_model = []
    for model_id, totals in usage.by_model.items():
        model = gw.catalog.tenant_model(tenant, model_id)
        by_model.append({"tenant_model_id": model_id, "alias": model.alias if model else None, **_totals(totals)})
    by_key = [{"key_name": name, **_totals(totals)} for name, totals in usage.by_key.items()]
    by_agent = _by_agent(usage)
    data = {
        "space_id": ctx.space_id,
        "from": first.isoformat(),
        "to": last.isoformat(),
        **_totals(usage.total),
        "by_day": [{"date": day.isoformat(), **_totals(totals)} for day, totals in usage.by_day],
        "by_model": sorted(by_model, key=lambda m: (m["alias"] or "", m["tenant_model_id"])),
        "by_key": sorted(by_key, key=lambda k: k["key_name"]),
        "by_agent": by_agent,
    }
    return json_response({"data": data})


def routes(prefix: str) -> list[Route]:
    return [Route(prefix + "/v1/spaces/{space_id}/usage", space_usage, methods=["GET"])]
