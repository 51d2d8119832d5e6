"""Prometheus config and alerts through promtool, and the Grafana dashboard: valid JSON, every query uses
only metrics and labels the real service exposes (read from service.app.metrics), every query is valid
PromQL (promtool parses it), and key panels compute the right numbers on series shaped like the service's."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "lift-reward.json"

# Grafana's variables, replaced by what they stand for when all instances and dimensions are selected.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__range": "1h", "$instance": ".*", "$dimension": ".*"}


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panels() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in _dashboard()["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # panels inside collapsed rows
    return [p for p in out if p["type"] != "row"]


def _exprs() -> list[tuple[str, str]]:
    """(where, expr) for every panel target and every query variable."""
    found = [(f"panel {p['title']!r} target {t['refId']}", t["expr"]) for p in _panels() for t in p["targets"]]
    for var in _dashboard()["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            assert q.startswith("label_values(") and q.endswith(")"), q
            metric, label = [x.strip() for x in q[len("label_values("):-1].split(",")]
            found.append((f"variable {var['name']}", f"count by ({label}) ({metric})"))
    return found


def _substitute(expr: str) -> str:
    for var, value in sorted(GRAFANA_VARS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def _promtool(promtool: str, *args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


# ---- Prometheus ------------------------------------------------------------------------------------------

def test_promtool_check_config(promtool: str) -> None:
    proc = _promtool(promtool, "check", "config", "prometheus.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 1 rule files found" in proc.stdout + proc.stderr


def test_alerts_fire_and_stay_quiet_as_specified(promtool: str) -> None:
    proc = _promtool(promtool, "test", "rules", "alerts_test.yml")
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_every_alert_has_a_unit_test() -> None:
    alerts = {r["alert"] for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"]
    firing = {a["alertname"] for t in tests for a in t["alert_rule_test"] if a.get("exp_alerts")}
    assert alerts == firing, f"alerts without a firing test: {sorted(alerts - firing)}"


def test_alert_expressions_use_service_metrics(check_promql) -> None:
    for group in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]:
        for rule in group["rules"]:
            check_promql(rule["expr"], f"alert {rule['alert']}")


# ---- Grafana ---------------------------------------------------------------------------------------------

def test_dashboard_is_valid_grafana_json() -> None:
    dash = _dashboard()
    assert dash["uid"] == "lift-reward" and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for p in _panels():
        assert p["title"] and p["targets"], p
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip(), p["title"]
    # The provisioned datasource is the one the variable defaults to.
    ds = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/prometheus.yaml").read_text())["datasources"][0]
    assert ds["type"] == "prometheus" and variables["datasource"]["current"]["value"] == ds["uid"]


def test_dashboard_uses_only_service_metrics(check_promql) -> None:
    used: set[str] = set()
    for where, expr in _exprs():
        used |= check_promql(expr, where)
    # Every metric the service exposes for operators shows up somewhere.
    assert {"lift_requests_total", "lift_request_duration_seconds_bucket", "lift_queued_requests",
            "lift_inflight_requests", "lift_dimension_score_bucket", "lift_reward_bucket", "lift_engine_ready",
            "lift_rejected_requests_total", "lift_parse_failures_total", "lift_decode_duration_seconds_bucket",
            "lift_engine_duration_seconds_bucket"} <= used


def test_dashboard_shows_what_operators_need() -> None:
    targets = [(p, t["expr"]) for p in _panels() for t in p["targets"]]
    def has(pred) -> bool:
        return any(pred(p, e) for p, e in targets)
    assert has(lambda p, e: "rate(lift_requests_total" in e and "by (route, status)" in e), "request rate"
    quantiles = {e.split(",")[0] for p, e in targets if e.startswith("histogram_quantile(") and "lift_request_duration_seconds_bucket" in e
                 and "route" in e}
    assert {"histogram_quantile(0.5", "histogram_quantile(0.9", "histogram_quantile(0.99"} <= quantiles, "latency percentiles"
    assert has(lambda p, e: "lift_queued_requests" in e and p["type"] == "timeseries"), "queue depth over time"
    assert has(lambda p, e: 'status=~"[45].."' in e), "errors"
    assert has(lambda p, e: "lift_rejected_requests_total" in e and "by (reason)" in e), "rejections by reason"
    per_dim = [p for p, e in targets if "lift_dimension_score_bucket" in e and p["type"] == "heatmap"]
    assert per_dim and per_dim[0].get("repeat") == "dimension", "a score-distribution heatmap repeated per dimension"
    assert has(lambda p, e: "lift_dimension_score_bucket" in e and "by (dimension, le)" in e), "distribution per dimension"
    assert has(lambda p, e: "lift_reward_bucket" in e and p["type"] == "heatmap"), "reward distribution"


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    # promtool parses every expression as a recording rule: a syntax error anywhere fails here.
    rules = [{"record": f"dashboard:query_{i}", "expr": _substitute(expr)} for i, (_, expr) in enumerate(_exprs())]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = _promtool(promtool, "check", "rules", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout + proc.stderr


def _target(title: str, ref: str = "A") -> str:
    """The panel's query, times 1000 and rounded: promtool compares floats exactly."""
    panel = next(p for p in _panels() if p["title"] == title)
    return f"round(1000 * ({_substitute(next(t['expr'] for t in panel['targets'] if t['refId'] == ref))}))"


def test_key_panels_compute_the_right_numbers(promtool: str, tmp_path: Path) -> None:
    # Series with the service's names and labels over 30 minutes; promtool evaluates the panels' queries.
    series = [
        ('lift_queued_requests{instance="a:8000", job="lift-reward"}', "3x30"),
        ('lift_queued_requests{instance="b:8000", job="lift-reward"}', "4x30"),
        ('lift_requests_total{instance="a:8000", job="lift-reward", route="/v1/score", status="200"}', "0+60x30"),
        ('lift_requests_total{instance="a:8000", job="lift-reward", route="/v1/score", status="503"}', "0+20x30"),
        ('lift_dimension_score_sum{instance="a:8000", job="lift-reward", dimension="semantic_consistency"}', "0+9x30"),
        ('lift_dimension_score_count{instance="a:8000", job="lift-reward", dimension="semantic_consistency"}', "0+10x30"),
        ('lift_dimension_score_sum{instance="a:8000", job="lift-reward", dimension="motion_smoothness"}', "0+2x30"),
        ('lift_dimension_score_count{instance="a:8000", job="lift-reward", dimension="motion_smoothness"}', "0+10x30"),
    ]
    tests = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in series],
            "promql_expr_test": [
                {"expr": _target("Queued now"), "eval_time": "20m", "exp_samples": [{"labels": "{}", "value": 7000}]},
                {"expr": _target("5xx ratio"), "eval_time": "20m", "exp_samples": [{"labels": "{}", "value": 250}]},
                {"expr": _target("Mean score per dimension and mean reward"), "eval_time": "20m", "exp_samples": [
                    {"labels": '{dimension="semantic_consistency"}', "value": 900},
                    {"labels": '{dimension="motion_smoothness"}', "value": 200}]},
                {"expr": _target("Request rate"), "eval_time": "20m", "exp_samples": [{"labels": "{}", "value": 1333}]},
            ],
        }],
    }
    path = tmp_path / "dashboard_test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    proc = _promtool(promtool, "test", "rules", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
