"""The `vae` command explains itself: help with defaults and examples, --version, one-line errors."""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vae_cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def _parsers(
    parser: argparse.ArgumentParser, path: str = "vae"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """The parser and every subcommand's, `vae client sample` included, by their command line."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def _option_help(help_text: str) -> dict[str, str]:
    """Each option's entry in a help text, keyed by its first spelling, wrapped lines joined."""
    entries: dict[str, str] = {}
    current = None
    for line in help_text.splitlines():
        if line.startswith("  -"):
            current = line.split()[0].rstrip(",")
            entries[current] = line.strip()
        elif current and line.startswith("    "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


PARSERS = dict(_parsers(build_parser()))


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_every_help_shows_an_example_and_each_default(command: str) -> None:
    parser = PARSERS[command]
    help_text = parser.format_help()
    assert re.search(r"^examples?:\n  vae ", help_text, re.MULTILINE), help_text
    entries = _option_help(help_text)
    for action in parser._actions:
        if action.option_strings and action.default not in (None, False, [], argparse.SUPPRESS):
            assert "default" in entries[action.option_strings[0]], (
                command,
                entries[action.option_strings[0]],
            )


def test_the_walk_reaches_nested_subcommands() -> None:
    assert {"vae client sample", "vae client list-models", "vae client info", "vae train"} <= set(PARSERS)


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"vae {importlib.metadata.version('vae-serving')}"


@pytest.mark.parametrize(
    "args",
    [["train", "--run", "{tmp}/run"], ["eval", "{tmp}/run", "--k", "1"], ["sample", "{tmp}/run"],
     ["export", "{tmp}/run", "--name", "m", "--repo", "{tmp}/models"]],
)  # fmt: skip
def test_torch_commands_in_a_serving_environment_name_the_extra(args: list[str], tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # as if torch were not installed: importing it raises\n"
        "from vae_cli import main\n"
        "sys.exit(main(sys.argv[1:]))"
    )
    argv = [arg.format(tmp=tmp_path) for arg in args]
    result = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"vae {args[0]}: error: needs torch, which this environment lacks; "
        "install the 'train' extra: pip install -e '.[train]'\n"
    )


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one line a failing command prints; it must exit 2."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_client_decode_of_an_image_says_it_takes_latents(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "x.png").write_bytes(b"")
    err = _error(["client", "decode", str(tmp_path / "x.png"), "--target", "127.0.0.1:1"], capsys)
    assert "decode takes latents, a .npy array [n, ...]" in err and "vae client reconstruct" in err


def test_client_tls_errors_name_the_flag_and_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = ["client", "sample", "--target", "127.0.0.1:1", "--out", str(tmp_path)]
    err = _error([*sample, "--tls-cert", str(tmp_path / "client.crt")], capsys)
    assert "--tls-cert and --tls-key go together" in err
    err = _error([*sample, "--tls-ca", str(tmp_path / "missing-ca.pem")], capsys)
    assert f"--tls-ca {tmp_path / 'missing-ca.pem'}: No such file or directory" in err


def test_client_label_is_one_class_or_a_comma_list(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(["client", "sample", "--label", "7"]).label == [7]
    assert parser.parse_args(["client", "score", "x.png", "y.png", "--label", "1,4"]).label == [1, 4]
    assert parser.parse_args(["client", "encode", "x.png"]).label is None
    assert parser.parse_args(["client", "interpolate", "a.png", "b.png", "--label", "3"]).label == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["client", "decode", "z.npy", "--label", "7,x"])
    assert "expected a class index or a comma list of them (7 or 1,4,7), got '7,x'" in capsys.readouterr().err


def test_eval_warns_how_long_it_will_take(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # No run there: the command fails after the warning, before evaluating anything.
    assert main(["eval", str(tmp_path / "none"), "--k", "5000"]) == 2
    assert "10,000 test images x k=5000 = 50,000,000 decodes: about 1.5 h" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "none"), "--k", "100", "--subset", "100"]) == 2
    assert "decodes: about" not in capsys.readouterr().err  # a second: no warning


# A dataset that does not exist: were training to start, it would fail at once, and differently.
NO_DATA = ["--set", "train.dataset=/nonexistent-dataset", "--no-progress"]


def test_train_refuses_a_run_directory_that_holds_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (tmp_path / "last.pt").write_bytes(b"checkpoint")
    err = _error(["train", "--run", str(tmp_path), *NO_DATA], capsys)
    assert f"{tmp_path} already holds a run (last.pt, metrics.jsonl)" in err
    assert "pass --resume to continue it, or --force to start over" in err
    assert (tmp_path / "metrics.jsonl").read_text() == '{"epoch": 1}\n'


def test_train_force_starts_over(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "best.pt").write_bytes(b"checkpoint")
    (tmp_path / "epoch-010.pt").write_bytes(b"a snapshot of the old run")
    err = _error(["train", "--run", str(tmp_path), "--force", *NO_DATA], capsys)
    assert "/nonexistent-dataset" in err  # got as far as loading the data
    assert sorted(path.name for path in tmp_path.iterdir()) == []
