"""`vae verify`: a good version passes, and each kind of damage is caught with a clear message."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from repository.errors import VerificationError
from repository.manifest import file_sha256
from repository.placement import CUDA, Placement
from repository.runtime import available_providers
from repository.verify import verify_version
from vae_cli import main

ALL_CHECKS = ["manifest", "contract", "hashes", "load", "shapes", "pairing", "end-to-end"]


@pytest.fixture
def version(tiny_model_repo: Path, tmp_path: Path) -> Path:
    """A private copy of tiny/1 that a test may damage."""
    shutil.copytree(tiny_model_repo, tmp_path / "models")
    return tmp_path / "models" / "tiny" / "1"


def _failures(path: Path) -> dict[str, str]:
    return {check.name: check.message for check in verify_version(path).failures}


def _edit_manifest(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads((path / "model.json").read_text())
    edit(data)
    (path / "model.json").write_text(json.dumps(data))


def test_exported_version_passes_every_check(version: Path) -> None:
    report = verify_version(version)
    assert report.ok, report.failures
    assert [c.name for c in report.checks] == ALL_CHECKS
    report.raise_for_failures()  # does not raise


def test_conditional_version_passes_every_check_and_its_classes_are_checked(
    tiny_cvae_repo: Path, tmp_path: Path
) -> None:
    shutil.copytree(tiny_cvae_repo, tmp_path / "models")
    version = tmp_path / "models" / "tiny-cvae" / "1"
    report = verify_version(version)
    assert report.ok, report.failures
    assert [c.name for c in report.checks] == [*ALL_CHECKS, "classes"]
    # A manifest that forgets its classes no longer matches its graphs' contract or metadata.
    _edit_manifest(version, lambda data: data.pop("classes"))
    failures = _failures(version)
    assert "no classes require x float32" in failures["contract"]
    assert "metadata vae.classes" not in failures.get("pairing", "")
    # Naming more classes than the graphs embed is caught when they run.
    _edit_manifest(version, lambda data: data.update(classes=["a", "b", "c", "d"]))
    failures = _failures(version)
    assert 'metadata vae.classes is \'["a", "b", "c"]\'' in failures["pairing"]
    assert "onnxruntime failed" in failures["classes"]


@pytest.fixture
def mixture_version(tiny_mixture_repo: Path, tmp_path: Path) -> Path:
    """A private copy of tiny-mixture/1 that a test may damage."""
    shutil.copytree(tiny_mixture_repo, tmp_path / "models")
    return tmp_path / "models" / "tiny-mixture" / "1"


def test_a_learned_prior_is_checked(mixture_version: Path) -> None:
    report = verify_version(mixture_version)
    assert report.ok, report.failures
    assert [c.name for c in report.checks] == [*ALL_CHECKS[:3], "prior", *ALL_CHECKS[3:]]


def test_a_tampered_prior_file_fails_its_hash(mixture_version: Path) -> None:
    with np.load(mixture_version / "prior.npz") as data:
        arrays = {name: data[name] for name in data.files}
    arrays["means"][0, 0] += 1.0
    np.savez(mixture_version / "prior.npz", **arrays)
    failures = _failures(mixture_version)
    assert list(failures) == ["hashes"] and failures["hashes"].startswith("prior.npz sha256 is ")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda a: a.update(log_weights=a["log_weights"] + np.float32(0.1)), "weights sum to 1.10517"),
        (lambda a: a.update(means=a["means"][:, :4]), r"means is float32 \[3, 4\]"),
        (lambda a: a["logvars"].__setitem__((1, 1), np.inf), "logvars has NaN or Inf"),
    ],
)
def test_an_ill_formed_prior_file_fails_the_prior_check(
    mixture_version: Path, damage: Callable[[dict[str, np.ndarray]], None], message: str
) -> None:
    with np.load(mixture_version / "prior.npz") as data:
        arrays = {name: data[name] for name in data.files}
    damage(arrays)
    np.savez(mixture_version / "prior.npz", **arrays)
    # Re-hashed, as someone who meant it would: the prior check is what catches it.
    _edit_manifest(
        mixture_version, lambda d: d["prior"].update(sha256=file_sha256(mixture_version / "prior.npz"))
    )
    failures = _failures(mixture_version)
    assert list(failures) == ["prior"]
    assert re.search(message, failures["prior"]), failures


def test_tampered_file_is_caught_before_it_is_loaded(version: Path) -> None:
    data = bytearray((version / "decoder.onnx").read_bytes())
    data[-1] ^= 0xFF
    (version / "decoder.onnx").write_bytes(bytes(data))
    report = verify_version(version)
    assert [c.name for c in report.checks] == ["manifest", "contract", "hashes"]
    (failure,) = report.failures
    assert failure.name == "hashes"
    assert failure.message.startswith("decoder.onnx sha256 is ")
    assert failure.message.endswith("(file changed)")
    with pytest.raises(VerificationError, match=r"failed verification: hashes: decoder\.onnx sha256"):
        report.raise_for_failures()


def test_missing_file_is_named(version: Path) -> None:
    (version / "encoder.onnx").unlink()
    assert _failures(version) == {"hashes": "encoder.onnx is missing"}


def test_decoder_from_another_export_fails_pairing(
    version: Path, tiny_model_exporter: Callable[..., Path]
) -> None:
    other = tiny_model_exporter(version.parents[1], 2, seed=1)
    shutil.copy(other / "decoder.onnx", version / "decoder.onnx")
    # Someone "fixed" the hash too: only the pairing id can tell the files apart now.
    _edit_manifest(
        version, lambda m: m["graphs"]["decoder"].update(sha256=file_sha256(version / "decoder.onnx"))
    )
    ours = json.loads((version / "model.json").read_text())["pairing_id"]
    theirs = json.loads((other / "model.json").read_text())["pairing_id"]
    failures = _failures(version)
    assert set(failures) == {"pairing"}
    assert f"decoder.onnx pairing id is '{theirs}' but model.json says '{ours}'" in failures["pairing"]
    assert "decoder.onnx metadata vae.version is '2' but model.json says '1'" in failures["pairing"]


def test_wrong_shape_in_manifest_is_caught(version: Path) -> None:
    _edit_manifest(version, lambda m: m["graphs"]["decoder"]["outputs"][0].update(shape=["batch", 1, 28, 27]))
    report = verify_version(version)
    failures = {c.name: c.message for c in report.failures}
    assert set(failures) == {"contract", "shapes"}
    assert failures["shapes"] == (
        "decoder.onnx outputs are probs float32['batch', 1, 28, 28], logits float32['batch', 1, 28, 28] "
        "but model.json says probs float32['batch', 1, 28, 27], logits float32['batch', 1, 28, 28]"
    )
    assert (
        "image_shape [1, 28, 28], likelihood 'bernoulli' and no classes require probs" in failures["contract"]
    )
    assert "end-to-end" not in [c.name for c in report.checks]  # mis-shaped graphs are not run


def test_version_directory_must_match_manifest(version: Path) -> None:
    moved = version.rename(version.parent / "3")
    assert _failures(moved) == {"manifest": "directory '3' but model.json says version 1"}


def test_unreadable_manifest_is_the_only_failure(version: Path) -> None:
    (version / "model.json").write_text("[]")
    report = verify_version(version)
    assert report.manifest is None
    assert [(c.name, c.passed) for c in report.checks] == [("manifest", False)]
    assert "the top level must be a JSON object" in report.checks[0].message


def test_vae_verify_command(version: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(version)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == f"{version}: verified"
    assert "ok    pairing: all graphs carry pairing id" in out

    (version / "encoder.onnx").write_bytes(b"not a graph")
    assert main(["verify", str(version)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  hashes: encoder.onnx sha256 is" in out
    assert out.splitlines()[-1] == f"{version}: 1 check(s) failed"

    assert main(["verify", str(version.parent / "9")]) == 2
    assert "is not a directory" in capsys.readouterr().err


NO_CUDA = pytest.mark.skipif(CUDA in available_providers(), reason="tests the machine without CUDA")


@NO_CUDA
def test_vae_verify_on_cuda_without_cuda_says_which_extra_to_install(
    version: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(version), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith("vae verify: error: device cuda needs onnxruntime's CUDAExecutionProvider")
    assert "install the gpu extra (onnxruntime-gpu) or use --device cpu" in err


def test_vae_verify_on_the_cpu_is_what_it_was(version: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(version), "--device", "cpu"]) == 0
    checks = [line.split()[1].rstrip(":") for line in capsys.readouterr().out.splitlines()[:-1]]
    assert checks == ALL_CHECKS  # no device check
    assert main(["verify", str(version), "--cuda-tf32"]) == 2
    assert "--cuda-tf32 applies to --device cuda or cuda:N only" in capsys.readouterr().err


@NO_CUDA
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available")
def test_a_device_that_falls_back_to_the_cpu_fails_the_device_check(version: Path) -> None:
    # onnxruntime runs a session on the CPU when CUDA cannot start: comparing that with the CPU
    # would pass with a difference of 0 and prove nothing.
    report = verify_version(version, placement=Placement(CUDA))
    assert [c.name for c in report.failures] == ["device"]
    assert report.failures[0].message == (
        "encoder.onnx runs on CPUExecutionProvider, not CUDAExecutionProvider (docs/gpu.md); "
        "decoder.onnx runs on CPUExecutionProvider, not CUDAExecutionProvider (docs/gpu.md)"
    )
