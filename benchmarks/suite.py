"""The side-by-side suite (`make bench`): five systems, interleaved and repeated, as medians and ratios.

    python -m benchmarks.suite --rounds 3 --duration 5 --out docs/benchmarks

Systems: onnxruntime in-process (the ceiling; no gRPC), our service with dynamic batching, our
service with batching off (--max-batch-items 1), Triton through pytriton with its dynamic batcher,
and a bare grpc.aio server answering with same-sized bytes (the per-request floor of Python gRPC).
The servers all run at once on loopback, idle but for the one under load. Every round runs every
scenario against every system, in an order rotated from round to round, so that the drift of a
shared machine spreads over all systems; the report gives each figure's median over the rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import inprocess, load, report, scrape, systems, workloads
from benchmarks.analysis import summarize
from benchmarks.echo import reply_method
from benchmarks.scenarios import (
    INPROCESS_BATCHES,
    NO_BATCHING,
    QUANTILES,
    SCENARIOS,
    SYSTEMS,
    TRITON_GRAPH,
    TRITON_INFER,
    Scenario,
)
from service import cli as service_cli
from service import client


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.render:
        raw = json.loads(args.render.read_text())
        conditions, settings, results = raw["conditions"], raw["settings"], raw["raw"]
    else:
        with tempfile.TemporaryDirectory(prefix="vae-bench-") as scratch:
            repo, version_dir = _model(args, Path(scratch))
            conditions = {
                "started": _now(),
                "machine": _machine(),
                "command": shlex.join(sys.argv),
                **_load("before"),
            }
            results = _run(args, repo, version_dir, Path(scratch) / "logs")
            conditions.update(_load("after"), finished=_now())
        settings = _settings(args)
    # Summaries are always recomputed from the raw records, so --render gives what a run would.
    document = {"conditions": conditions, "settings": settings, "summary": summarize(results), "raw": results}
    from benchmarks import markdown, plots  # matplotlib: the bench extra

    args.out.mkdir(parents=True, exist_ok=True)
    if not args.render:
        (args.out / "results.json").write_text(json.dumps(document, indent=1))
    (args.out / "summary.md").write_text(markdown.render(document))
    plots.draw(document["summary"], args.out)
    print(f"wrote {args.out}: results.json, summary.md, {', '.join(plots.FILES)}", file=sys.stderr)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path("models"), help="model repository")
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument(
        "--run", type=Path, default=Path("runs/default"), help="exported when the repo has no model"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each run")
    parser.add_argument("--processes", type=int, default=1, help="client processes per run")
    parser.add_argument("--inprocess-seconds", type=float, default=0.3, help="per graph and batch size")
    parser.add_argument("--cold-starts", type=int, default=2, help="per round, for our service")
    parser.add_argument("--service-flags", default="", help="more `vae serve` flags for our service, quoted")
    parser.add_argument("--triton-delay-us", type=int, default=0, help="Triton's dynamic batcher delay")
    parser.add_argument("--no-triton", action="store_true", help="leave Triton out (no .venv-triton)")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument(
        "--render", type=Path, help="redo summary.md and the plots from a results.json; run nothing"
    )
    return parser


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    keys = (
        "rounds",
        "duration",
        "warmup",
        "processes",
        "inprocess_seconds",
        "cold_starts",
        "service_flags",
        "triton_delay_us",
    )
    return {key: getattr(args, key) for key in keys} | {"scenarios": [asdict(s) for s in SCENARIOS]}


def _model(args: argparse.Namespace, scratch: Path) -> tuple[Path, Path]:
    """The bundled version when the repository has it; else one exported from --run into scratch."""
    version_dir = args.repo / args.model / str(args.version)
    if (version_dir / "model.json").exists():
        return args.repo, version_dir
    if not args.run.exists():
        raise SystemExit(
            f"no model at {version_dir} and no run at {args.run}: `make model`, or pass --repo/--run"
        )
    repo = scratch / "models"
    export = [
        sys.executable,
        "-m",
        "vae_cli",
        "export",
        str(args.run),
        "--repo",
        str(repo),
        "--name",
        args.model,
    ]
    subprocess.run([*export, "--version", str(args.version)], check=True)
    return repo, repo / args.model / str(args.version)


# --- running --------------------------------------------------------------------------------------


def _run(
    args: argparse.Namespace, repo: Path, version_dir: Path, logs: Path
) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {"load": [], "inprocess": [], "cold_start": []}
    graphs = inprocess.load_graphs(version_dir)
    with contextlib.ExitStack() as stack:
        servers: dict[str, systems.Server] = {}

        def keep(server: systems.Server) -> None:
            servers[server.name] = server
            stack.callback(server.stop)

        flags = shlex.split(args.service_flags)
        keep(systems.start_service("service", repo, args.model, logs / "service.log", flags))
        nobatch = [*flags, *NO_BATCHING]
        keep(systems.start_service("service, batching off", repo, args.model, logs / "nobatch.log", nobatch))
        if not args.no_triton:
            keep(systems.start_triton(version_dir, logs / "triton.log", 256, args.triton_delay_us))
        plans, reply_sizes = _plans(servers, version_dir, args.model, args.version)
        # The floor runs on our service's event loop, so that service / echo compares like with like.
        event_loop = service_cli.config_from_flags(flags, os.environ).event_loop
        keep(systems.start_echo(sorted(set(reply_sizes)), logs / "echo.log", event_loop))
        for round_ in range(args.rounds):
            _cold_starts(args, repo, version_dir, logs, round_, results["cold_start"])
            for point in inprocess.sweep(graphs, INPROCESS_BATCHES, args.inprocess_seconds, seed=round_):
                results["inprocess"].append({"round": round_, **asdict(point)})
            for index, scenario in enumerate(SCENARIOS):
                order = [name for name in SYSTEMS if (scenario.key, name) in plans]
                shift = (round_ + index) % len(order)
                for name in order[shift:] + order[:shift]:
                    record = _measure_or_fail(args, servers[name], scenario, plans[scenario.key, name])
                    results["load"].append({"round": round_, "system": name, **record})
                    _say(record, name)
    return results


def _plans(
    servers: dict[str, systems.Server], version_dir: Path, model: str, version: int
) -> tuple[dict[tuple[str, str], load.Workload], list[int]]:
    """Every (scenario, system) pair's workload, each checked once; and our responses' sizes."""
    with client.VaeClient(servers["service"].target) as vae:
        info = vae.model_info(model=model, version=version)
    plans: dict[tuple[str, str], load.Workload] = {}
    sizes = []
    for scenario in SCENARIOS:
        workload = workloads.build(scenario.rpc, scenario.items, info)
        checked = workloads.check(servers["service"].target, scenario.rpc, workload)
        plans[scenario.key, "service"] = plans[scenario.key, "service, batching off"] = workload
        # The echo server receives our request and answers with as many bytes as our service did.
        plans[scenario.key, "echo"] = load.Workload(
            reply_method(checked.response_bytes), workload.request, scenario.items
        )
        sizes.append(checked.response_bytes)
        graph = TRITON_GRAPH.get(scenario.rpc)
        if "triton" in servers and graph:
            triton = load.Workload(
                TRITON_INFER, systems.triton_request(version_dir, graph, scenario.items), scenario.items
            )
            load.call_once(servers["triton"].target, triton)  # raises if Triton rejects it
            plans[scenario.key, "triton"] = triton
    return plans, sizes


def _measure_or_fail(
    args: argparse.Namespace, server: systems.Server, scenario: Scenario, workload: load.Workload
) -> dict[str, Any]:
    """One run; a system that broke down is recorded as failed (with its log's tail), not the suite."""
    failure = None
    if server.process.poll() is not None:
        failure = f"{server.name} exited with {server.process.returncode}"
    else:
        try:
            return _measure(args, server, scenario, workload)
        except RuntimeError as exc:
            failure = str(exc)
    return {"scenario": scenario.key, "failed": failure, "log_tail": systems.tail(server.log)}


def _measure(
    args: argparse.Namespace, server: systems.Server, scenario: Scenario, workload: load.Workload
) -> dict[str, Any]:
    scrapes: dict[str, dict[str, scrape.Histogram]] = {}
    cpu: dict[str, float] = {}
    metrics_url = server.metrics_url

    def on_window(edge: str) -> None:
        # CPU is read inside the scrapes, so that answering them is not counted as serving calls.
        if edge == "end":
            cpu[edge] = server.cpu_seconds()
        if metrics_url:
            scrapes[edge] = scrape.read(metrics_url)
        if edge == "start":
            cpu[edge] = server.cpu_seconds()

    result = load.run(
        server.target,
        workload,
        concurrency=scenario.concurrency,
        duration=args.duration,
        warmup=args.warmup,
        processes=args.processes,
        on_window=on_window,
    )
    batch_sizes = scrape.difference(scrapes["start"], scrapes["end"]) if scrapes else None
    summary = report.summarize(
        result,
        target=server.target,
        rpc=scenario.rpc,
        items=scenario.items,
        concurrency=scenario.concurrency,
        processes=args.processes,
        warmup=args.warmup,
        batch_sizes=batch_sizes,
    )
    curve = np.percentile(result.latencies * 1e3, QUANTILES).tolist() if result.requests else None
    # Every call that completed in the window cost the server CPU, failed ones too.
    calls = result.requests + sum(result.errors.values())
    server_cpu = (cpu["end"] - cpu["start"]) * 1e3 / calls if calls else None
    return {
        "scenario": scenario.key,
        "report": summary.to_json(),
        "latency_quantiles_ms": curve,
        "server_cpu_ms_per_call": server_cpu,
    }


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
            "cold", repo, args.model, logs / "cold.log", shlex.split(args.service_flags)
        )
        server.stop()
        into.append({"round": round_, "system": "service", "seconds": server.started_s})
    if not args.no_triton:
        server = systems.start_triton(version_dir, logs / "triton-cold.log", 256, args.triton_delay_us)
        server.stop()
        into.append({"round": round_, "system": "triton", "seconds": server.started_s})


def _say(record: dict[str, Any], system: str) -> None:
    if "failed" in record:
        print(f"{record['scenario']:<15} {system:<22} FAILED: {record['failed']}", file=sys.stderr)
        return
    rep = record["report"]
    p99 = rep["latency_ms"]["p99"] if rep["latency_ms"] else float("nan")
    line = f"{record['scenario']:<15} {system:<22} {rep['requests_per_s']:>9,.0f} req/s  p99 {p99:8.2f} ms"
    print(line + (f"  errors {rep['errors']}" if rep["errors"] else ""), file=sys.stderr)


# --- conditions -----------------------------------------------------------------------------------


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def _load(when: str) -> dict[str, Any]:
    """Load averages, and the other processes using CPU: what a shared machine was doing meanwhile."""
    busy = subprocess.run(
        ["ps", "-eo", "pcpu,comm", "--sort=-pcpu", "--no-headers"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()[:5]
    return {
        f"load_average_{when}": os.getloadavg(),
        f"busiest_processes_{when}": [line.strip() for line in busy],
    }


if __name__ == "__main__":
    sys.exit(main())
