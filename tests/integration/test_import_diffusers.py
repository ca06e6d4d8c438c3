"""`vae import diffusers` on small AutoencoderKLs with random weights, saved as save_pretrained does.

Nothing is downloaded: each model is built from a config, so export and parity take seconds. The
graphs are compared with diffusers in torch at sizes parity did not run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers.autoencoders import CONFIGS, build_autoencoder, import_autoencoder

from repository.manifest import read_manifest
from repository.runtime import Graph
from repository.verify import verify_version
from vae_cli import main


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def imported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """A model saved in diffusers' format and imported with `vae import diffusers` (fp16 for sd)."""
    kind = request.param
    vae = build_autoencoder(kind)
    fp16 = ["--fp16"] if kind == "sd" else []
    return vae, import_autoencoder(vae, tmp_path_factory.mktemp(kind), kind, *fp16)


def test_an_imported_version_verifies_and_declares_its_model(imported: tuple[Any, Path]) -> None:
    vae, version = imported
    report = verify_version(version)
    assert report.ok, report.failures
    manifest = read_manifest(version)
    config = vae.config
    factor = 2 ** (len(config.block_out_channels) - 1)
    assert manifest.format_version == 2 and manifest.is_spatial and manifest.fixed_image_shape is None
    assert manifest.divisibility == factor and manifest.value_range == (-1.0, 1.0)
    assert manifest.latent_shape((8 * factor, 2 * factor)) == (config.latent_channels, 8, 2)
    assert manifest.scaling == (config.scaling_factor, config.shift_factor or 0.0)
    assert not manifest.has_prior and not manifest.scorable and manifest.decoder_output == "image"
    assert max(manifest.parity_max_abs_diff.values()) <= 1e-4
    assert (
        manifest.source is not None and manifest.source["config"]["latent_channels"] == config.latent_channels
    )
    assert (manifest.fp16 is not None) == (manifest.name == "sd")
    assert [c.name for c in report.checks][-1] == ("fp16" if manifest.fp16 else "end-to-end")
    # Dynamic batch and spatial axes, named as the contract names them; one file per graph.
    encoder = Graph(version / "encoder.onnx")
    assert encoder.inputs[0].shape == ("batch", config.in_channels, "height", "width")
    assert encoder.outputs[0].shape == ("batch", config.latent_channels, "latent_height", "latent_width")
    assert sorted(p.name for p in version.iterdir() if not p.name.endswith(".fp16.onnx")) == [
        "decoder.onnx",
        "encoder.onnx",
        "model.json",
    ]


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 16, 16), (2, 48, 24), (5, 24, 40)])
def test_the_graphs_give_what_diffusers_gives(
    imported: tuple[Any, Path], batch: int, height: int, width: int
) -> None:
    vae, version = imported
    manifest = read_manifest(version)
    rng = np.random.default_rng(batch)
    x = rng.uniform(-1, 1, (batch, manifest.image.channels, height, width)).astype(np.float32)
    z = rng.standard_normal((batch, *manifest.latent_shape((height, width))), dtype=np.float32)
    with torch.no_grad():
        dist = vae.encode(torch.from_numpy(x)).latent_dist
        raw = vae.decode(torch.from_numpy(z)).sample
    encoded = Graph(version / "encoder.onnx").run({"x": x})
    decoded = Graph(version / "decoder.onnx").run({"z": z})["image"]
    assert np.abs(encoded["mu"] - dist.mean.numpy()).max() <= 1e-4
    assert np.abs(encoded["logvar"] - dist.logvar.numpy()).max() <= 1e-4
    assert np.abs(decoded - raw.clamp(-1, 1).numpy()).max() <= 1e-4
    # Most pixels are inside [-1, 1], so the comparison is not one of clamped values.
    assert float(((raw > -1) & (raw < 1)).float().mean()) > 0.9


def _refused(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["import", "diffusers", str(folder), "--repo", str(tmp_path / "repo"), "--name", "m"]) == 2
    assert not (tmp_path / "repo").exists()  # nothing written
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("vae import: error: ")
    return err


def test_a_folder_that_is_not_an_importable_autoencoder_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "folder"
    assert "is not a directory" in _refused(folder, tmp_path, capsys)
    folder.mkdir()
    assert "is not in diffusers' format: it has no config.json" in _refused(folder, tmp_path, capsys)
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    assert "describes a 'UNet2DConditionModel'; vae import diffusers takes AutoencoderKL" in _refused(
        folder, tmp_path, capsys
    )
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    assert "has no diffusion_pytorch_model.safetensors" in _refused(folder, tmp_path, capsys)
    (folder / "config.json").write_text("{not json")
    assert "is not readable JSON" in _refused(folder, tmp_path, capsys)
