"""The `vae` command: one entry point whose subcommands are registered by each package.

Each package's cli module imports its heavy dependencies inside the handlers, so `vae serve`
works in an environment without torch and `vae train` in one without onnxruntime. A package that
is not installed at all (a serving image holds only repository/ and service/) has no subcommands;
a missing dependency is named in one line with the extra that brings it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from repository.errors import VaeError

SUBCOMMAND_MODULES = ("training.cli", "export.cli", "service.cli", "service.client_cli", "benchmarks.cli")
# The pyproject.toml extra that installs each dependency a subcommand may find missing.
EXTRA_OF = {
    "torch": "train",
    "onnx": "train",
    "onnxscript": "train",
    "onnxconverter_common": "train",
    "tensorboard": "train",
    "tqdm": "train",
    "onnxruntime": "serve",
    "grpc": "serve",
    "grpc_health": "serve",
    "grpc_reflection": "serve",
    "prometheus_client": "serve",
    "uvloop": "serve",
    "PIL": "serve",
    "matplotlib": "bench",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vae", description="Train, export and serve a VAE.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMAND_MODULES:
        try:
            registered = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if (exc.name or "").partition(".")[0] != module.partition(".")[0]:
                raise  # the package is there but something it needs is not: a real error
            continue  # the package is not installed here: its subcommands do not exist
        registered.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.handler(args)
    except (VaeError, ValueError, FileNotFoundError) as exc:
        print(f"vae {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in EXTRA_OF:
            raise
        extra = EXTRA_OF[missing]
        print(
            f"vae {args.command}: error: needs {missing}, which this environment lacks; "
            f"install the '{extra}' extra: pip install -e '.[{extra}]'",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130
    return int(result or 0)
