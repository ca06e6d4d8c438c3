"""`make bench-gpu`: every section in turn within one time budget, then gpu.json and gpu.md.

    python3 -m benchmarks.gpu --out docs                    # on a GPU machine, under 4 minutes
    python3 -m benchmarks.gpu --device cpu --out /tmp/gpu   # the same logic on the CPU

A section that raises is recorded with its error and the next one runs; one that would start too
close to the deadline is recorded as skipped. Progress goes to stdout as it happens.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import any_vae, conditions
from benchmarks.gpu import inprocess, page, service
from repository.manifest import read_manifest
from repository.placement import select_placement
from repository.runtime import available_providers, onnxruntime_version

REPO_ROOT = Path(__file__).resolve().parents[2]
GPU_TESTS = "tests/integration/test_gpu.py"
SECTIONS = ("sweep", "parity", "tests", "service")
# Asked for by name only: Stable Diffusion's VAE (benchmarks/any_vae.py; importing it needs diffusers).
OPTIONAL = ("any-vae",)
# Seconds a section needs at least to be worth starting.
MINIMUM_S = {
    "sweep": 5.0,
    "parity": 5.0,
    "tests": 20.0,
    "service": service.START_ALLOWANCE_S,
    "any-vae": 60.0,
}
# What the parity and the tests take on an H200 host, with room: the sweep and the tests end early
# enough to leave the later sections these (and the service its estimate).
PARITY_S, TESTS_S = 15.0, 45.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (the logic, without a GPU)")
    parser.add_argument("--repo", type=Path, default=Path("models"), help="model repository")
    parser.add_argument("--model", default="mnist", help="model name")
    parser.add_argument("--version", type=int, default=2, help="model version for the in-process sections")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="writes OUT/gpu.json and OUT/gpu.md")
    parser.add_argument("--budget-s", type=float, default=230.0, help="seconds for all sections together")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS + OPTIONAL, default=list(SECTIONS))
    parser.add_argument(
        "--batches", type=int, nargs="+", default=[1, 16, 64, 256, 1024, 4096, 16384], help="sweep batches"
    )
    parser.add_argument("--cell-s", type=float, default=0.3, help="timed seconds per sweep cell")
    parser.add_argument("--parity-batch", type=int, default=256, help="items compared with the CPU")
    parser.add_argument(
        "--precision-batches", type=int, nargs="+", default=[256, 4096], help="batches timed per TF32 setting"
    )
    parser.add_argument(
        "--workers",
        type=_workers,
        nargs="+",
        default=[1, "auto"],
        help="worker counts to serve with, or auto",
    )
    parser.add_argument(
        "--executor-workers",
        type=_workers,
        nargs="*",
        default=["auto"],
        help="worker counts to serve with through the device executor (--device-executor)",
    )
    parser.add_argument(
        "--loads", nargs="+", choices=list(service.LOADS_BY_NAME), default=list(service.LOADS_BY_NAME)
    )
    parser.add_argument("--load-s", type=float, default=1.5, help="measured seconds per load")
    parser.add_argument("--load-warmup-s", type=float, default=0.5, help="warm-up seconds per load")
    return parser


def _workers(text: str) -> int | str:
    """A --workers value as `vae serve` takes it: a count, or auto."""
    return "auto" if text == "auto" else int(text)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    deadline = started + args.budget_s
    document: dict[str, Any] = {
        "started": conditions.now(),
        "command": shlex.join(["python3", "-m", "benchmarks.gpu", *(sys.argv[1:] if argv is None else argv)]),
        "settings": {
            key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()
        },
        "sections": {},
    }
    sections: dict[str, Any] = document["sections"]
    _section(sections, "environment", started, deadline, 0.0, _environment)
    version_dir = args.repo / args.model / str(args.version)
    with tempfile.TemporaryDirectory(prefix="vae-bench-gpu-") as scratch:
        steps: dict[str, Callable[[], dict[str, Any]]] = {
            "sweep": lambda: _sweep(args, version_dir, deadline - _reserve(args, "sweep")),
            "parity": lambda: _parity(args, version_dir),
            "tests": lambda: _tests(deadline - _reserve(args, "tests")),
            "service": lambda: _service(args, Path(scratch), deadline),
            "any-vae": lambda: _any_vae(args.device),
        }
        for name in args.sections:
            _section(sections, name, started, deadline, MINIMUM_S[name], steps[name])
    document["seconds"] = time.monotonic() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(document, indent=2) + "\n")
    (args.out / "gpu.md").write_text(page.render(document))
    failed = [name for name, section in sections.items() if section["status"] == "failed"]
    print(
        f"wrote {args.out / 'gpu.md'} and gpu.json in {document['seconds']:.0f} s; failed: {failed or 'none'}"
    )
    return 1 if failed else 0


def _reserve(args: argparse.Namespace, name: str) -> float:
    """Seconds the sections selected after `name` are expected to need."""
    per_load = args.load_s + args.load_warmup_s + service.LOAD_OVERHEAD_S
    estimates = {
        "parity": PARITY_S,
        "tests": TESTS_S,
        "service": (len(args.workers) + len(args.executor_workers))
        * (service.START_ALLOWANCE_S + len(args.loads) * per_load),
    }
    later = args.sections[args.sections.index(name) + 1 :]
    return float(sum(estimates.get(section, 0.0) for section in later))


def _section(
    sections: dict[str, Any],
    name: str,
    started: float,
    deadline: float,
    minimum_s: float,
    step: Callable[[], dict[str, Any]],
) -> None:
    """Run one section into sections[name]: its figures and seconds, its error, or why it was skipped."""
    now = time.monotonic()
    print(f"[{now - started:5.1f} s] {name}", flush=True)
    if deadline - now < minimum_s:
        sections[name] = {"status": "skipped", "reason": f"budget: {deadline - now:.0f} s left"}
        return
    try:
        sections[name] = {"status": "ok", **step()}
    except Exception as exc:
        traceback.print_exc()
        sections[name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    sections[name]["seconds"] = time.monotonic() - now
    print(f"[{time.monotonic() - started:5.1f} s] {name}: {sections[name]['status']}", flush=True)


def _environment() -> dict[str, Any]:
    return {
        "gpu": _nvidia_smi(),
        "cpus": os.cpu_count(),
        "cpu_model": conditions.machine()["cpu_model"],
        "python": platform.python_version(),
        "onnxruntime": onnxruntime_version(),
        "providers": available_providers(),
        "torch": _torch_version(),
    }


def _nvidia_smi() -> str | None:
    """The GPU's name, driver and memory, or None where nvidia-smi is missing or fails."""
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    try:
        result = subprocess.run(query, capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return "; ".join(line.strip() for line in result.stdout.splitlines() if line.strip()) or None


def _torch_version() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return str(torch.__version__)


def _sweep(args: argparse.Namespace, version_dir: Path, deadline: float) -> dict[str, Any]:
    placement = select_placement(args.device, available_providers())
    manifest = read_manifest(version_dir)
    figures = inprocess.sweep(version_dir, manifest, placement, args.batches, args.cell_s, deadline)
    return {"cell_s": args.cell_s, **figures}


def _parity(args: argparse.Namespace, version_dir: Path) -> dict[str, Any]:
    placement = select_placement(args.device, available_providers())
    manifest = read_manifest(version_dir)
    return inprocess.parity(
        version_dir, manifest, placement, args.parity_batch, args.precision_batches, args.cell_s
    )


def _any_vae(device: str) -> dict[str, Any]:
    """benchmarks/any_vae.py's figures on the device, with its defaults (SD 1.x at 256 and 512 px)."""
    flags = ["--device", device]
    return any_vae.measure(any_vae.build_parser().parse_args(flags), flags)


def _tests(deadline: float) -> dict[str, Any]:
    """pytest -m gpu in a child process that must end by `deadline`; counts from its JUnit XML."""
    timeout = max(MINIMUM_S["tests"], deadline - time.monotonic())
    with tempfile.TemporaryDirectory(prefix="vae-gpu-tests-") as scratch:
        junit = Path(scratch) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-m", "gpu", GPU_TESTS, "-q", "-p", "no:cacheprovider"]
        command += [f"--junitxml={junit}", *_without_pytest_timeout()]
        result = subprocess.run(
            command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False
        )
        print(result.stdout[-2000:], flush=True)
        suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    total, failed, errors, skipped = (
        int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")
    )
    counts = {
        "passed": total - failed - errors - skipped,
        "failed": failed,
        "errors": errors,
        "skipped": skipped,
    }
    problems = [
        f"{case.get('name')}: {outcome.get('message', '')}"[:500]
        for case in suite.iter("testcase")
        for outcome in case
        if outcome.tag in ("failure", "error")
    ]
    return {
        "command": shlex.join(command[:6]),
        "exit_code": result.returncode,
        "counts": counts,
        "failures": problems,
        "skip_reasons": sorted({s.get("message", "") for s in suite.iter("skipped")}),
    }


def _without_pytest_timeout() -> list[str]:
    """Options that let pytest run where pytest-timeout is not installed (the GPU image).

    pyproject's `timeout` setting is then unknown: --strict-config would make that an error, and
    filterwarnings = error would make its warning one.
    """
    try:
        import pytest_timeout  # noqa: F401
    except ImportError:
        return ["-o", "addopts=-ra --strict-markers", "-W", "ignore::pytest.PytestConfigWarning"]
    return []


def _service(args: argparse.Namespace, logs: Path, deadline: float) -> dict[str, Any]:
    loads = [service.LOADS_BY_NAME[name] for name in args.loads]
    figures = service.measure(
        args.repo,
        args.model,
        args.device,
        args.workers,
        loads,
        executor_workers=args.executor_workers,
        seconds=args.load_s,
        warmup=args.load_warmup_s,
        logs=logs,
        deadline=deadline,
    )
    return {"seconds_per_load": args.load_s, "warmup": args.load_warmup_s, **figures}
