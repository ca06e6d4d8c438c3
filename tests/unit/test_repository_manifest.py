"""model.json round trip and validation, version listing and naming: no torch, no onnx."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from repository.errors import ManifestError, ModelNotFoundError, RepositoryError
from repository.layout import (
    HIGHEST_VERSION_FILE,
    check_new_version,
    highest_version,
    list_models,
    list_versions,
    next_version,
    record_version,
    validate_model_name,
    version_dir,
)
from repository.manifest import (
    Fp16Entry,
    GraphEntry,
    Manifest,
    PriorEntry,
    file_sha256,
    graph_contract,
    parse_manifest,
    read_manifest,
    write_manifest,
)


def _manifest(**changes: Any) -> Manifest:
    contract = graph_contract(4, (1, 8, 8), "bernoulli")
    graphs = {
        role: GraphEntry(file=f"{role}.onnx", sha256="ab" * 32, inputs=inputs, outputs=outputs)
        for role, (inputs, outputs) in contract.items()
    }
    base = Manifest(
        name="toy",
        version=3,
        created="2025-01-02T03:04:05Z",
        latent_dim=4,
        image_shape=(1, 8, 8),
        likelihood="bernoulli",
        opset=18,
        pairing_id="0" * 32,
        graphs=graphs,
        fp16=None,
        parity_max_abs_diff={"encoder": 1e-6, "decoder": 2e-6},
        parity_batch_sizes=(1, 7, 64),
        eval={"test_nll": 80.5},
        training={"model": {"latent_dim": 4}, "train": {}, "epochs": 2, "train_seconds": 1.5},
    )
    return dataclasses.replace(base, **changes)


def test_manifest_round_trips_through_model_json(tmp_path: Path) -> None:
    fp16 = {
        g: Fp16Entry(file=f"{g}.fp16.onnx", sha256="cd" * 32, max_abs_diff=1e-3)
        for g in ("encoder", "decoder")
    }
    manifest = _manifest(fp16=fp16)
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest
    data = json.loads((tmp_path / "model.json").read_text())
    assert data["format_version"] == 1
    assert data["graphs"]["decoder"]["outputs"][1] == {
        "name": "logits",
        "dtype": "float32",
        "shape": ["batch", 1, 8, 8],
    }
    assert data["parity"] == {
        "encoder": {"max_abs_diff": 1e-6},
        "decoder": {"max_abs_diff": 2e-6},
        "batch_sizes": [1, 7, 64],
    }
    assert manifest.files() == {
        "encoder.onnx": "ab" * 32,
        "decoder.onnx": "ab" * 32,
        "encoder.fp16.onnx": "cd" * 32,
        "decoder.fp16.onnx": "cd" * 32,
    }


def test_score_reference_is_optional_and_round_trips(tmp_path: Path) -> None:
    without = _manifest()
    assert "score_reference" not in without.to_json()  # manifests written before it read the same
    reference = {"k": 64, "seed": 0, "median": -85.5, "quantiles": {"0.05": -120.0, "0.5": -85.5}}
    manifest = _manifest(score_reference=reference)
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest
    assert read_manifest(tmp_path).score_reference == reference


def test_classes_are_optional_and_round_trip(tmp_path: Path) -> None:
    assert "classes" not in _manifest().to_json()  # an unconditional model.json reads as before
    assert not _manifest().conditional
    manifest = _manifest(classes=("cat", "dog"))
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest and read_manifest(tmp_path).conditional


PRIOR = PriorEntry(kind="mixture", trained_as="vamp", components=5, file="prior.npz", sha256="ef" * 32)


def test_a_learned_prior_is_optional_round_trips_and_is_hashed(tmp_path: Path) -> None:
    assert "prior" not in _manifest().to_json()  # a standard-normal model.json reads as before
    assert _manifest().prior is None and "prior.npz" not in _manifest().files()
    manifest = _manifest(prior=PRIOR)
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest
    assert json.loads((tmp_path / "model.json").read_text())["prior"] == {
        "kind": "mixture",
        "trained_as": "vamp",
        "components": 5,
        "file": "prior.npz",
        "sha256": "ef" * 32,
    }
    assert manifest.files()["prior.npz"] == "ef" * 32


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("kind", "vamp", "prior must have kind 'mixture'"),
        ("trained_as", "flow", "trained_as one of"),
        ("components", 0, "prior.components' must be positive"),
        ("file", "../prior.npz", "plain file name"),
        ("sha256", "xyz", "not a sha256"),
    ],
)
def test_an_invalid_prior_is_rejected_naming_the_field(field: str, value: Any, message: str) -> None:
    data = _manifest(prior=PRIOR).to_json()
    data["prior"][field] = value
    with pytest.raises(ManifestError, match=message):
        parse_manifest(data)


def test_conditional_contract_adds_the_label_input_to_both_graphs() -> None:
    contract = graph_contract(2, (1, 4, 4), "bernoulli", conditional=True)
    for role, first in (("encoder", "x"), ("decoder", "z")):
        inputs, _ = contract[role]
        assert [(t.name, t.dtype, t.shape) for t in inputs] == [
            (first, "float32", inputs[0].shape),
            ("y", "int64", ("batch",)),
        ]


def test_gaussian_decoder_contract_has_no_logits() -> None:
    _, outputs = graph_contract(2, (3, 4, 4), "gaussian")["decoder"]
    assert [(t.name, t.shape) for t in outputs] == [("probs", ("batch", 3, 4, 4))]


def _edit(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    edited = copy.deepcopy(data)
    *parents, last = path.split(".")
    node = edited
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[int(last) if isinstance(node, list) else last] = value
    return edited


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("format_version", 2, "format_version is 2; this build reads 1"),
        ("version", _DELETE, "missing field 'version'"),
        ("version", 0, "field 'version' must be positive"),
        ("latent_dim", True, "field 'latent_dim' must be int, got True"),
        ("likelihood", "poisson", "likelihood must be one of"),
        ("image_shape", [1, 28], "image_shape must be [C, H, W]"),
        ("created", "yesterday", "not an ISO-8601 time"),
        ("graphs.decoder", _DELETE, "missing field 'graphs.decoder'"),
        ("graphs.encoder.sha256", "xyz", "'graphs.encoder.sha256' is not a sha256"),
        ("graphs.encoder.file", "../other/encoder.onnx", "must be a plain file name"),
        ("graphs.encoder.inputs.0.shape", ["batch", -1], "'graphs.encoder.inputs[0].shape' must hold"),
        ("parity.batch_sizes", [1, "7"], "'parity.batch_sizes' must list positive integers"),
        ("eval", [1, 2], "eval must be an object or null"),
        ("classes", ["only"], "'classes' must list at least two distinct"),
        ("classes", ["a", "a"], "'classes' must list at least two distinct"),
        ("classes", "ab", "field 'classes' must be list"),
        ("score_reference", {"k": 64, "quantiles": {}}, "missing field 'score_reference.median'"),
        (
            "score_reference",
            {"k": 0, "median": -85.0, "quantiles": {}},
            "'score_reference.k' must be positive",
        ),
        (
            "score_reference",
            {"k": 64, "median": -85.0, "quantiles": {"0.5": "x"}},
            "'score_reference.quantiles.0.5' must be int or float",
        ),
    ],
)
def test_invalid_manifest_is_rejected_naming_the_field(path: str, value: Any, message: str) -> None:
    data = _edit(_manifest().to_json(), path, value)
    with pytest.raises(ManifestError, match=r"^model\.json: ") as info:
        parse_manifest(data)
    assert message in str(info.value)


def test_unreadable_or_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"missing; every version directory needs a model\.json"):
        read_manifest(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not readable JSON"):
        read_manifest(tmp_path)
    assert issubclass(ManifestError, RepositoryError)


def test_versions_are_canonical_positive_integers(tmp_path: Path) -> None:
    for name in ("1", "2", "10", "01", "0", "latest", ".staging-x"):
        (tmp_path / "toy" / name).mkdir(parents=True)
    (tmp_path / "toy" / "7").write_text("a file, not a version")
    (tmp_path / ".staging-abc").mkdir()
    assert list_models(tmp_path) == ["toy"]
    assert list_versions(tmp_path, "toy") == [1, 2, 10]
    assert next_version(tmp_path, "toy") == 11
    assert next_version(tmp_path, "new") == 1
    assert version_dir(tmp_path, "toy", 10) == tmp_path / "toy" / "10"


def test_deleting_the_newest_version_does_not_free_its_number(tmp_path: Path) -> None:
    for version in (1, 2, 3):
        (tmp_path / "toy" / str(version)).mkdir(parents=True)
        record_version(tmp_path, "toy", version)
    (tmp_path / "toy" / "3").rmdir()
    assert list_versions(tmp_path, "toy") == [1, 2]
    assert (highest_version(tmp_path, "toy"), next_version(tmp_path, "toy")) == (3, 4)
    # The record is a hidden file: neither a model nor a version.
    assert (tmp_path / "toy" / HIGHEST_VERSION_FILE).read_text() == "3\n"
    assert list_models(tmp_path) == ["toy"]


def test_a_repository_without_the_record_numbers_from_its_newest_version(tmp_path: Path) -> None:
    # The bundled models/mnist and repositories from before the record: the directories decide.
    (tmp_path / "toy" / "4").mkdir(parents=True)
    assert (highest_version(tmp_path, "toy"), next_version(tmp_path, "toy")) == (4, 5)
    assert highest_version(tmp_path, "new") == 0
    # A record behind the directories (written by hand, or restored) never lowers the number.
    (tmp_path / "toy" / HIGHEST_VERSION_FILE).write_text("2\n")
    assert next_version(tmp_path, "toy") == 5
    record_version(tmp_path, "toy", 1)
    assert (tmp_path / "toy" / HIGHEST_VERSION_FILE).read_text() == "4\n"


def test_an_issued_number_is_refused_even_after_its_version_is_gone(tmp_path: Path) -> None:
    (tmp_path / "toy" / "2").mkdir(parents=True)
    (tmp_path / "toy" / HIGHEST_VERSION_FILE).write_text("5\n")
    with pytest.raises(RepositoryError, match=r"toy/2 already exists; versions are immutable.*\(6\)"):
        check_new_version(tmp_path, "toy", 2)
    for gone in (5, 3):
        with pytest.raises(
            RepositoryError, match=rf"version {gone} of 'toy' is at or below 5.*never reused.*\(6\)"
        ):
            check_new_version(tmp_path, "toy", gone)
    with pytest.raises(RepositoryError, match="positive integer"):
        check_new_version(tmp_path, "toy", 0)
    check_new_version(tmp_path, "toy", 6)
    check_new_version(tmp_path, "new", 1)


def test_a_corrupt_record_is_refused_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / HIGHEST_VERSION_FILE).write_text("three")
    with pytest.raises(RepositoryError, match=r"\.highest-version must hold .*'three'.*delete it"):
        next_version(tmp_path, "toy")


def test_missing_model_or_version_names_what_exists(tmp_path: Path) -> None:
    (tmp_path / "toy" / "1").mkdir(parents=True)
    with pytest.raises(ModelNotFoundError, match=r"no model 'mnist' in .* \(models there: toy\)"):
        list_versions(tmp_path, "mnist")
    with pytest.raises(ModelNotFoundError, match=r"has no version 2 \(versions: \[1\]\)"):
        version_dir(tmp_path, "toy", 2)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        list_models(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "..", "-x", "a b", "x" * 65])
def test_invalid_model_names_are_refused(name: str) -> None:
    with pytest.raises(RepositoryError, match="invalid model name"):
        validate_model_name(name)


def test_file_sha256_matches_known_digest(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    assert file_sha256(tmp_path / "f") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
