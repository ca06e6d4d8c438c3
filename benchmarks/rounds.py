"""The suite's schedule: rounds of cold starts, the in-process sweep, and every scenario on every system
in each mode, the system order rotated from scenario to scenario and round to round."""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks import inprocess, processes, provision, systems
from benchmarks.measure import RunLength, measure_or_fail, say
from benchmarks.scenarios import INPROCESS_BATCHES, PINNED_SCENARIOS, SCENARIOS, SYSTEMS

Results = dict[str, list[dict[str, Any]]]


def run(args: argparse.Namespace, repo: Path, version_dir: Path, logs: Path) -> Results:
    """Every run of the suite, as raw records: "load" (one per run), "inprocess" and "cold_start"."""
    results: Results = {"load": [], "inprocess": [], "cold_start": []}
    graphs = inprocess.load_graphs(version_dir)
    flags = shlex.split(args.service_flags)
    length = RunLength(args.duration, args.warmup, args.processes)
    every_cpu = frozenset(os.sched_getaffinity(0))
    server_cpus, client_cpus = processes.split_cpus() if "pinned" in args.modes else (every_cpu, None)
    with contextlib.ExitStack() as stack:
        chosen = [s for s in SCENARIOS if s.key in args.scenarios]
        servers, plans = provision.start(
            stack, args.systems, chosen, repo, version_dir, flags, args.triton_delay_us, logs
        )
        for round_ in range(args.rounds):
            _cold_starts(args, repo, version_dir, logs, round_, results["cold_start"])
            for point in inprocess.sweep(graphs, INPROCESS_BATCHES, args.inprocess_seconds, seed=round_):
                results["inprocess"].append({"round": round_, **asdict(point)})
            for mode in args.modes:
                pinned = mode == "pinned"
                for server in servers.values():
                    server.pin(server_cpus if pinned else every_cpu)
                scenarios = [s for s in chosen if s in PINNED_SCENARIOS] if pinned else chosen
                for index, scenario in enumerate(scenarios):
                    names = [
                        name for name in SYSTEMS if name in args.systems and (scenario.key, name) in plans
                    ]
                    for name in _rotated(names, round_ + index):
                        cpus = client_cpus if pinned else None
                        record = measure_or_fail(
                            servers[name], scenario, plans[scenario.key, name], length, cpus
                        )
                        results["load"].append({"round": round_, "mode": mode, "system": name, **record})
                        say(record, name, mode)
    return results


def _rotated(names: Sequence[str], shift: int) -> list[str]:
    """So that the drift of a shared machine spreads over all systems."""
    shift %= max(len(names), 1)
    return [*names[shift:], *names[:shift]]


def _cold_starts(
    args: argparse.Namespace,
    repo: Path,
    version_dir: Path,
    logs: Path,
    round_: int,
    into: list[dict[str, Any]],
) -> None:
    """Process start to SERVING for our service (several times) and to both models ready for Triton."""
    for _ in range(args.cold_starts):
        server = systems.start_service(
            "cold", repo, version_dir.parent.name, logs / "cold.log", shlex.split(args.service_flags)
        )
        server.stop()
        into.append({"round": round_, "system": "service", "seconds": server.started_s})
    if "triton" in args.systems:
        server = systems.start_triton(version_dir, logs / "triton-cold.log", 256, args.triton_delay_us)
        server.stop()
        into.append({"round": round_, "system": "triton", "seconds": server.started_s})
