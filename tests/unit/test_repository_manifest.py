"""model.json round trip and validation, and the graph contract: no torch, no onnx."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from repository.contract import flow_contract, graph_contract
from repository.errors import ManifestError, RepositoryError
from repository.manifest import (
    Fp16Entry,
    GraphEntry,
    Manifest,
    PriorEntry,
    PriorFlowEntry,
    file_sha256,
    parse_manifest,
    read_manifest,
    v1_specs,
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
        **v1_specs(4, (1, 8, 8), "bernoulli"),
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


def _prior_flow(latent_dim: int = 4) -> PriorFlowEntry:
    return PriorFlowEntry(
        layers=3,
        graphs={
            role: GraphEntry(file=f"prior_flow_{role}.onnx", sha256="ef" * 32, inputs=inputs, outputs=outputs)
            for role, (inputs, outputs) in flow_contract(latent_dim).items()
        },
        parity_max_abs_diff={"density": 1e-6, "sampler": 2e-6},
    )


def test_a_prior_flow_makes_format_3_which_older_readers_refuse_and_covers_its_graphs(tmp_path: Path) -> None:
    manifest = _manifest(prior_flow=_prior_flow())
    data = manifest.to_json()
    assert data["format_version"] == 3 and data["prior_flow"]["layers"] == 3
    assert "image" in data and "latent_dim" not in data  # format 2's model fields
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest
    files = manifest.files()
    assert files["prior_flow_density.onnx"] == files["prior_flow_sampler.onnx"] == "ef" * 32
    # Its graphs keep format 1's metadata keys: the model itself is what format 1 says.
    assert manifest.format_1_expressible
    # A format 2 reader given a flow would serve the base prior alone: a flow is never read as format 2.
    with pytest.raises(ManifestError, match="a prior_flow needs format_version 3"):
        parse_manifest({**data, "format_version": 2})
    with pytest.raises(ManifestError, match=r"prior_flow\.graphs\.sampler"):
        parse_manifest(_edit(data, "prior_flow.graphs.sampler", _DELETE))


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
        ("format_version", 4, "format_version is 4; this build reads 1, 2 and 3"),
        ("format_version", 3, "a prior_flow needs format_version 3, and format_version 3 a prior_flow"),
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


def test_file_sha256_matches_known_digest(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    assert file_sha256(tmp_path / "f") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
