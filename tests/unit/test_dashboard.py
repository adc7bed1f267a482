"""The Grafana dashboard queries only metrics that SmartSpec exports.

examples/monitoring/grafana-dashboard.json is checked against the collectors defined in
smartspec.observability.metrics (contract: specs/CORE-002-spec-registry.md, "Observability"):
every PromQL expression is reduced to the metric names it selects, and each name must be a
series some collector exposes (a counter's `_total`, a histogram's `_bucket`/`_sum`/`_count`,
a gauge's own name). A panel that queries a renamed or removed metric fails here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import Counter, Gauge, Histogram

from smartspec.observability import metrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "examples" / "monitoring" / "grafana-dashboard.json"

# PromQL words that look like identifiers but are not metric names.
KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "and", "or", "unless", "inf", "nan", "atan2",
}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.$])([A-Za-z_:][A-Za-z0-9_:]*)\b(?!\s*\()")
_NUMBER_SUFFIX = re.compile(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?[smhdwy]?\b")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (bare names and __name__ matchers)."""
    named = set(re.findall(r'__name__\s*=\s*"([A-Za-z_:][A-Za-z0-9_:]*)"', expr))
    stripped = _STRING.sub('""', expr)
    stripped = _MATCHERS.sub(" ", stripped)
    stripped = _RANGE.sub(" ", stripped)
    previous = None
    while previous != stripped:
        previous, stripped = stripped, _GROUPING.sub(" ", stripped)
    stripped = _NUMBER_SUFFIX.sub(" ", stripped)
    bare = {name for name in _IDENTIFIER.findall(stripped) if name.lower() not in KEYWORDS}
    return bare | named


def check_balanced(expr: str) -> None:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in _STRING.sub('""', expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs:
            assert stack, f"unbalanced {char!r} in {expr}"
            assert stack.pop() == pairs[char], f"unbalanced {char!r} in {expr}"
    assert not stack, f"unclosed {stack} in {expr}"


@cache
def exported_series() -> frozenset[str]:
    """Every series name the collectors in smartspec.observability.metrics expose."""
    names: set[str] = set()
    for value in vars(metrics).values():
        if not isinstance(value, Counter | Gauge | Histogram):
            continue
        for family in value.describe():
            if family.type == "counter":
                names |= {f"{family.name}_total", f"{family.name}_created"}
            elif family.type == "histogram":
                names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
                names.add(f"{family.name}_created")
            else:
                names.add(family.name)
    return frozenset(names)


def load_dashboard() -> dict[str, Any]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(dashboard, dict)
    return dashboard


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def panel_queries() -> list[tuple[str, str]]:
    queries = []
    for panel in iter_panels(load_dashboard()["panels"]):
        for target in panel.get("targets", []):
            queries.append((f"{panel['title']}#{target['refId']}", target["expr"]))
    return queries


def test_collectors_are_found() -> None:
    series = exported_series()
    assert "smartspec_credits_total" in series
    assert "smartspec_gateway_request_duration_seconds_bucket" in series
    assert "smartspec_budget_lease_credits" in series
    assert "smartspec_credits" not in series


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (
            'histogram_quantile(0.99, sum by (le, route) (rate(a_seconds_bucket{x="y"}[5m])))',
            {"a_seconds_bucket"},
        ),
        (
            'sum(rate(a_total{job=~"$job"}[$__rate_interval])) / clamp_min(sum(b_total), 1e-9)',
            {"a_total", "b_total"},
        ),
        ("sum without (instance) (g) > bool 3 and on (job) h offset 5m", {"g", "h"}),
        ('count({__name__="c_total"})', {"c_total"}),
        ('label_replace(up, "a", "$1", "b", "(.*)")', {"up"}),
    ],
)
def test_metric_name_extraction(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def test_an_unexported_metric_is_caught() -> None:
    names = metric_names('sum(rate(smartspec_not_a_metric_total{job="x"}[5m]))')
    assert names == {"smartspec_not_a_metric_total"}
    assert not names <= exported_series()


def test_dashboard_shape() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"]
    assert dashboard["title"]
    ids = [panel["id"] for panel in iter_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    rows = {panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"}
    assert rows == {
        "Budgets",
        "Generation runs",
        "LLM gateway",
        "Spec registry and reconciles",
    }
    for panel in iter_panels(dashboard["panels"]):
        if panel["type"] != "row":
            assert panel.get("targets"), f"{panel['title']} has no query"
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


@pytest.mark.parametrize(("panel", "expr"), panel_queries(), ids=lambda value: str(value)[:50])
def test_every_query_uses_exported_metrics(panel: str, expr: str) -> None:
    check_balanced(expr)
    names = metric_names(expr)
    assert names, f"{panel}: no metric found in {expr}"
    missing = names - exported_series()
    assert not missing, f"{panel}: {sorted(missing)} not exported by smartspec.observability"


def test_template_variables_use_exported_metrics() -> None:
    for variable in load_dashboard()["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query", "")
        match = re.fullmatch(r"label_values\((.*),\s*\w+\)", str(query or ""))
        if match is None:
            continue
        selector = match.group(1)
        check_balanced(selector)
        names = metric_names(selector)
        missing = names - exported_series()
        assert not missing, f"variable {variable['name']}: {sorted(missing)}"
        if not names:
            assert '__name__=~"smartspec_' in selector, variable["name"]
