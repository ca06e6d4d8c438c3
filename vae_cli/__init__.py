"""The `vae` command: one entry point whose subcommands are registered by each package.

Each package's cli module imports its heavy dependencies inside the handlers, so `vae serve`
works in an environment without torch and `vae train` in one without onnxruntime. A package that
is not installed at all (a serving image holds no client/ or training/) has no subcommands;
a missing dependency is named in one line with the extra that brings it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

from repository.errors import VaeError

SUBCOMMAND_MODULES = (
    "training.cli",
    "export.cli",
    "export.import_cli",
    "service.cli",
    "client.cli",
    "benchmarks.cli",
)
# The pyproject.toml extra that installs each dependency a subcommand may find missing.
EXTRA_OF = {
    "torch": "train",
    "onnx": "train",
    "onnxscript": "train",
    "onnxconverter_common": "train",
    "tensorboard": "train",
    "tqdm": "train",
    "diffusers": "diffusers",
    "safetensors": "diffusers",
    "huggingface_hub": "diffusers",
    "onnxruntime": "serve",
    "grpc": "serve",
    "grpc_health": "serve",
    "grpc_reflection": "serve",
    "prometheus_client": "serve",
    "uvloop": "serve",
    "PIL": "serve",
    "matplotlib": "bench",
    "opentelemetry": "tracing",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless its help already says it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, []) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        # Line by line, keeping each line's indent: a sentence still wraps, an example keeps its line.
        lines = []
        for line in text.splitlines():
            lead = indent + line[: len(line) - len(line.lstrip())]
            lines.append(textwrap.fill(line.strip(), width, initial_indent=lead, subsequent_indent=lead))
        return "\n".join(lines)


class Parser(argparse.ArgumentParser):
    """The `vae` parser and its subcommands' (add_subparsers makes them of the parent's class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def _version() -> str:
    try:
        return importlib.metadata.version("vae-serving")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="vae",
        description="Train, export and serve a VAE.",
        epilog="examples:\n  vae serve --repo models --model mnist\n  vae client sample --help",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
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
