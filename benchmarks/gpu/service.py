"""The service under issue 29's loads: `vae serve --device D`, 1 and `auto` workers, under `vae bench`.

Worker counts run as independent workers (`--workers N`) and, as asked, as front ends of the device
executor (`--workers N --device-executor`, service/executor.py), so one run compares the two designs.

Each configuration is one server process, started on free loopback ports, loaded with every load in
turn (a short warm-up, then a measured window), and stopped. A load that would end after the
deadline is recorded as skipped.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from benchmarks import Rpc

# Loading and warming both graphs on a device, with every worker at once.
START_ALLOWANCE_S = 20.0
# A load's fixed costs besides its window: spawning the client processes, the checked first call.
LOAD_OVERHEAD_S = 2.0
PLUGIN_EP_LINE = "No registered plugin EP device found"
# Server log lines worth keeping in the record: what loaded where, and anything gone wrong.
NOTABLE = ("loaded ", "auto: ", "WARNING", "ERROR", "[W:", "[E:")
# What `--workers auto` became (service/sizing.py logs it).
AUTO_WORKERS_LINE = re.compile(r"workers auto: (\d+) on ")


@dataclass(frozen=True)
class Load:
    """One row of issue 29's service table; `figure` is what its cell shows."""

    name: str
    title: str
    rpc: Rpc
    items: int
    concurrency: int
    output_dtype: Literal["float32", "uint8"] = "float32"
    figure: str = "items"  # items (items/s), calls (calls/s and p99), p50, or refused


LOADS = (
    Load("decode-1-c64", "Decode 1 latent, 64 callers", "decode", 1, 64, figure="calls"),
    Load("sample-256-c16-float32", "Sample n=256, 16 callers, float32", "sample", 256, 16),
    Load("sample-256-c16-uint8", "Sample n=256, 16 callers, uint8", "sample", 256, 16, "uint8"),
    Load("encode-256-c16", "Encode 256 images, 16 callers", "encode", 256, 16),
    Load("sample-4096-c1", "Sample n=4,096, 1 caller", "sample", 4096, 1, figure="p50"),
    Load("decode-1024-c8", "Decode 1,024 latents, 8 callers", "decode", 1024, 8, figure="refused"),
    Load("decode-1-c1", "Decode 1 latent, 1 caller", "decode", 1, 1, figure="p50"),
)
LOADS_BY_NAME = {load.name: load for load in LOADS}


def client_processes(concurrency: int) -> int:
    """A client process per four cores: one Python process cannot keep a many-core server busy."""
    return max(1, min(concurrency, (os.cpu_count() or 1) // 4))


def measure(
    repo: Path,
    model: str,
    device: str,
    workers: Sequence[int | str],
    loads: Sequence[Load],
    *,
    executor_workers: Sequence[int | str] = (),
    seconds: float,
    warmup: float,
    logs: Path,
    deadline: float,
) -> dict[str, Any]:
    """Every load against each worker count, then each through the device executor.

    A configuration that fails to start is recorded as such.
    """
    configs = []
    for count, executor in [*((c, False) for c in workers), *((c, True) for c in executor_workers)]:
        config: dict[str, Any] = {"workers": count, "device_executor": executor, "loads": {}}
        configs.append(config)
        if time.monotonic() + START_ALLOWANCE_S > deadline:
            config["skipped"] = "budget"
            continue
        try:
            _serve(config, repo, model, device, loads, seconds, warmup, logs, deadline)
        except Exception as exc:  # the other configuration may still start
            config["error"] = f"{type(exc).__name__}: {exc}"
    return {"device": device, "loads": [asdict(load) for load in loads], "configs": configs}


def _serve(
    config: dict[str, Any],
    repo: Path,
    model: str,
    device: str,
    loads: Sequence[Load],
    seconds: float,
    warmup: float,
    logs: Path,
    deadline: float,
) -> None:
    # Imported here: the in-process sections run even where the load generator cannot be imported.
    from benchmarks import load as load_gen
    from benchmarks import report, systems, workloads

    count = config["workers"]
    name = f"serve-workers-{count}" + ("-executor" if config["device_executor"] else "")
    log = logs / f"{name}.log"
    flags = ["--device", device, "--workers", str(count)]
    if config["device_executor"]:
        flags.append("--device-executor")
    server = systems.start_service(name, repo, model, log, flags)
    config["started_s"] = server.started_s
    print(f"  {workers(config)} worker(s): serving after {server.started_s:.1f} s", flush=True)
    try:
        for load in loads:
            if time.monotonic() + warmup + seconds + LOAD_OVERHEAD_S > deadline:
                config["loads"][load.name] = {"skipped": "budget"}
                continue
            try:
                checked = workloads.prepare(
                    server.target, load.rpc, load.items, model=model, output_dtype=load.output_dtype
                )
                processes = client_processes(load.concurrency)
                result = load_gen.run(
                    server.target,
                    checked.workload,
                    concurrency=load.concurrency,
                    duration=seconds,
                    warmup=warmup,
                    processes=processes,
                )
            except Exception as exc:  # the next load may still run
                config["loads"][load.name] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            summary = report.summarize(
                result,
                target=server.target,
                rpc=load.rpc,
                items=load.items,
                concurrency=load.concurrency,
                processes=processes,
                warmup=warmup,
            ).to_json()
            summary["calls"] = summary["requests"] + sum(summary["errors"].values())
            summary["refused"] = summary["errors"].get("RESOURCE_EXHAUSTED", 0)
            config["loads"][load.name] = summary
            print(f"    {load.name}: {cell(load, summary)}", flush=True)
    finally:
        server.stop()
        text = log.read_text(errors="replace")
        config["plugin_ep_log_lines"] = text.count(PLUGIN_EP_LINE)
        if count == "auto" and (auto := AUTO_WORKERS_LINE.search(text)):
            config["auto_workers"] = int(auto[1])
        config["notable_log_lines"] = [line for line in text.splitlines() if any(w in line for w in NOTABLE)][
            :40
        ]


def workers(config: dict[str, Any]) -> str:
    """A configuration's workers as asked, what `auto` became, the executor: "auto (4) + executor"."""
    auto = config.get("auto_workers")
    executor = " + executor" if config.get("device_executor") else ""
    return f"{config['workers']}" + (f" ({auto})" if auto is not None else "") + executor


def cell(load: Load, record: dict[str, Any]) -> str:
    """A load's result as issue 29's table shows it."""
    if "skipped" in record:
        return f"skipped ({record['skipped']})"
    if "error" in record:
        return "failed"
    latency = record["latency_ms"] or {}
    if load.figure == "calls":
        return f"{record['requests_per_s']:,.0f} calls/s, p99 {latency.get('p99', float('nan')):.1f} ms"
    if load.figure == "p50":
        return f"p50 {latency.get('p50', float('nan')):.2f} ms"
    if load.figure == "refused":
        return f"{record['refused']:,} of {record['calls']:,} calls refused"
    return f"{record['items_per_s']:,.0f} items/s"
