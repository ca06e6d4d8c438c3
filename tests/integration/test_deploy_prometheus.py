"""Prometheus and Grafana configuration on its own: promtool checks and rule tests, the dashboard."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
GRAFANA = REPO / "deploy" / "grafana"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
# What the issue asks the dashboard to show, as words its panel titles must contain.
TOPICS = (
    "request rate",
    "error rate by code",
    "latency p50 / p99",
    "queue depth",
    "batch size",
    "inference time",
    "model versions",
    "score log-likelihood",
)

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (Debian package `prometheus`; `make test` installs it)",
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, check=False)


@needs_promtool
def test_promtool_accepts_the_configuration_and_finds_the_rules() -> None:
    result = promtool("check", "config", "--lint-fatal", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    rule_files = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["rule_files"]
    found = [path for pattern in rule_files for path in PROMETHEUS.glob(pattern)]
    assert found, f"rule_files {rule_files} match nothing under {PROMETHEUS}"
    assert f"SUCCESS: {len(found)} rule files found" in result.stdout


@needs_promtool
def test_promtool_accepts_the_rules_with_every_lint() -> None:
    rules = sorted(PROMETHEUS.glob("rules/*.rules.yml"))
    result = promtool("check", "rules", "--lint=all", "--lint-fatal", *map(str, rules))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_alerts_and_recording_rules_pass_their_unit_tests() -> None:
    # Synthetic series through the real rule engine: each alert fires on the failure it names.
    tests = sorted(PROMETHEUS.glob("tests/*.test.yml"))
    assert tests
    result = promtool("test", "rules", *map(str, tests))
    assert result.returncode == 0, result.stdout + result.stderr


def dashboard() -> dict[str, Any]:
    return json.loads((GRAFANA / "dashboards" / "vae.json").read_text())


def panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def test_dashboard_uses_the_provisioned_datasource() -> None:
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    references = [dashboard()["templating"]["list"][0]["datasource"]]
    for panel in panels():
        references += [panel["datasource"], *(target["datasource"] for target in panel["targets"])]
    assert {(ref["type"], ref["uid"]) for ref in references} == {(source["type"], source["uid"])}


def test_dashboard_panels_are_well_formed() -> None:
    ids = [panel["id"] for panel in dashboard()["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


@pytest.mark.parametrize("topic", TOPICS)
def test_dashboard_shows_what_operators_asked_for(topic: str) -> None:
    assert any(topic in panel["title"].lower() for panel in panels()), topic
