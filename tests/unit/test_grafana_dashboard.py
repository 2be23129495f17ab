"""The example Grafana dashboard (deploy/grafana-dashboard.json) reads only metrics the
controller exports (vcluster/metrics.py), by labels they have, and covers every one of them."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from vcluster.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana-dashboard.json"
_SUFFIXES = {"counter": ("_total",), "gauge": ("",),
             "histogram": ("_bucket", "_sum", "_count")}


def exported() -> dict[str, tuple[str, set[str]]]:
    """Every series name a scrape can show -> (its family, its labels)."""
    names: dict[str, tuple[str, set[str]]] = {}
    for metric in vars(Metrics()).values():
        if isinstance(metric, MetricWrapperBase):
            family, kind = metric._name, metric._type  # noqa: SLF001
            labels = set(metric._labelnames)  # noqa: SLF001
            for suffix in _SUFFIXES[kind]:
                names[family + suffix] = (family, labels | ({"le"} if suffix == "_bucket"
                                                            else set()))
    return names


def exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def test_every_expr_names_an_exported_metric_by_its_own_labels() -> None:
    series = exported()
    assert exprs()
    for expr in exprs():
        used = re.findall(r"\bvcluster_[a-z0-9_]+", expr)
        assert used, expr
        unknown = [name for name in used if name not in series]
        assert not unknown, f"{expr}: no such metric {unknown}"
        labels = set().union(*(series[name][1] for name in used))
        named = set(re.findall(r"\bby \(([^)]*)\)", expr))
        named = {label.strip() for group in named for label in group.split(",")}
        named |= set(re.findall(r"[{,]\s*([a-z_]+)\s*=~?", expr))
        assert named <= labels, f"{expr}: labels {sorted(named - labels)} not on {used}"


def test_every_exported_metric_has_a_panel() -> None:
    shown = {exported()[name][0] for expr in exprs()
             for name in re.findall(r"\bvcluster_[a-z0-9_]+", expr)}
    assert {family for family, _ in exported().values()} == shown


def test_the_class_variable_lists_the_classes_of_an_exported_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (query,) = [v["query"] for v in dashboard["templating"]["list"] if v["name"] == "class"]
    name, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", query).groups()  # type: ignore[union-attr]
    assert label in exported()[name][1]
