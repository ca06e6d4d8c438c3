"""The deployment's configs against real processes on loopback: `vae serve` replicas, Prometheus, haproxy.

Two replicas run the way the images run them (`vae serve` configured through VAE_* variables,
without torch or onnx). A real Prometheus scrapes them with the project's scrape configuration and
rules, rendered for loopback; the Grafana dashboard's queries run against it; haproxy, with the
project's configuration, balances gRPC calls over them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.systems import free_port
from client.clients import VaeClient
from repository.manifest import read_manifest, write_manifest
from repository.prior import load_prior
from repository.runtime import Graph
from repository.scoring import score_reference

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
VAE = Path(sys.executable).with_name("vae")
REPLICAS = 2
# The serving images hold neither torch nor onnx: the replicas here must run without them too.
SERVE_WITHOUT_TORCH = (
    "import sys; sys.modules.update(dict.fromkeys(('torch', 'onnx', 'onnxscript'))); "
    "from vae_cli import main; sys.exit(main(sys.argv[1:]))"
)
# Dashboard variables, as Grafana would fill them in for "All" replicas.
DASHBOARD_VARIABLES = {"$__rate_interval": "1m", "$instance": ".*"}
T = TypeVar("T")


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """Poll check() until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)
    return value


@contextmanager
def running(
    argv: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A process whose output goes to `log`, terminated (then killed) when the block ends."""
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def alive(process: subprocess.Popen[bytes], log: Path) -> None:
    """Fail with the end of its log if the process has exited."""
    if process.poll() is not None:
        raise AssertionError(f"{process.args!r} exited with {process.returncode}:\n{log.read_text()[-3000:]}")


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def health(target: str) -> bool:
    """The serving images' HEALTHCHECK command: exit 0 iff grpc.health.v1 reports SERVING."""
    command = [str(VAE), "health", "--target", target]
    return subprocess.run(command, capture_output=True, timeout=30, check=False).returncode == 0


def counter(metrics: str, name: str, **labels: str) -> float:
    """The value of one sample in a /metrics exposition (0 when absent)."""
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return 0.0


def queried_metrics(expressions: list[str]) -> set[str]:
    """The service's metric names in PromQL expressions (recording rules, with colons, excluded)."""
    return {name for expr in expressions for name in re.findall(r"(?<![\w:])vae_\w+(?![\w:])", expr)}


def dashboard_targets() -> list[dict[str, Any]]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "vae.json").read_text())
    return [target for panel in dashboard["panels"] for target in panel.get("targets", [])]


def rule_expressions() -> list[str]:
    files = sorted((DEPLOY / "prometheus" / "rules").glob("*.rules.yml"))
    groups = [group for path in files for group in yaml.safe_load(path.read_text())["groups"]]
    return [rule["expr"] for group in groups for rule in group["rules"]]


# --- the replicas -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Replica:
    target: str  # gRPC HOST:PORT
    metrics: str  # /metrics HOST:PORT


def with_score_reference(repo: Path, into: Path) -> Path:
    """A copy of `repo` whose model.json records Score quantiles, as `vae export` writes them.

    model.json is not hashed, so the version stays verified; the drift panels then have a reference.
    """
    shutil.copytree(repo, into)
    (version,) = [path for path in into.glob("*/*") if path.name.isdigit()]
    manifest = read_manifest(version)
    graphs = [Graph(version / manifest.graphs[role].file) for role in ("encoder", "decoder")]
    images = (np.random.default_rng(0).random((64, *manifest.image_shape)) < 0.2).astype(np.float32)
    reference = score_reference(
        *graphs,
        manifest,
        load_prior(version, manifest),
        images,
        k=4,
        seed=0,
        described="64 random binary images",
    )
    write_manifest(version, dataclasses.replace(manifest, score_reference=reference))
    return into


@pytest.fixture(scope="module")
def replicas(tiny_model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Replica]]:
    logs = tmp_path_factory.mktemp("replicas")
    tiny_model_repo = with_score_reference(tiny_model_repo, tmp_path_factory.mktemp("repo") / "models")
    (model,) = [path.name for path in tiny_model_repo.iterdir() if not path.name.startswith(".")]
    with ExitStack() as stack:
        started = []
        for i in range(REPLICAS):
            replica = Replica(f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
            env = os.environ | {
                "VAE_REPO": str(tiny_model_repo),
                "VAE_MODEL": model,
                "VAE_HOST": "127.0.0.1",
                "VAE_PORT": replica.target.rpartition(":")[2],
                "VAE_METRICS_PORT": replica.metrics.rpartition(":")[2],
                "VAE_DEVICE": "cpu",
            }
            argv = [sys.executable, "-c", SERVE_WITHOUT_TORCH, "serve"]
            log = logs / f"replica{i}.log"
            started.append((replica, stack.enter_context(running(argv, log, env)), log))
        for replica, process, log in started:
            wait_serving(replica, process, log)
            exercise(replica.target)
        yield [replica for replica, _, _ in started]


def wait_serving(replica: Replica, process: subprocess.Popen[bytes], log: Path) -> None:
    wait_for(lambda: alive(process, log) or health(replica.target), f"{replica.target} to report SERVING")


def exercise(target: str) -> None:
    """Traffic of every kind, so every series a dashboard panel reads exists, errors included."""
    with VaeClient(target, timeout=10) as client:
        sampled = client.sample(8, seed=0)
        client.decode(sampled.latents)
        client.encode(sampled.images)
        client.reconstruct(sampled.images)
        client.score(sampled.images, samples=2)
        with pytest.raises(grpc.RpcError) as error:
            client.decode(np.zeros((1, sampled.latents.shape[1] + 1), np.float32))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def metrics_text(replicas: list[Replica]) -> str:
    return http_get(f"http://{replicas[0].metrics}/metrics")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (Debian prometheus)")
def test_promtool_accepts_the_real_metrics_exposition(metrics_text: str) -> None:
    result = subprocess.run(
        ["promtool", "check", "metrics"],
        input=metrics_text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Lint findings (missing units, counters without _total, ...) are printed and exit non-zero.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_dashboard_and_rules_query_only_metrics_the_service_exposes(metrics_text: str) -> None:
    # A labelled counter nothing has incremented yet (model load failures) is declared by its
    # `# TYPE` line but has no sample: declared counts as exposed.
    exposed = {
        sample.name for family in text_string_to_metric_families(metrics_text) for sample in family.samples
    }
    exposed |= set(re.findall(r"^# TYPE (\S+) ", metrics_text, flags=re.M))
    for source, expressions in [
        ("dashboard", [target["expr"] for target in dashboard_targets()]),
        ("rules", rule_expressions()),
    ]:
        queried = queried_metrics(expressions)
        assert len(queried) >= 3, f"{source}: the metric-name pattern finds too little to be trusted"
        assert queried <= exposed, f"{source} queries {sorted(queried - exposed)}, which /metrics lacks"


# --- Prometheus ---------------------------------------------------------------------------------


def render_prometheus_config(replicas: list[Replica]) -> dict[str, Any]:
    """The project's configuration for loopback: the vae job and its rules, static targets for DNS.

    Scrapes and rule evaluations every second, so a test sees rates within seconds.
    """
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(DEPLOY / "prometheus" / pattern) for pattern in config["rule_files"]]
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "vae"]
    del job["dns_sd_configs"]
    job["static_configs"] = [{"targets": [replica.metrics for replica in replicas]}]
    config["scrape_configs"] = [job]
    return config


@pytest.fixture(scope="module")
def prometheus(replicas: list[Replica], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (Debian package `prometheus`; `make test` installs it)")
    home = tmp_path_factory.mktemp("prometheus")
    (home / "prometheus.yml").write_text(yaml.safe_dump(render_prometheus_config(replicas)))
    address = f"127.0.0.1:{free_port()}"
    argv = [
        "prometheus",
        f"--config.file={home / 'prometheus.yml'}",
        f"--storage.tsdb.path={home / 'data'}",
        f"--web.listen-address={address}",
    ]
    with running(argv, home / "prometheus.log") as process:
        wait_for(lambda: alive(process, home / "prometheus.log") or ready(address), "Prometheus to be ready")
        yield f"http://{address}"


def ready(address: str) -> bool:
    try:
        return "Ready" in http_get(f"http://{address}/-/ready")
    except OSError:
        return False


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    """An instant query through the HTTP API; its result vector."""
    body = json.loads(http_get(f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"))
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def test_prometheus_scrapes_every_replica(prometheus: str, replicas: list[Replica]) -> None:
    def all_up() -> list[dict[str, Any]] | None:
        result = query(prometheus, 'up{job="vae"} == 1')
        return result if len(result) == REPLICAS else None

    up = wait_for(all_up, "every replica's up == 1")
    assert {series["metric"]["instance"] for series in up} == {replica.metrics for replica in replicas}
    model_info = wait_for(lambda: query(prometheus, 'vae_model_info{job="vae"} == 1'), "vae_model_info")
    for series in model_info:
        assert series["metric"]["provider"] == "CPUExecutionProvider" and series["metric"]["version"] == "1"


def test_rules_load_and_evaluate_on_the_real_series(prometheus: str) -> None:
    def evaluated() -> list[dict[str, Any]] | None:
        groups = json.loads(http_get(f"{prometheus}/api/v1/rules"))["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        # A rule never evaluated reports Go's zero time, year 0001.
        return rules if rules and not any(r["lastEvaluation"].startswith("0001-") for r in rules) else None

    rules = wait_for(evaluated, "every rule to be evaluated once")
    assert len(rules) == len(rule_expressions())
    assert [rule["name"] for rule in rules if rule["health"] != "ok"] == []
    wait_for(lambda: query(prometheus, "job:vae_requests:rate1m"), "the request-rate recording rule")
    depth = wait_for(lambda: query(prometheus, "instance:vae_queue_depth_items:sum"), "the queue-depth rule")
    assert len(depth) == REPLICAS


@pytest.mark.parametrize("target", dashboard_targets(), ids=lambda t: t["legendFormat"] or t["expr"][:40])
def test_every_dashboard_query_returns_the_series_its_legend_names(
    prometheus: str, target: dict[str, Any]
) -> None:
    expr = target["expr"]
    for variable, value in DASHBOARD_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a dashboard variable this test does not fill in: {expr}"
    result = wait_for(lambda: query(prometheus, expr), f"data for {expr}")
    for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", target["legendFormat"]):
        assert all(label in series["metric"] for series in result), f"{expr} has no label {label}"


# --- haproxy ------------------------------------------------------------------------------------

needs_haproxy = pytest.mark.skipif(
    shutil.which("haproxy") is None,
    reason="haproxy is not installed (Debian package `haproxy`; `make test` installs it)",
)


@dataclasses.dataclass(frozen=True)
class Balancer:
    target: str  # gRPC HOST:PORT
    stats: str  # haproxy's exporter HOST:PORT


def render_haproxy_config(replicas: list[Replica], balancer: Balancer) -> str:
    """The project's haproxy.cfg for loopback: the DNS server-template becomes one line per replica."""
    config = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    servers = "\n".join(f"    server vae{i} {replica.target}" for i, replica in enumerate(replicas))
    for pattern, replacement in [
        (r"^ *server-template .*$", servers),
        (r"^( *bind) :50051\b", rf"\1 {balancer.target}"),
        (r"^( *bind) :8405\b", rf"\1 {balancer.stats}"),
    ]:
        config, count = re.subn(pattern, replacement, config, flags=re.M)
        assert count == 1, f"haproxy.cfg changed shape: {pattern!r} matched {count} lines"
    return config


@pytest.fixture(scope="module")
def balancer(replicas: list[Replica], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Balancer]:
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (Debian package `haproxy`; `make test` installs it)")
    home = tmp_path_factory.mktemp("haproxy")
    balancer = Balancer(f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
    (home / "haproxy.cfg").write_text(render_haproxy_config(replicas, balancer))
    with running(["haproxy", "-f", str(home / "haproxy.cfg")], home / "haproxy.log") as process:

        def every_server_up() -> bool:
            alive(process, home / "haproxy.log")
            try:
                stats = http_get(f"http://{balancer.stats}/metrics")
            except OSError:
                return False
            return counter(stats, "haproxy_backend_active_servers", proxy="vae") == REPLICAS

        wait_for(every_server_up, "haproxy to see every replica up")
        yield balancer


@needs_haproxy
def test_haproxy_accepts_the_deployment_config() -> None:
    result = subprocess.run(
        ["haproxy", "-c", "-f", str(DEPLOY / "haproxy" / "haproxy.cfg")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_haproxy_spreads_the_calls_of_one_connection_over_every_replica(
    balancer: Balancer, replicas: list[Replica]
) -> None:
    def decodes() -> list[float]:
        return [
            counter(http_get(f"http://{r.metrics}/metrics"), "vae_requests_total", method="Decode", code="OK")
            for r in replicas
        ]

    before = decodes()
    calls = 20
    # One client, one HTTP/2 connection: only per-request (L7) balancing reaches both replicas.
    with VaeClient(balancer.target, timeout=10) as client:
        latents = client.sample(1, seed=0).latents
        for _ in range(calls):
            assert client.decode(latents).images.shape[0] == 1
    served = [after - earlier for after, earlier in zip(decodes(), before, strict=True)]
    assert sum(served) == calls
    assert all(count > 0 for count in served), f"one replica got every call: {served}"
