"""The Grafana dashboard and provisioning: every PromQL expression names only metrics the
service really exports (checked against a live /metrics), and the panels the issue asks for exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "asr.json"
PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"

# PromQL words that are not metric names.
_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group",
    "inf", "nan",
}
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel or variable title, expression) for every query of the dashboard."""
    dash = json.loads(DASHBOARD.read_text())
    exprs = []

    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for panel in panels(dash["panels"]):
        for target in panel.get("targets", []):
            exprs.append((panel["title"], target["expr"]))
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            exprs.append((f"variable {var['name']}", query))
    return exprs


def metric_names(expr: str) -> set[str]:
    """Metric names an expression reads (label_values(metric, label) included)."""
    m = re.fullmatch(r"\s*label_values\(\s*([a-zA-Z_:][\w:]*)\s*,\s*\w+\s*\)\s*", expr)
    if m:
        return {m.group(1)}
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                      # strings
    text = re.sub(r"\{[^}]*\}", "", text)                                 # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)                                # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    text = re.sub(r"\$\{?\w+\}?", "", text)                               # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _PROMQL_WORDS or re.fullmatch(r"\d+\w*", word):
            continue
        names.add(word)
    return names


def exported_names(metrics_text: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            names.add(sample.name)
        if family.type == "histogram":
            names.update(family.name + s for s in _HISTOGRAM_SUFFIXES)
        if family.type == "counter":
            names.add(family.name + "_total")
    return names


def test_metric_name_parser():
    assert metric_names('histogram_quantile(0.95, sum by (le) (rate(asr_x_bucket{api=~"$api"}[$__rate_interval])))') \
        == {"asr_x_bucket"}
    assert metric_names('sum(rate(a_total{s!~"2..|OK"}[1m])) / clamp_min(sum(rate(b_total[1m])), 1e-9)') \
        == {"a_total", "b_total"}
    assert metric_names("label_values(asr_requests_total, api)") == {"asr_requests_total"}


def test_dashboard_uses_only_exported_metrics(asr_server, an4_clip):
    with asr_server.client() as c:
        with open(an4_clip, "rb") as f:  # one request, so labelled series exist too
            assert c.post("/transcribe", files={"file": (an4_clip.name, f)}).status_code == 200
        metrics = c.get("/metrics")
    assert metrics.status_code == 200
    exported = exported_names(metrics.text)
    problems = []
    for title, expr in dashboard_exprs():
        names = metric_names(expr)
        if not names:
            problems.append(f"{title}: no metric in {expr!r}")
        for name in sorted(names - exported):
            problems.append(f"{title}: {name} is not exported by /metrics ({expr})")
    assert not problems, "\n".join(problems)


def test_dashboard_has_the_operational_panels():
    exprs = dashboard_exprs()
    used = {name for _, expr in exprs for name in metric_names(expr)}
    for metric in ("asr_requests_total", "asr_request_duration_seconds_bucket", "asr_real_time_factor_bucket",
                   "asr_batch_size_bucket", "asr_queue_depth", "asr_queue_wait_seconds_bucket",
                   "asr_active_streams", "asr_errors_total", "asr_model_info", "asr_inference_duration_seconds_bucket",
                   "asr_audio_seconds_total"):
        assert metric in used, f"no panel shows {metric}"
    text = " ".join(expr for _, expr in exprs)
    for q in ("0.50", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(asr_request_duration_seconds_bucket" in text
    assert "sum by (api, status) (rate(asr_requests_total" in text
    assert "sum by (reason) (rate(asr_errors_total" in text


def test_provisioning_points_at_the_dashboard_and_datasource():
    dash = json.loads(DASHBOARD.read_text())
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [d["url"] for d in datasources] == ["http://prometheus:9090"]
    uid = datasources[0]["uid"]
    ds_var = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
    assert ds_var and ds_var[0]["current"]["value"] == uid
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "asr.yml").read_text())["providers"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{providers[0]['options']['path']}:ro" in mounts
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"


def test_the_error_ratio_counts_errors_only():
    """A realtime session the client ends normally (1000, 1001 going away, 1005 no code) is not an error."""
    import re

    [expr] = [expr for title, expr in dashboard_exprs() if title == "Error ratio"]
    not_errors = re.search(r'status!~"([^"]+)"', expr).group(1)

    def is_error(status: str) -> bool:
        return re.fullmatch(not_errors, status) is None  # PromQL regexes are anchored at both ends

    assert not any(is_error(s) for s in ("200", "OK", "1000", "1001", "1005"))
    assert all(is_error(s) for s in ("400", "413", "499", "503", "INTERNAL", "UNAVAILABLE", "1008", "1011"))
