"""The side-by-side suite (`make bench`): seven systems, interleaved and repeated, as medians and ratios.

    python -m benchmarks.suite --rounds 3 --duration 3 --out docs/benchmarks

Systems: onnxruntime in-process (the ceiling; no gRPC), our service with dynamic batching, our
service with batching off (--max-batch-items 1), Triton through pytriton with its dynamic batcher,
a bare grpc.aio server answering with same-sized bytes (the per-request floor of Python gRPC), and
two minimal vae.v1 servers, with a 1 ms micro-batcher and without batching (benchmarks/baselines.py).
The servers all run at once on loopback, idle but for the one under load. Every round runs every
scenario against every system, in an order rotated from round to round, so that the drift of a
shared machine spreads over all systems; the report gives each figure's median over the rounds.
Each round runs unpinned (servers and client share every core) and pinned (the server on one core,
the client on the others: capacity per core, without the client competing).

Files: provision.py starts the systems, rounds.py schedules the runs, measure.py measures one,
conditions.py records the host, analysis.py, markdown.py and plots.py turn records into results.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from benchmarks import conditions, provision, rounds
from benchmarks.analysis import summarize
from benchmarks.scenarios import MODES, SCENARIOS, SYSTEMS

SETTINGS = (
    "rounds",
    "duration",
    "warmup",
    "processes",
    "inprocess_seconds",
    "cold_starts",
    "service_flags",
    "triton_delay_us",
    "systems",
    "modes",
)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.render:
        raw = json.loads(args.render.read_text())
        host, settings, results = raw["conditions"], raw["settings"], raw["raw"]
    else:
        with tempfile.TemporaryDirectory(prefix="vae-bench-") as scratch:
            repo, version_dir = provision.model(args.repo, args.model, args.version, args.run, Path(scratch))
            host = {
                "started": conditions.now(),
                "machine": conditions.machine(),
                "command": shlex.join(sys.argv),
                **conditions.host_load("before"),
            }
            results = rounds.run(args, repo, version_dir, Path(scratch) / "logs")
            host.update(conditions.host_load("after"), finished=conditions.now())
        settings = {key: getattr(args, key) for key in SETTINGS}
        settings["scenarios"] = [asdict(s) for s in SCENARIOS if s.key in args.scenarios]
    # Summaries are always recomputed from the raw records, so --render gives what a run would.
    document = {"conditions": host, "settings": settings, "summary": summarize(results), "raw": results}
    from benchmarks import markdown, plots  # matplotlib: the bench extra

    args.out.mkdir(parents=True, exist_ok=True)
    if not args.render:
        (args.out / "results.json").write_text(json.dumps(document, indent=1))
    (args.out / "summary.md").write_text(markdown.render(document))
    plots.draw(document["summary"], args.out)
    print(f"wrote {args.out}: results.json, summary.md, {', '.join(plots.FILES)}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path("models"), help="model repository")
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument(
        "--run", type=Path, default=Path("runs/default"), help="exported when the repo has no model"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each run")
    parser.add_argument("--processes", type=int, default=1, help="client processes per run")
    parser.add_argument("--inprocess-seconds", type=float, default=0.3, help="per graph and batch size")
    parser.add_argument("--cold-starts", type=int, default=2, help="per round, for our service")
    parser.add_argument("--service-flags", default="", help="more `vae serve` flags for our service, quoted")
    parser.add_argument("--triton-delay-us", type=int, default=0, help="Triton's dynamic batcher delay")
    parser.add_argument(
        "--systems",
        nargs="+",
        choices=SYSTEMS,
        default=list(SYSTEMS),
        metavar="SYSTEM",
        help=f"the systems to measure (default: all of {', '.join(map(repr, SYSTEMS))}); leave out "
        "'triton' where there is no .venv-triton",
    )
    parser.add_argument(
        "--scenarios",
        nargs="+",
        choices=[s.key for s in SCENARIOS],
        default=[s.key for s in SCENARIOS],
        metavar="SCENARIO",
        help="the scenarios to run (default: all)",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=list(MODES),
        help="unpinned, and pinned: the server on one CPU and the client on the others (default: both)",
    )
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument(
        "--render", type=Path, help="redo summary.md and the plots from a results.json; run nothing"
    )
    return parser


if __name__ == "__main__":
    sys.exit(main())
