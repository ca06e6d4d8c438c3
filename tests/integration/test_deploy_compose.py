"""docker-compose.yml and its CPU override: the Compose specification, and how the stack is wired."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from compose_spec import PyCompose, parse_duration
from helpers.certs import Authority

from service.config import ServiceConfig, env_var

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = REPO / "docker-compose.yml"
CPU_OVERRIDE = REPO / "docker-compose.cpu.yml"
TLS_OVERRIDE = REPO / "docker-compose.tls.yml"
# What the operator must set: Compose refuses to start without it (no default password).
REQUIRED = {"GRAFANA_ADMIN_PASSWORD": "s3cret"}
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, $NAME and the $$ escape.
VARIABLE = re.compile(r"\$(?:\$|\{(\w+)(?:(:?)([-?])([^}]*))?\}|(\w+))")


def interpolate(text: str, variables: dict[str, str] = REQUIRED) -> str:
    """The file as Compose sees it with only `variables` set.

    Compose interpolates before it validates, and compose-spec does not, so this runs first.
    """

    def value(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, colon, operator, word = match.group(1, 2, 3, 4)
        name = name or match.group(5)
        current = variables.get(name)
        missing = current is None or (colon == ":" and not current)
        if operator == "?" and missing:
            raise ValueError(f"required variable {name} is missing a value: {word}")
        return (word if operator == "-" and missing else current) or ""

    return VARIABLE.sub(value, text)


def load(path: Path) -> dict[str, Any]:
    """Parsed and validated by compose-spec (a strict parser of the Compose specification)."""
    compose = PyCompose.from_yaml(interpolate(path.read_text()))
    compose.validate()  # every network, volume, config and secret a service names is declared
    compose.to_spec()  # and the whole document fits the specification's pydantic models
    return compose.to_dict()


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return load(COMPOSE)["services"]


def read_yaml(relative: str) -> Any:
    return yaml.safe_load((DEPLOY / relative).read_text())


def environment(service: dict[str, Any]) -> dict[str, str]:
    # compose-spec reads an empty value as None; Compose passes it on empty.
    return {
        name: "" if value is None else str(value) for name, value in service.get("environment", {}).items()
    }


def bind_mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """target -> (source, read_only) for the short ("src:dst:ro") and long syntax alike."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            if source.startswith("."):
                mounts[target] = (source, mode == ["ro"])
        elif volume.get("type") == "bind":
            mounts[volume["target"]] = (volume["source"], bool(volume.get("read_only")))
    return mounts


@pytest.mark.parametrize("path", [COMPOSE, CPU_OVERRIDE, TLS_OVERRIDE], ids=lambda p: p.name)
def test_compose_files_follow_the_compose_specification(path: Path) -> None:
    assert load(path)["services"]


def test_validation_rejects_what_compose_would_reject() -> None:
    # The validator is strict enough to be worth running: a misspelt key and a bad type both fail.
    with pytest.raises(ValueError, match="reservation"):
        PyCompose.from_yaml("services:\n  vae:\n    image: x\n    reservation: {}\n")
    with pytest.raises(ValueError, match="count"):
        PyCompose.from_yaml(
            "services:\n  vae:\n    image: x\n    deploy:\n      resources:\n        reservations:\n"
            "          devices: [{driver: nvidia, count: one, capabilities: [gpu]}]\n"
        )


def test_every_vae_variable_the_deployment_sets_is_read_by_the_code() -> None:
    known = {env_var(spec.name) for spec in dataclasses.fields(ServiceConfig)}
    sources = [*REPO.glob("training/*.py"), *REPO.glob("export/*.py"), *REPO.glob("service/*.py")]
    known |= {name for path in sources for name in re.findall(r"\bVAE_[A-Z_]+\b", path.read_text())}
    files = [COMPOSE, CPU_OVERRIDE, TLS_OVERRIDE, *REPO.glob("docker/*.Dockerfile")]
    files += DEPLOY.glob("kubernetes/*.yaml")
    for path in files:
        # Compose's own variables, interpolated into the files: the server never sees them.
        used = set(re.findall(r"\bVAE_[A-Z_]+\b", path.read_text())) - {"VAE_UID", "VAE_GID", "VAE_TLS_DIR"}
        assert used <= known, f"{path.name} sets {sorted(used - known)}, which nothing reads"


def test_vae_service_reserves_an_nvidia_gpu(services: dict[str, Any]) -> None:
    (device,) = services["vae"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert isinstance(device["count"], int) and device["count"] >= 1
    assert services["vae"]["build"]["dockerfile"] == "docker/serve-gpu.Dockerfile"


def test_vae_service_environment_is_a_valid_server_configuration(services: dict[str, Any]) -> None:
    vae = services["vae"]
    # The same loader `vae serve` runs: unknown values or inconsistent limits raise here.
    config = ServiceConfig.load({}, environment(vae))
    assert (config.port, config.metrics_port, config.device) == (50051, 8000, "cuda")
    assert config.host == "0.0.0.0"  # the default [::] needs IPv6, which Docker networks often lack
    assert {str(config.port), str(config.metrics_port)} <= {str(port) for port in vae["expose"]}
    # Docker sends SIGKILL after stop_grace_period: the drain must fit inside it.
    assert parse_duration(vae["stop_grace_period"]) > config.grace_seconds


def test_model_repository_is_mounted_read_only_where_the_server_reads_it(services: dict[str, Any]) -> None:
    vae = services["vae"]
    repo = environment(vae)["VAE_REPO"]
    assert bind_mounts(vae)[repo] == ("./models", True)


def test_config_files_the_stack_mounts_exist(services: dict[str, Any]) -> None:
    sources = [source for s in services.values() for source, _ in bind_mounts(s).values()]
    assert any(source.startswith("./deploy/") for source in sources)
    for source in sources:
        if source.startswith("./deploy/"):
            assert (REPO / source).exists(), source


def test_cpu_override_swaps_the_image_and_drops_every_gpu_reservation() -> None:
    override = load(CPU_OVERRIDE)["services"]
    assert override["vae"]["build"]["dockerfile"] == "docker/serve-cpu.Dockerfile"
    assert ServiceConfig.load({}, environment(override["vae"])).device == "cpu"
    # Compose merges lists, so only the !reset tag removes the base file's device reservations.
    document = yaml.compose(CPU_OVERRIDE.read_text())
    with_gpu = [name for name, s in load(COMPOSE)["services"].items() if "devices" in str(s.get("deploy"))]
    assert with_gpu
    for name in with_gpu:
        node = _node(document, "services", name, "deploy", "resources", "reservations", "devices")
        assert node.tag == "!reset", f"{name}: the override keeps the GPU reservation"


def _node(node: yaml.Node, *path: str) -> yaml.Node:
    for key in path:
        node = next(value for name, value in node.value if name.value == key)
    return node


def test_balancer_fronts_the_replicas_over_http2(services: dict[str, Any]) -> None:
    balancer = services["balancer"]
    mounts = bind_mounts(balancer)
    assert mounts["/usr/local/etc/haproxy/haproxy.cfg"] == ("./deploy/haproxy/haproxy.cfg", True)
    assert "50051:50051" in balancer["ports"]
    assert balancer["depends_on"]["vae"]["condition"] == "service_healthy"
    config = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    # The only published gRPC port; replicas are reached on the compose network by service name.
    assert re.search(r"^\s*bind :50051 proto h2$", config, flags=re.M)
    assert re.search(r"^\s*server-template \w+ \d+ vae:50051 resolvers docker", config, flags=re.M)
    assert re.search(r"^\s*default-server proto h2 check", config, flags=re.M)
    assert "ports" not in services["vae"]


def test_prometheus_discovers_each_replica_by_dns_not_through_the_balancer(services: dict[str, Any]) -> None:
    config = read_yaml("prometheus/prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    (vae,) = jobs["vae"]["dns_sd_configs"]
    assert vae["names"] == ["vae"] and vae["type"] == "A"
    assert str(vae["port"]) == environment(services["vae"])["VAE_METRICS_PORT"]
    (balancer,) = jobs["haproxy"]["dns_sd_configs"]
    assert balancer["names"] == ["balancer"]
    assert str(balancer["port"]) in {str(port) for port in services["balancer"]["expose"]}
    mounts = bind_mounts(services["prometheus"])
    assert mounts["/etc/prometheus"] == ("./deploy/prometheus", True)
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]


def test_grafana_provisioning_points_at_the_stack(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    mounts = {source: target for target, (source, _) in bind_mounts(grafana).items()}
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    (datasource,) = read_yaml("grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert (
        datasource["url"] == "http://prometheus:9090"
        and "127.0.0.1:9090:9090" in services["prometheus"]["ports"]
    )
    (provider,) = read_yaml("grafana/provisioning/dashboards/vae.yml")["providers"]
    dashboards = provider["options"]["path"]
    assert dashboards == mounts["./deploy/grafana/dashboards"]
    home = Path(environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home.parent == Path(dashboards) and (DEPLOY / "grafana/dashboards" / home.name).is_file()


def test_train_and_export_are_one_shot_jobs_under_a_profile(services: dict[str, Any]) -> None:
    train, export = services["train"], services["export"]
    for job in (train, export):
        assert job["profiles"] == ["jobs"] and "restart" not in job
    assert export["depends_on"]["train"]["condition"] == "service_completed_successfully"
    # The same image, and either job can build it: `run --no-deps export` needs no train run first.
    assert export["image"] == train["image"] and export["build"] == train["build"]
    cpu = load(CPU_OVERRIDE)["services"]
    assert cpu["export"]["build"]["args"] == cpu["train"]["build"]["args"]
    # train writes runs/, export reads it and adds a version to the models/ the server mounts.
    assert bind_mounts(train)["/work/runs"] == ("./runs", False)
    assert bind_mounts(export)["/work/runs"] == ("./runs", True)
    assert bind_mounts(export)["/work/models"] == ("./models", False)
    assert "devices" in str(train["deploy"])


def test_deploy_doc_describes_every_server_variable_and_port(services: dict[str, Any]) -> None:
    doc = (REPO / "docs" / "deploy.md").read_text()
    for spec in dataclasses.fields(ServiceConfig):
        assert f"| `{env_var(spec.name)}` |" in doc, f"docs/deploy.md: no row for {env_var(spec.name)}"
    ports = {str(port) for service in services.values() for port in service.get("expose", [])}
    ports |= {
        str(port).rpartition(":")[2] for service in services.values() for port in service.get("ports", [])
    }
    assert {"50051", "8000", "8405", "9090", "3000"} <= ports
    for port in ports:
        assert f"| {port} |" in doc, f"docs/deploy.md: no row for port {port}"


def test_monitoring_ports_are_published_on_loopback_only_by_default(services: dict[str, Any]) -> None:
    # Neither has authentication for readers (Grafana lets anonymous users view).
    assert services["prometheus"]["ports"] == ["127.0.0.1:9090:9090"]
    assert services["grafana"]["ports"] == ["127.0.0.1:3000:3000"]
    text = interpolate(COMPOSE.read_text(), {**REQUIRED, "MONITORING_BIND": "0.0.0.0"})
    published = PyCompose.from_yaml(text).to_dict()["services"]["grafana"]["ports"]
    assert published == ["0.0.0.0:3000:3000"]
    # The gRPC entry point is the one port meant for other hosts.
    assert services["balancer"]["ports"] == ["50051:50051"]


def test_grafana_has_no_default_admin_password(services: dict[str, Any]) -> None:
    assert (
        environment(services["grafana"])["GF_SECURITY_ADMIN_PASSWORD"] == REQUIRED["GRAFANA_ADMIN_PASSWORD"]
    )
    for unset in ({}, {"GRAFANA_ADMIN_PASSWORD": ""}):
        with pytest.raises(ValueError, match="GRAFANA_ADMIN_PASSWORD is missing a value: set GRAFANA_ADMIN"):
            interpolate(COMPOSE.read_text(), unset)
    assert "admin}" not in COMPOSE.read_text()


@pytest.fixture(scope="module")
def tls_services() -> dict[str, Any]:
    return load(TLS_OVERRIDE)["services"]


def test_tls_override_serves_tls_with_a_token_from_secrets(tls_services: dict[str, Any]) -> None:
    vae = tls_services["vae"]
    config = ServiceConfig.load({}, {**environment(load(COMPOSE)["services"]["vae"]), **environment(vae)})
    secrets = {f"/run/secrets/{name}" for name in vae["secrets"]}
    assert {config.tls_cert, config.tls_key, config.auth_token_file} <= secrets
    # The image's plaintext health check would fail against TLS: the override trusts the stack's CA.
    test = vae["healthcheck"]["test"]
    assert test[:3] == ["CMD", "vae", "health"]
    assert test[test.index("--tls-ca") + 1] in secrets
    declared = load(TLS_OVERRIDE)["secrets"]
    assert set(vae["secrets"]) == set(declared)
    for secret in declared.values():
        assert secret["file"].startswith("./deploy/tls/")


def test_tls_balancer_gets_the_files_its_config_names(tls_services: dict[str, Any]) -> None:
    balancer = tls_services["balancer"]
    config = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    (flag,) = set(re.findall(r"^\.if defined\((\w+)\)$", config, flags=re.M))
    assert flag in environment(balancer)
    targets = {secret["source"]: secret["target"] for secret in balancer["secrets"]}
    named = set(re.findall(r"(?:crt|ca-file) (\S+)", config))
    assert named == {targets["vae_tls_cert"], targets["vae_tls_ca"]}
    # haproxy loads the key from "<certificate>.key" when the certificate file holds none.
    assert targets["vae_tls_key"] == targets["vae_tls_cert"] + ".key"


@pytest.mark.skipif(
    shutil.which("haproxy") is None, reason="haproxy is not installed (`make test` installs it)"
)
@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
def test_haproxy_accepts_both_variants_of_its_config(tls: bool, tmp_path: Path) -> None:
    authority = Authority(tmp_path)
    server = authority.issue("server", server=True)
    (tmp_path / "server.pem").write_bytes(server.cert)
    (tmp_path / "server.pem.key").write_bytes(server.key)
    (tmp_path / "ca.crt").write_bytes(authority.ca.cert)
    config = (
        (DEPLOY / "haproxy" / "haproxy.cfg").read_text().replace("/usr/local/etc/haproxy/tls", str(tmp_path))
    )
    (tmp_path / "haproxy.cfg").write_text(config)
    env = {k: v for k, v in os.environ.items() if k != "BALANCER_TLS"} | (
        {"BALANCER_TLS": "1"} if tls else {}
    )
    result = subprocess.run(
        ["haproxy", "-c", "-f", str(tmp_path / "haproxy.cfg")],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_tracing_profile_wires_the_replicas_to_a_collector_and_jaeger(services: dict[str, Any]) -> None:
    collector, jaeger = services["otel-collector"], services["jaeger"]
    assert collector["profiles"] == ["tracing"] and jaeger["profiles"] == ["tracing"]
    # Off unless asked for: with the variable unset the replicas export nothing.
    assert ServiceConfig.load({}, environment(services["vae"])).otlp_endpoint == ""
    endpoint = "http://otel-collector:4317"
    text = interpolate(COMPOSE.read_text(), {**REQUIRED, "VAE_OTLP_ENDPOINT": endpoint})
    vae = PyCompose.from_yaml(text).to_dict()["services"]["vae"]
    assert ServiceConfig.load({}, environment(vae)).otlp_endpoint == endpoint
    assert "4317" in {str(port) for port in collector["expose"]}
    config = read_yaml("otel-collector/config.yaml")
    assert config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    (exporter,) = config["exporters"].values()
    host, port = exporter["endpoint"].split(":")
    assert host == "jaeger" and port in {str(port) for port in jaeger["expose"]}
    pipeline = config["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"] and set(pipeline["exporters"]) == set(config["exporters"])
    mounts = bind_mounts(collector)
    assert mounts["/etc/otelcol/config.yaml"] == ("./deploy/otel-collector/config.yaml", True)
    assert "--config=/etc/otelcol/config.yaml" in collector["command"]
    assert jaeger["ports"] == ["127.0.0.1:16686:16686"]  # the UI has no authentication
