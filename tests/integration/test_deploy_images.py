"""The Dockerfiles, checked without a Docker engine: build inputs, stages, users, installs, commands."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))
SERVING = ("serve-cpu.Dockerfile", "serve-gpu.Dockerfile")
# The console script of this environment: the same entry point the images' ENTRYPOINT runs.
VAE = Path(sys.executable).with_name("vae")


@dataclasses.dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: str


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions in order, continuation lines joined, each tagged with the stage it belongs to."""
    instructions = []
    stage = ""
    for line in re.sub(r"\\\n", " ", path.read_text()).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            words = args.split()
            stage = words[2] if len(words) == 3 and words[1].upper() == "AS" else words[0]
        instructions.append(Instruction(keyword.upper(), args.strip(), stage))
    return instructions


def copy_sources(instruction: Instruction) -> tuple[list[str], dict[str, str]]:
    """COPY's sources and its --flags (shell or JSON form)."""
    args = instruction.args
    flags = {}
    while args.startswith("--"):
        flag, _, args = args.partition(" ")
        name, _, value = flag[2:].partition("=")
        flags[name] = value
    words = json.loads(args) if args.lstrip().startswith("[") else shlex.split(args)
    return words[:-1], flags


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = instructions[-1].stage
    return [i for i in instructions if i.stage == last]


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path, or one of its parent directories, decides."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _glob_regex(pattern.removeprefix("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


def _glob_regex(pattern: str) -> re.Pattern[str]:
    tokens = re.split(r"(\*\*/|\*\*|\*|\?)", pattern)
    wildcards = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(wildcards.get(token, re.escape(token)) for token in tokens))


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


@functools.cache
def vae_help(*subcommand: str) -> str:
    result = subprocess.run(
        [str(VAE), *subcommand, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def subcommands() -> set[str]:
    """The COMMAND list that `vae --help` prints."""
    listing = vae_help().partition("positional arguments:")[2].partition("options:")[0]
    return set(re.findall(r"^ {4}([a-z][\w-]*)", listing, flags=re.M))


def assert_vae_command(argv: list[str], where: str) -> None:
    """argv (after `vae`) names a subcommand of `vae --help`, and every --flag is one it documents."""
    assert argv, f"{where}: no subcommand"
    assert argv[0] in subcommands(), f"{where}: `vae {argv[0]}` is not one of {sorted(subcommands())}"
    documented = vae_help(argv[0])
    for flag in (word.partition("=")[0] for word in argv[1:] if word.startswith("--")):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", documented), f"{where}: {flag} unknown"


def test_the_project_has_the_three_images() -> None:
    assert {path.name for path in DOCKERFILES} == {*SERVING, "train.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copied_file_exists_in_the_build_context(dockerfile: Path) -> None:
    patterns = dockerignore_patterns()
    for instruction in parse_dockerfile(dockerfile):
        if instruction.keyword != "COPY":
            continue
        sources, flags = copy_sources(instruction)
        if "from" in flags:
            continue
        for source in sources:
            assert (REPO / source).exists(), (
                f"{dockerfile.name}: COPY {source}: no such file in the repository"
            )
            assert not dockerignored(source, patterns), (
                f"{dockerfile.name}: COPY {source} is in .dockerignore"
            )


def test_dockerignore_keeps_bulky_and_private_paths_out() -> None:
    # Asserted through the same matcher, so the check above cannot pass by matching nothing.
    patterns = dockerignore_patterns()
    for path in (
        ".venv/bin/python",
        "data/mnist.npz",
        "runs/default/best.pt",
        ".git/config",
        "service/__pycache__",
    ):
        assert dockerignored(path, patterns), path


def _project_packages() -> set[str]:
    """The packages `pip install .` installs: pyproject.toml's find patterns over the repository."""
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    return {
        path.parent.name
        for path in REPO.glob("*/__init__.py")
        if any(re.fullmatch(_glob_regex(pattern), path.parent.name) for pattern in include["include"])
    }


@functools.cache
def _packages_serving_needs() -> set[str]:
    """Project packages loaded once every serving module and the `vae` entry point are imported."""
    modules = [
        path.relative_to(REPO).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__")
        for package in ("service", "repository")
        for path in (REPO / package).rglob("*.py")
        if path.name != "__main__.py"
    ]
    code = (
        "import importlib, json, sys, vae_cli\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120, check=True
    )
    return set(json.loads(result.stdout)) & _project_packages()


def test_vae_serves_with_only_the_serving_packages_installed() -> None:
    # What a serving image holds: the other packages' subcommands are absent, `serve` still parses.
    absent = sorted(_project_packages() - _packages_serving_needs())
    assert {"training", "export", "client", "benchmarks"} <= set(absent)
    code = (
        "import sys\n"
        f"for name in {absent!r}: sys.modules[name] = None  # import of it raises ModuleNotFoundError\n"
        "import vae_cli\n"
        "parser = vae_cli.build_parser()\n"
        "print(parser.parse_args(['serve', '--workers', '2']).workers)\n"
        "print(sorted(parser._subparsers._group_actions[0].choices))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120, check=True
    )
    workers, commands = result.stdout.splitlines()
    assert workers == "2"
    # `vae health` is the images' HEALTHCHECK; `vae client` belongs to callers, not to the server.
    assert "serve" in commands and "health" in commands
    assert "client" not in commands and "train" not in commands


def _copied_packages(dockerfile: Path) -> set[str]:
    copied = set()
    for instruction in parse_dockerfile(dockerfile):
        if instruction.keyword == "COPY" and "from" not in copy_sources(instruction)[1]:
            copied.update(source.strip("/") for source in copy_sources(instruction)[0])
    return copied & _project_packages()


@pytest.mark.parametrize("name", SERVING)
def test_serving_images_copy_exactly_the_packages_serving_imports(name: str) -> None:
    # A package missing from the image breaks `vae serve`; one too many is dead weight.
    needed = _packages_serving_needs()
    assert {"repository", "service", "vae", "vae_cli"} <= needed
    assert _copied_packages(REPO / "docker" / name) == needed


def test_training_image_copies_every_package() -> None:
    assert _copied_packages(REPO / "docker" / "train.Dockerfile") == _project_packages()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_are_multi_stage_and_run_as_a_non_root_user(dockerfile: Path) -> None:
    instructions = parse_dockerfile(dockerfile)
    stages = [i.stage for i in instructions if i.keyword == "FROM"]
    assert len(stages) >= 2, f"{dockerfile.name}: build and runtime should be separate stages"
    for instruction in instructions:
        if instruction.keyword == "COPY" and "from" in (flags := copy_sources(instruction)[1]):
            assert flags["from"] in stages[:-1], f"{dockerfile.name}: COPY --from={flags['from']}"
    users = [i.args for i in final_stage(instructions) if i.keyword == "USER"]
    assert users, f"{dockerfile.name}: the final stage never switches away from root"
    assert users[-1].split(":")[0] not in ("root", "0"), f"{dockerfile.name}: USER {users[-1]}"


def _installed_extras(dockerfile: Path) -> list[str]:
    """The extras the image's dependency layer installs (`docker/requirements.py EXTRA ...`)."""
    runs = " ".join(i.args for i in parse_dockerfile(dockerfile) if i.keyword == "RUN")
    match = re.search(r"docker/requirements\.py((?: [a-z]+)+)", runs)
    assert match, f"{dockerfile.name}: dependencies are not installed through docker/requirements.py"
    return match.group(1).split()


def _requirement_names(dockerfile: Path) -> set[str]:
    spec = importlib.util.spec_from_file_location("docker_requirements", REPO / "docker" / "requirements.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lines = module.requirements(_installed_extras(dockerfile))
    return {re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0].lower() for line in lines}


def test_serving_images_install_onnxruntime_without_torch() -> None:
    cpu, gpu = (_requirement_names(REPO / "docker" / name) for name in SERVING)
    for names in (cpu, gpu):
        assert not names & {"torch", "onnx", "onnxscript"}, names
        assert {"grpcio", "grpcio-health-checking", "prometheus-client"} <= names
    # Both wheels provide the `onnxruntime` module; installed together, one silently shadows the other.
    assert "onnxruntime" in cpu and "onnxruntime-gpu" not in cpu
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu


def test_training_image_installs_torch_and_onnxruntime_for_the_export_check() -> None:
    names = _requirement_names(REPO / "docker" / "train.Dockerfile")
    assert {"torch", "onnx", "onnxruntime"} <= names


def test_gpu_image_runs_on_a_cuda_base_with_cudnn() -> None:
    args = [i.args for i in parse_dockerfile(REPO / "docker" / "serve-gpu.Dockerfile") if i.keyword == "ARG"]
    base = next(arg.partition("=")[2] for arg in args if arg.startswith("CUDA_IMAGE="))
    # onnxruntime-gpu 1.31.1 is built for CUDA 13 and cuDNN 9 (docs/deploy.md); a runtime flavour
    # brings cuBLAS/cuFFT/cuRAND, the cudnn one cuDNN.
    assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", base), base


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_entry_points_are_commands_the_project_has(dockerfile: Path) -> None:
    final = final_stage(parse_dockerfile(dockerfile))
    (entrypoint,) = [json.loads(i.args) for i in final if i.keyword == "ENTRYPOINT"]
    (command,) = [json.loads(i.args) for i in final if i.keyword == "CMD"]
    assert entrypoint == ["vae"]
    assert_vae_command(command, f"{dockerfile.name} CMD")


@pytest.mark.parametrize("name", SERVING)
def test_serving_images_health_check_speaks_grpc_health(name: str) -> None:
    final = final_stage(parse_dockerfile(REPO / "docker" / name))
    (healthcheck,) = [i.args for i in final if i.keyword == "HEALTHCHECK"]
    command = shlex.split(healthcheck.partition(" CMD ")[2])
    argv = command[: command.index("||")] if "||" in command else command
    assert argv[:2] == ["vae", "health"], argv
    assert_vae_command(argv[1:], f"{name} HEALTHCHECK")
    # The probe targets the port the server listens on, set in the same image.
    env = " ".join(i.args for i in final if i.keyword == "ENV")
    assert "${VAE_PORT}" in argv[argv.index("--target") + 1] and "VAE_PORT=50051" in env


def test_compose_commands_are_commands_of_the_images_they_run() -> None:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    commanded = {name: s for name, s in services.items() if "command" in s and s["image"].startswith("vae-")}
    assert {"train", "export"} <= set(commanded)
    for name, service in commanded.items():
        assert_vae_command(service["command"], f"docker-compose.yml {name}")
