"""The example Kubernetes manifests agree with each other, with the service and with the compose stack."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.config import ServiceConfig
from service.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "deploy" / "kubernetes" / "vae.yaml"
# The oldest release the manifests support (the preStop sleep action is on by default from 1.30),
# and the newest whose schemas kubernetes-validate ships.
MINIMUM_VERSION = "1.30.0"
NEWEST_VERSION = kubernetes_validate.latest_version()


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
    assert set(objects) == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "PersistentVolumeClaim",
    }


@pytest.mark.parametrize("version", [MINIMUM_VERSION, NEWEST_VERSION])
def test_manifests_follow_the_kubernetes_schemas(objects: dict[str, dict[str, Any]], version: str) -> None:
    # Strict: a field the API does not have (a typo, a wrong level) fails too. The schemas ship in
    # the package, so this runs offline.
    for document in objects.values():
        kubernetes_validate.validate(document, version, strict=True)


def test_schema_validation_catches_what_the_api_server_would_refuse(
    objects: dict[str, dict[str, Any]],
) -> None:
    deployment = objects["Deployment"]
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, MINIMUM_VERSION, strict=True)
    # Kubernetes 1.28 has no preStop sleep action: the minimum version is not a formality.
    with pytest.raises(kubernetes_validate.ValidationError, match="sleep"):
        kubernetes_validate.validate(deployment, "1.28.0", strict=True)
    assert f"Kubernetes {MINIMUM_VERSION.removesuffix('.0')} or newer" in MANIFESTS.read_text()


def test_replicas_serve_the_model_repository_from_a_shared_volume(objects: dict[str, dict[str, Any]]) -> None:
    spec = container(objects)
    config = ServiceConfig.load({}, {item["name"]: item["value"] for item in spec["env"]})
    (mount,) = [m for m in spec["volumeMounts"] if m["mountPath"] == str(config.repo)]
    assert mount["readOnly"]
    volumes = {v["name"]: v for v in objects["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    claim = volumes[mount["name"]]["persistentVolumeClaim"]
    assert claim["claimName"] == objects["PersistentVolumeClaim"]["metadata"]["name"]
    # Export jobs write where every replica reads.
    assert objects["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    # New versions on the volume are loaded without a restart.
    assert config.reload_interval_seconds > 0


def test_pods_request_resources_and_schedule_on_gpu_nodes(objects: dict[str, dict[str, Any]]) -> None:
    resources = container(objects)["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert int(resources["limits"]["nvidia.com/gpu"]) == 1
    # A memory limit (a leak ends in a restart, not a node under pressure); no CPU limit, see the file.
    assert "memory" in resources["limits"] and "cpu" not in resources["limits"]
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in pod["tolerations"])
    # Nodes pull from a registry: the image names one (a host with a dot or a port).
    registry = container(objects)["image"].split("/")[0]
    assert "." in registry or ":" in registry, container(objects)["image"]


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
