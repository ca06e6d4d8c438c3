"""model.json format_version 2: spatial latents, images of any size, and format 1 read as before."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from repository.contract import graph_contract, manifest_contract
from repository.errors import ManifestError
from repository.manifest import (
    GraphEntry,
    Manifest,
    parse_manifest,
    read_manifest,
    write_manifest,
)
from repository.model_spec import ImageSpec, LatentSpec
from repository.scoring import ScoringUnsupported, likelihood_of

MODELS = Path(__file__).resolve().parents[2] / "models"
BUNDLED = sorted(path.parent for path in MODELS.glob("*/*/model.json"))
# mnist-flow's version is format 3 (a prior flow): format 1 cannot describe it.
FORMAT_1 = [v for v in BUNDLED if json.loads((v / "model.json").read_text())["format_version"] == 1]


@pytest.mark.parametrize("version", BUNDLED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_bundled_manifest_is_written_back_with_the_same_fields(version: Path) -> None:
    raw = json.loads((version / "model.json").read_text())
    manifest = read_manifest(version)
    assert manifest.format_version == raw["format_version"] and manifest.to_json() == raw


@pytest.mark.parametrize("version", FORMAT_1, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_bundled_format_1_manifest_reads_with_the_same_meaning(version: Path) -> None:
    raw = json.loads((version / "model.json").read_text())
    manifest = read_manifest(version)
    assert raw["format_version"] == 1 and manifest.format_version == 1
    assert manifest.to_json() == raw  # written back, byte for byte the same fields
    assert manifest.latent_dim == raw["latent_dim"]
    assert manifest.image_shape == tuple(raw["image_shape"]) == manifest.fixed_image_shape
    assert manifest.likelihood == raw["likelihood"] == manifest.decoder_output
    assert manifest.latent_shape() == (raw["latent_dim"],) and not manifest.is_spatial
    assert manifest.value_range == (0.0, 1.0) and manifest.scaling == (1.0, 0.0)
    assert manifest.divisibility == 1 and manifest.has_prior and manifest.scorable
    assert manifest.image_output == "probs"
    v1_contract = graph_contract(
        raw["latent_dim"], tuple(raw["image_shape"]), raw["likelihood"], conditional="classes" in raw
    )
    assert manifest_contract(manifest) == v1_contract


SD_IMAGE = ImageSpec(channels=3, size=None, multiple_of=8, value_range=(-1.0, 1.0))
SD_LATENT = LatentSpec(channels=4, downsampling=8, scaling_factor=0.18215, shift_factor=0.0)


def _spatial(**changes: Any) -> Manifest:
    fields: dict[str, Any] = {
        "name": "sd-vae",
        "version": 1,
        "created": "2025-01-02T03:04:05Z",
        "image": SD_IMAGE,
        "latent": SD_LATENT,
        "decoder_output": "image",
        "has_prior": False,
        "scorable": False,
        "opset": 18,
        "pairing_id": "0" * 32,
        "graphs": {},
        "fp16": None,
        "parity_max_abs_diff": {"encoder": 1e-6, "decoder": 5e-6},
        "parity_batch_sizes": (1, 3),
        "parity_image_sizes": ((64, 64), (32, 80)),
        "eval": None,
        "training": {},
        "source": {"format": "diffusers", "class": "AutoencoderKL"},
        **changes,
    }
    bare = Manifest(**fields)  # the contract follows from the model fields alone
    graphs = {
        role: GraphEntry(file=f"{role}.onnx", sha256="ab" * 32, inputs=inputs, outputs=outputs)
        for role, (inputs, outputs) in manifest_contract(bare).items()
    }
    return dataclasses.replace(bare, graphs=graphs)


def test_a_spatial_manifest_round_trips_as_format_2(tmp_path: Path) -> None:
    manifest = _spatial()
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest
    data = json.loads((tmp_path / "model.json").read_text())
    assert data["format_version"] == 2 and "latent_dim" not in data and "image_shape" not in data
    assert data["image"] == {"channels": 3, "size": None, "multiple_of": 8, "range": [-1.0, 1.0]}
    assert data["latent"] == {
        "shape": [4, "latent_height", "latent_width"],
        "downsampling": 8,
        "scaling_factor": 0.18215,
        "shift_factor": 0.0,
    }
    assert (data["decoder_output"], data["has_prior"], data["scorable"]) == ("image", False, False)
    assert data["parity"]["image_sizes"] == [[64, 64], [32, 80]]
    assert data["graphs"]["encoder"]["outputs"][0]["shape"] == ["batch", 4, "latent_height", "latent_width"]
    assert data["graphs"]["decoder"]["outputs"] == [
        {"name": "image", "dtype": "float32", "shape": ["batch", 3, "height", "width"]}
    ]


def test_the_accessors_of_a_spatial_model_of_any_size() -> None:
    manifest = _spatial()
    assert manifest.is_spatial and manifest.fixed_image_shape is None and manifest.divisibility == 8
    assert manifest.latent_shape((64, 48)) == (4, 8, 6)
    assert manifest.decoded_image_shape((8, 6)) == (3, 64, 48)
    assert manifest.value_range == (-1.0, 1.0) and manifest.scaling == (0.18215, 0.0)
    assert not manifest.has_prior and not manifest.scorable and manifest.image_output == "image"
    with pytest.raises(ValueError, match=r"positive multiples of 8, not \[60, 48\]"):
        manifest.latent_shape((60, 48))
    with pytest.raises(ValueError, match="give their"):
        manifest.latent_shape()
    with pytest.raises(ManifestError, match="latent_dim is defined for flat latents only"):
        _ = manifest.latent_dim
    with pytest.raises(ManifestError, match="has no fixed image_shape"):
        _ = manifest.image_shape
    with pytest.raises(ScoringUnsupported, match="no likelihood worth scoring"):
        likelihood_of(manifest)


def test_a_fixed_size_spatial_model_has_fixed_latent_axes() -> None:
    manifest = _spatial(image=ImageSpec(channels=3, size=(64, 32), multiple_of=8, value_range=(-1.0, 1.0)))
    assert manifest.fixed_image_shape == (3, 64, 32) and manifest.latent_shape() == (4, 8, 4)
    assert manifest.decoded_image_shape() == (3, 64, 32)
    inputs, outputs = manifest_contract(manifest)["encoder"]
    assert inputs[0].shape == ("batch", 3, 64, 32) and outputs[0].shape == ("batch", 4, 8, 4)
    with pytest.raises(ValueError, match=r"takes \[64, 32\] images, not \[32, 64\]"):
        manifest.latent_shape((32, 64))


def test_a_format_2_file_that_format_1_expresses_is_written_as_format_1(tmp_path: Path) -> None:
    # A flat latent, a fixed size in [0, 1], probs: older servers can read what this build writes.
    flat = _spatial(
        image=ImageSpec(channels=1, size=(8, 8)),
        latent=LatentSpec(channels=4),
        decoder_output="bernoulli",
        has_prior=True,
        scorable=True,
        parity_image_sizes=(),
        source=None,
    )
    as_v2 = {**flat.to_json(), "format_version": 2}
    del as_v2["latent_dim"], as_v2["image_shape"], as_v2["likelihood"]
    as_v2 |= {
        "image": flat.image.to_json(),
        "latent": flat.latent.to_json(),
        "decoder_output": "bernoulli",
        "has_prior": True,
        "scorable": True,
    }
    assert parse_manifest(as_v2) == flat and flat.format_version == 1
    write_manifest(tmp_path, flat)
    assert json.loads((tmp_path / "model.json").read_text())["format_version"] == 1


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("image.range", [0, 255], r"'image.range' must be one of \[\[0.0, 1.0\], \[-1.0, 1.0\]\]"),
        ("image.size", [64], r"'image.size' must be \[H, W\]"),
        ("image.multiple_of", 0, "'image.multiple_of' must be positive"),
        ("latent.shape", [4, "h", "w"], r"'latent.shape' must be \[D\] for a flat latent"),
        ("latent.shape", [4], r"'latent.shape' must be \[D\] for a flat latent"),
        ("latent.scaling_factor", 0, "'latent.scaling_factor' must be positive"),
        ("latent.downsampling", 16, "multiple_of 8 must be a multiple of the latent's downsampling 16"),
        ("decoder_output", "poisson", "decoder_output must be one of"),
        ("scorable", True, "a deterministic decoder .* has no likelihood to score"),
        ("has_prior", "no", "field 'has_prior' must be true or false"),
        ("graphs.encoder.inputs.0.shape", ["batch", 3, "rows", "width"], "must hold positive integers"),
    ],
)
def test_invalid_format_2_fields_are_rejected_naming_the_field(path: str, value: Any, message: str) -> None:
    data = copy.deepcopy(_spatial().to_json())
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[int(last) if isinstance(node, list) else last] = value
    with pytest.raises(ManifestError, match=message):
        parse_manifest(data)


def test_a_flat_latent_needs_a_fixed_image_size() -> None:
    data = _spatial().to_json()
    data["latent"] = {"shape": [16], "scaling_factor": 1.0, "shift_factor": 0.0}
    with pytest.raises(ManifestError, match="a flat latent needs a fixed image size"):
        parse_manifest(data)
