"""Dependencies run one way: training <- export -> repository <- wire <- service, client <- benchmarks.

Each check imports a package's modules in a fresh interpreter and inspects sys.modules, so an
import hidden in a function body is caught as soon as a module-level import would be.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TORCH_FAMILY = ("torch", "onnx", "onnxscript", "onnxconverter_common", "tensorboard")
# The modules `vae serve` and the serving images run: none may need the train extra.
SERVING = ("repository", "wire", "service", "vae_cli")


def _modules(package: str) -> list[str]:
    folder = ROOT / package
    return sorted(
        f"{package}.{path.relative_to(folder).with_suffix('').as_posix().replace('/', '.')}".removesuffix(
            ".__init__"
        )
        for path in folder.rglob("*.py")
        if path.name != "__main__.py"  # running it would run the command
    )


def _loaded_after_importing(modules: list[str]) -> set[str]:
    """Top-level package names in sys.modules after importing `modules` in a fresh interpreter."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return set(json.loads(result.stdout))


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("repository", ("export", "wire", "service", "client", "training", "benchmarks", "vae_cli")),
        # What the server and its callers share: below both.
        ("wire", ("export", "service", "client", "training", "benchmarks", "vae_cli")),
        # The server and the clients know each other only through wire/ and the proto.
        ("service", ("export", "training", "client", "benchmarks")),
        ("client", ("export", "training", "service", "benchmarks")),
        ("export", ("service", "client", "benchmarks")),
        ("training", ("service", "client", "benchmarks")),
    ],
)
def test_a_package_imports_no_layer_above_it(package: str, forbidden: tuple[str, ...]) -> None:
    loaded = _loaded_after_importing(_modules(package))
    assert package in loaded
    assert sorted(loaded.intersection(forbidden)) == []


def test_serving_modules_pull_in_no_torch() -> None:
    modules = [m for package in SERVING for m in _modules(package)]
    loaded = _loaded_after_importing(modules)
    assert "onnxruntime" in loaded and "grpc" in loaded  # the check did import the serving code
    assert sorted(loaded.intersection(TORCH_FAMILY)) == []


def test_the_command_line_registers_every_subcommand_without_torch() -> None:
    # Building the parser imports every package's cli module: heavy imports stay inside handlers.
    heavy = set(TORCH_FAMILY)
    code = f"import sys, vae_cli; vae_cli.build_parser(); print(sorted(set(sys.modules) & {heavy!r}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
