"""The `vae` command: one entry point whose subcommands are registered by each package.

Each package's cli module imports its heavy dependencies inside the handlers, so `vae serve`
works in an environment without torch and `vae train` in one without onnxruntime.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from repository.errors import VaeError

SUBCOMMAND_MODULES = ("training.cli", "export.cli", "service.cli", "service.client_cli", "benchmarks.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vae", description="Train, export and serve a VAE.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module).register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.handler(args)
    except (VaeError, ValueError, FileNotFoundError) as exc:
        print(f"vae {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(result or 0)
