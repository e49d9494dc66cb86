"""The Grafana dashboard (deploy/grafana/llm-gateway.json): every query names only metrics the gateway exports,
every metric family the gateway exports has a panel, and every query is valid PromQL (``promtool check rules``)."""

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from gateway.metrics import Metrics
from tests.test_metrics import promtool

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "llm-gateway.json"
# PromQL words that look like names: aggregations, functions (followed by "(", dropped anyway), keywords
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panel_exprs() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


def variable_queries() -> list[str]:
    return [v["query"]["query"] for v in dashboard()["templating"]["list"] if v["type"] == "query"]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers outside strings, label matchers, ranges and
    ``by``/``without`` lists, and not called as functions."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\$\w+", " ", expr)
    names = set()
    for match in IDENT.finditer(expr):
        rest = expr[match.end() :].lstrip()
        if not rest.startswith("(") and match.group() not in KEYWORDS:
            names.add(match.group())
    return names


def as_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables filled in, as Prometheus would receive it."""
    return expr.replace("$__rate_interval", "5m").replace("$space", ".*").replace("$model", ".*")


def test_the_extractor_reads_names_not_labels_or_functions():
    expr = 'histogram_quantile(0.9, sum by (le, op) (rate(a_bucket{op=~"x|y", b="c{d}"}[$__rate_interval]))) / b_total'
    assert metric_names(expr) == {"a_bucket", "b_total"}


def test_every_query_names_a_metric_the_gateway_exports():
    exported = set(Metrics().names())
    queries = panel_exprs()
    assert len(queries) >= 20
    for expr in queries:
        names = metric_names(expr)
        assert names, expr
        assert names <= exported, (expr, names - exported)
    for query in variable_queries():
        match = re.fullmatch(r"label_values\((\w+)(\{[^}]*\})?, (\w+)\)", query)
        assert match is not None and match.group(1) in exported, query


def test_every_metric_the_gateway_exports_has_a_panel():
    used = {name for expr in panel_exprs() for name in metric_names(expr)}
    families = {family.name for family in Metrics().registry.collect()}
    shown = {f for f in families if any(name == f or name.startswith(f + "_") for name in used)}
    assert shown == families, families - shown


def test_every_query_is_valid_promql(tmp_path):
    rules = [{"record": f"dashboard:query_{i}", "expr": as_promql(e)} for i, e in enumerate(panel_exprs())]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, timeout=60)
    assert checked.returncode == 0, checked
