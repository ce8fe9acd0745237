"""The Grafana dashboard and Prometheus rules under ``deploy/`` (control-plane.md §11.2): valid
for ``promtool``, alerts that fire on the series they watch, and every metric they reference
exported by a running proxy."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.support.server import ProxyServer

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "deltaglider-proxy.json"
METRIC = re.compile(r"\b((?:deltaglider|process)_[a-z0-9_]+)\b")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Alert names of §11.2 (upstream) and its [D] additions.
SPEC_ALERTS = {
    "DeltaGliderHighErrorRate": ("5m", "warning"),
    "DeltaGliderSlowRequests": ("10m", "warning"),
    "DeltaGliderLowCacheHitRatio": ("15m", "warning"),
    "DeltaGliderCodecSaturated": ("5m", "warning"),
    "DeltaGliderAuthFailureSpike": ("5m", "warning"),
    "DeltaGliderDown": ("2m", "critical"),
}
promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(promtool is None, reason="promtool not installed (Debian: prometheus)")


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in doc["panels"] for t in panel.get("targets", [])]
    assert len(exprs) >= 30
    return exprs


def _as_promql(expr: str) -> str:
    """Grafana's variables replaced by what they stand for, so promtool can parse the query."""
    return expr.replace("$__rate_interval", "1m").replace('"$instance"', '".*"')


def test_alerts_match_the_spec() -> None:
    rules = {rule["alert"]: rule for rule in _rules()}
    for name, (for_, severity) in SPEC_ALERTS.items():
        assert rules[name]["for"] == for_ and rules[name]["labels"]["severity"] == severity, name
    assert rules["DeltaGliderHighErrorRate"]["expr"] == (
        'sum(rate(deltaglider_http_requests_total{status=~"5.."}[5m])) '
        "/ sum(rate(deltaglider_http_requests_total[5m])) > 0.05"
    )
    assert rules["DeltaGliderDown"]["expr"] == 'up{job="deltaglider"} == 0'
    assert {
        "DeltaGliderRateLimitLockout",
        "DeltaGliderConfigSyncStale",
        "DeltaGliderReplicationFailed",
    } <= set(rules)


@needs_promtool
def test_promtool_accepts_the_rules_and_their_unit_tests() -> None:
    assert promtool is not None
    for args in (["check", "rules", str(ALERTS)], ["test", "rules", str(ALERTS.parent / "alerts_test.yml")]):
        result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
    config = subprocess.run(
        [promtool, "check", "config", str(ALERTS.parent / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert config.returncode == 0, config.stdout + config.stderr


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    assert promtool is not None
    # promtool has no "check this query"; recording rules make it parse each one.
    rules = [
        {"record": f"dashboard:query_{n}", "expr": _as_promql(e)} for n, e in enumerate(_dashboard_exprs())
    ]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.filesystem_only
def test_every_referenced_metric_is_exported(proxy: ProxyServer) -> None:
    text = requests.get(f"{proxy.endpoint}/_/metrics", timeout=30).text
    families = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.MULTILINE))
    referenced = {m for e in [*(r["expr"] for r in _rules()), *_dashboard_exprs()] for m in METRIC.findall(e)}
    assert len(referenced) >= 30
    missing = []
    for name in sorted(referenced):
        base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), None)
        if name in families or (base is not None and families.get(base) == "histogram"):
            continue
        missing.append(name)
    assert missing == []
