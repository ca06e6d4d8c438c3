"""The example Kubernetes manifests agree with each other, with the service and with the compose stack."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from service.config import ServiceConfig
from service.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "deploy" / "kubernetes" / "vae.yaml"


@pytest.fixture(scope="module")
def objects() -> dict[str, dict[str, Any]]:
    documents = [doc for doc in yaml.safe_load_all(MANIFESTS.read_text()) if doc]
    return {doc["kind"]: doc for doc in documents}


def container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (only,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def test_manifests_hold_the_deployment_service_autoscaler_and_budget(
    objects: dict[str, dict[str, Any]],
) -> None:
    assert set(objects) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}


def test_headless_service_selects_the_deployments_pods(objects: dict[str, dict[str, Any]]) -> None:
    deployment, service = objects["Deployment"], objects["Service"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # clusterIP None: DNS lists every pod, which client-side round_robin needs.
    assert service["spec"]["clusterIP"] == "None"
    named = {port["name"]: port["containerPort"] for port in container(objects)["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= set(named)


def test_container_configuration_is_valid_and_matches_its_ports(objects: dict[str, dict[str, Any]]) -> None:
    spec = container(objects)
    config = ServiceConfig.load({}, {item["name"]: item["value"] for item in spec["env"]})
    ports = {port["name"]: port["containerPort"] for port in spec["ports"]}
    assert ports == {"grpc": config.port, "metrics": config.metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert spec[probe]["grpc"]["port"] == config.port, probe
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    pause = spec["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pause + config.grace_seconds
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0


def test_autoscaler_scales_the_deployment_on_a_metric_the_service_exports(
    objects: dict[str, dict[str, Any]],
) -> None:
    autoscaler = objects["HorizontalPodAutoscaler"]["spec"]
    assert autoscaler["scaleTargetRef"]["kind"] == "Deployment"
    assert autoscaler["scaleTargetRef"]["name"] == objects["Deployment"]["metadata"]["name"]
    (metric,) = autoscaler["metrics"]
    exported = {family.name for family in Metrics().registry.collect()}
    assert metric["pods"]["metric"]["name"] == "vae_queue_depth_items" in exported
    assert autoscaler["minReplicas"] <= objects["Deployment"]["spec"]["replicas"] <= autoscaler["maxReplicas"]
