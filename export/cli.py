"""`vae export`, `vae recover` and `vae verify`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _export(args: argparse.Namespace) -> int:
    from export.onnx_export import export_run

    path = export_run(
        args.run, args.repo, args.name, version=args.version, fp16=args.fp16, score_k=args.score_k
    )
    print(f"exported {path}")
    return 0


def _recover(args: argparse.Namespace) -> int:
    from export.recover import recover_run

    print(f"recovered {recover_run(args.version, args.run)}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from repository.placement import select_placement
    from repository.runtime import available_providers
    from repository.verify import verify_version

    if not args.path.is_dir():
        raise FileNotFoundError(f"{args.path} is not a directory; pass a version, e.g. models/mnist/1")
    if args.cuda_tf32 and args.device == "cpu":
        raise ValueError("--cuda-tf32 applies to --device cuda or cuda:N only")
    # On a machine without CUDA, `--device cuda` stops here with the extra to install.
    placement = select_placement(args.device, available_providers(), tf32=args.cuda_tf32)
    report = verify_version(args.path, placement=placement)
    for check in report.checks:
        print(f"{'ok  ' if check.passed else 'FAIL'}  {check.name}: {check.message}")
    print(f"{args.path}: {'verified' if report.ok else f'{len(report.failures)} check(s) failed'}")
    return 0 if report.ok else 1


def register(commands: Any) -> None:
    export = commands.add_parser(
        "export",
        help="export a run's checkpoint to ONNX as a new version in a model repository",
        epilog="example:\n  vae export runs/default --repo models --name mnist",
    )
    export.add_argument("run", type=Path, help="run directory (best.pt, else last.pt) or a .pt file")
    export.add_argument(
        "--repo", type=Path, default=Path("models"), help="model repository (default: models)"
    )
    export.add_argument("--name", required=True, help="model name, e.g. mnist")
    export.add_argument("--version", type=int, default=None, help="default: the next free version")
    export.add_argument("--fp16", action="store_true", help="also write half-precision copies")
    export.add_argument(
        "--score-k",
        type=int,
        default=64,
        help="record the test set's Score quantiles at this k in model.json, the drift baseline "
        "(needs the run's dataset; 0: skip)",
    )
    export.set_defaults(handler=_export)

    recover = commands.add_parser(
        "recover",
        help="rebuild a training checkpoint from an exported version, to fine-tune it",
        description=(
            "Reads the weights back out of a version's graphs (and its prior file) into RUN/last.pt, "
            "after checking that the rebuilt model gives the graphs' outputs. A VampPrior comes back as "
            "the mixture it was exported as. Fine-tune it with `vae train --set train.init=RUN`."
        ),
        epilog="example:\n  vae recover models/mnist/2 --run runs/mnist-2",
    )
    recover.add_argument("version", type=Path, help="an exported version, e.g. models/mnist/2")
    recover.add_argument("--run", type=Path, required=True, help="new run directory to write last.pt into")
    recover.set_defaults(handler=_recover)

    verify = commands.add_parser(
        "verify",
        help="check a model version: hashes, shapes, pairing, a batch",
        epilog="examples:\n  vae verify models/mnist/1\n  vae verify models/mnist/2 --device cuda",
    )
    verify.add_argument("path", type=Path, help="a version directory, e.g. models/mnist/1")
    verify.add_argument(
        "--device",
        default="cpu",
        help="cpu, or cuda / cuda:N: also run the check batch there, which must match the CPU within "
        "1e-4 (needs the gpu extra)",
    )
    verify.add_argument(
        "--cuda-tf32",
        action="store_true",
        help="on CUDA, with TF32 math, as `vae serve --cuda-tf32`: then within 1e-2 (docs/gpu.md)",
    )
    verify.set_defaults(handler=_verify)
