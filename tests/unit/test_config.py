"""ServiceConfig: flags beat VAE_* variables beat defaults; bad values fail with the fix in the message."""

from __future__ import annotations

import argparse
import asyncio
import re
from pathlib import Path

import pytest

from service import event_loop
from service.cli import register
from service.config import AUTO, ServiceConfig, config_from_flags


def serve_args(*argv: str) -> dict[str, object]:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    return vars(parser.parse_args(["serve", *argv]))


def test_defaults_without_flags_or_environment() -> None:
    config = ServiceConfig.load(serve_args(), {})
    assert config == ServiceConfig()
    assert (config.port, config.metrics_port, config.repo, config.model) == (
        50051,
        8000,
        Path("models"),
        "mnist",
    )


def test_environment_overrides_defaults_and_flags_override_environment() -> None:
    env = {"VAE_PORT": "6000", "VAE_MAX_BATCH_ITEMS": "32", "VAE_SPINNING": "yes", "VAE_REPO": "/srv/models"}
    config = ServiceConfig.load(serve_args("--port", "7000", "--no-spinning"), env)
    assert config.port == 7000  # flag over environment
    assert config.spinning is False  # flag over environment
    assert config.max_batch_items == 32  # environment over default
    assert config.repo == Path("/srv/models")
    assert config.max_delay_ms == ServiceConfig().max_delay_ms  # default


def test_every_field_has_a_flag() -> None:
    args = serve_args()
    for name in ServiceConfig.__dataclass_fields__:
        assert name in args, f"no --{name.replace('_', '-')} flag"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VAE_PORT": "http"}, "VAE_PORT must be an integer, got 'http'"),
        ({"VAE_SPINNING": "maybe"}, "VAE_SPINNING must be one of 1/0, true/false"),
        ({"VAE_PORT": "70000"}, "port must be in 0..65535"),
        ({"VAE_DEVICE": "tpu"}, "device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
        ({"VAE_MAX_BATCH_ITEMS": "-1"}, "max_batch_items must be auto (or 0) or at least 1, got -1"),
        ({"VAE_WORKERS": "many"}, "VAE_WORKERS must be an integer or auto, got 'many'"),
        ({"VAE_MAX_REQUEST_ITEMS": "0"}, "max_request_items must be at least 1, got 0"),
        (
            {"VAE_MAX_QUEUE_ITEMS": "8", "VAE_MAX_BATCH_ITEMS": "16"},
            "max_queue_items (8) must be at least max_batch_items",
        ),
        ({"VAE_MAX_QUEUE_ITEMS": "300"}, "max_queue_items (300) must be at least max_request_items (4096)"),
        ({"VAE_MAX_DELAY_MS": "-1"}, "max_delay_ms must be in 0..1000"),
        ({"VAE_LOG_LEVEL": "LOUD"}, "log_level must be DEBUG, INFO, WARNING or ERROR"),
        ({"VAE_EVENT_LOOP": "trio"}, "event_loop must be uvloop or asyncio, got 'trio'"),
    ],
)
def test_invalid_values_say_what_to_fix(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ServiceConfig.load({}, env)


def test_config_is_frozen() -> None:
    config = ServiceConfig()
    with pytest.raises(AttributeError):
        config.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(("name", "module"), [("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_the_server_runs_on_the_event_loop_configured(name: str, module: str) -> None:
    ran_on: list[str] = []

    async def main() -> None:
        ran_on.append(type(asyncio.get_running_loop()).__module__)

    event_loop.run(main(), name)
    assert ran_on and ran_on[0].split(".")[0] == module


def test_config_from_flags_gives_what_vae_serve_would_run_with() -> None:
    env = {"VAE_EVENT_LOOP": "asyncio", "VAE_MAX_DELAY_MS": "2"}
    config = config_from_flags(["--max-delay-ms", "3", "--port", "0"], env)
    assert (config.event_loop, config.max_delay_ms, config.port) == ("asyncio", 3.0, 0)
    assert config_from_flags([], {}).event_loop == "uvloop"


def test_a_str_repo_becomes_a_path_and_an_int_delay_a_float() -> None:
    config = ServiceConfig(repo="models", max_delay_ms=3)  # type: ignore[arg-type]
    assert config.repo == Path("models") and isinstance(config.repo, Path)
    assert config.max_delay_ms == 3.0 and isinstance(config.max_delay_ms, float)
    assert config == ServiceConfig(repo=Path("models"), max_delay_ms=3.0)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"port": "7000"}, "port must be an int, got str '7000'; convert it first"),
        ({"max_batch_items": 2.5}, "max_batch_items must be an int, got float 2.5"),
        ({"port": True}, "port must be an int, got bool True"),
        ({"max_delay_ms": "2"}, "max_delay_ms must be a number, got str '2'"),
        ({"spinning": 1}, "spinning must be a bool, got int 1"),
        ({"model": 5}, "model must be a str, got int 5"),
        ({"repo": 5}, "repo must be a path (str or pathlib.Path), got int 5"),
    ],
)
def test_wrong_types_are_rejected_naming_the_field_and_the_type(
    values: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ServiceConfig(**values)  # type: ignore[arg-type]


def test_workers_and_batch_limit_take_auto_from_flags_and_environment() -> None:
    assert (ServiceConfig().workers, ServiceConfig().max_batch_items) == (AUTO, AUTO)  # the defaults
    config = ServiceConfig.load(serve_args("--workers", "auto"), {"VAE_MAX_BATCH_ITEMS": "Auto"})
    assert (config.workers, config.max_batch_items) == (AUTO, AUTO)
    config = ServiceConfig.load(
        serve_args("--workers", "2"), {"VAE_WORKERS": "auto", "VAE_MAX_BATCH_ITEMS": "64"}
    )
    assert (config.workers, config.max_batch_items) == (2, 64)  # a number still parses, the flag still wins
    assert ServiceConfig.load({}, {"VAE_WORKERS": "auto"}).workers == AUTO


def test_a_count_that_is_neither_a_number_nor_auto_is_refused_by_the_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        serve_args("--workers", "many")
    assert "--workers: expected an integer or auto, got 'many'" in capsys.readouterr().err


def test_help_shows_auto_defaults_and_the_tf32_switch(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        serve_args("--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "--workers N|auto" in text and "[VAE_WORKERS; default auto]" in text
    assert "[VAE_MAX_BATCH_ITEMS; default auto]" in text and "(auto: 256 on CPU, 4096 on CUDA)" in text
    assert "--cuda-tf32, --no-cuda-tf32" in text and "[VAE_CUDA_TF32; default False]" in text


def test_cuda_tf32_is_off_unless_asked() -> None:
    assert ServiceConfig().cuda_tf32 is False
    assert ServiceConfig.load(serve_args("--cuda-tf32"), {}).cuda_tf32 is True
    assert ServiceConfig.load({}, {"VAE_CUDA_TF32": "1"}).cuda_tf32 is True
