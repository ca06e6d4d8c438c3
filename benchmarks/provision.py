"""What the suite runs against: the model, every system's server started, and each pair's checked workload."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks import load, systems, workloads
from benchmarks.echo import reply_method
from benchmarks.scenarios import (
    BASELINE_RPCS,
    BASELINES,
    NO_BATCHING,
    TRITON_GRAPH,
    TRITON_INFER,
    Scenario,
)
from client.clients import VaeClient
from service.config import config_from_flags

Plans = dict[tuple[str, str], load.Workload]  # (scenario key, system) -> its load


def model(repo: Path, name: str, version: int, run: Path, scratch: Path) -> tuple[Path, Path]:
    """(repo, version dir): the bundled version when the repository has it; else one exported from
    `run` into scratch."""
    version_dir = repo / name / str(version)
    if (version_dir / "model.json").exists():
        return repo, version_dir
    if not run.exists():
        raise SystemExit(f"no model at {version_dir} and no run at {run}: `make model`, or pass --repo/--run")
    exported = scratch / "models"
    export = [sys.executable, "-m", "vae_cli", "export", str(run), "--repo", str(exported), "--name", name]
    subprocess.run([*export, "--version", str(version)], check=True)
    return exported, exported / name / str(version)


def start(
    stack: contextlib.ExitStack,
    names: Sequence[str],
    scenarios: Sequence[Scenario],
    repo: Path,
    version_dir: Path,
    service_flags: Sequence[str],
    triton_delay_us: int,
    logs: Path,
) -> tuple[dict[str, systems.Server], Plans]:
    """The servers of the systems `names` (our service always: the others' loads are built from it),
    each stopped when `stack` closes; and the workload of every pair of a scenario and a system."""
    model_name, version = version_dir.parent.name, int(version_dir.name)
    servers: dict[str, systems.Server] = {}

    def keep(server: systems.Server) -> None:
        servers[server.name] = server
        stack.callback(server.stop)

    keep(systems.start_service("service", repo, model_name, logs / "service.log", service_flags))
    if "service, batching off" in names:
        flags = [*service_flags, *NO_BATCHING]
        keep(systems.start_service("service, batching off", repo, model_name, logs / "nobatch.log", flags))
    if "triton" in names:
        keep(systems.start_triton(version_dir, logs / "triton.log", 256, triton_delay_us))
    # The bare servers run on our service's event loop, so that they compare like with like.
    event_loop = config_from_flags(service_flags, os.environ).event_loop
    for name, batching in BASELINES.items():
        if name in names:
            log = logs / f"baseline-{'batched' if batching else 'unbatched'}.log"
            keep(systems.start_baseline(name, version_dir, log, event_loop, batching=batching))
    with VaeClient(servers["service"].target) as vae:
        info = vae.model_info(model=model_name, version=version)
    plans: Plans = {}
    reply_sizes = []
    for scenario in scenarios:
        checked = workloads.check(
            servers["service"].target, scenario.rpc, workloads.build(scenario.rpc, scenario.items, info)
        )
        reply_sizes.append(checked.response_bytes)
        for name, server in servers.items():
            if workload := _workload(server, scenario, checked, version_dir):
                plans[scenario.key, name] = workload
    if "echo" in names:
        keep(systems.start_echo(sorted(set(reply_sizes)), logs / "echo.log", event_loop))
        for scenario, size in zip(scenarios, reply_sizes, strict=True):
            # The echo server receives our request and answers with as many bytes as our service did.
            request = plans[scenario.key, "service"].request
            plans[scenario.key, "echo"] = load.Workload(reply_method(size), request, scenario.items)
    return servers, plans


def _workload(
    server: systems.Server, scenario: Scenario, checked: workloads.Checked, version_dir: Path
) -> load.Workload | None:
    """What `server` is sent for `scenario`, checked once; None where it cannot answer that RPC."""
    if server.name in ("service", "service, batching off"):
        return checked.workload
    if server.name in BASELINES:
        if scenario.rpc not in BASELINE_RPCS:
            return None
        # Our very request, answered correctly once (raises otherwise).
        return workloads.check(server.target, scenario.rpc, checked.workload).workload
    graph = TRITON_GRAPH.get(scenario.rpc)
    if not graph:
        return None
    triton = load.Workload(
        TRITON_INFER, systems.triton_request(version_dir, graph, scenario.items), scenario.items
    )
    load.call_once(server.target, triton)  # raises if Triton rejects it
    return triton
