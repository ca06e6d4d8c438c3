"""Export to ONNX: the graph contract, parity with PyTorch, a dynamic batch, refusals that write nothing."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.errors import ExportError
from export.graphs import OPSET
from export.onnx_export import ScoreImages, export_model, export_run
from repository.errors import RepositoryError
from repository.manifest import PriorEntry, file_sha256, read_manifest
from repository.prior import GaussianMixture, load_prior
from repository.runtime import Graph
from repository.verify import verify_version
from training import checkpoint as ckpt
from training.config import ModelConfig, TrainConfig, to_dict
from training.evaluate import ExportedModel, importance_weighted_nll
from training.model import VAE

TRAINING = {"model": {}, "train": {}, "epochs": 0, "train_seconds": 0.0}


def _model(config: ModelConfig, seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    return VAE(config).eval()


def _assert_matches_pytorch(model: VAE, version: Path, batch: int = 5) -> None:
    """An independent parity check: the written graphs against the model's own methods."""
    config = model.config
    x = torch.rand(batch, *config.image_shape)
    z = torch.randn(batch, config.latent_dim)
    y = torch.randint(len(config.classes), (batch,)) if config.conditional else None
    labels = {} if y is None else {"y": y.numpy()}
    encoded = Graph(version / "encoder.onnx").run({"x": x.numpy(), **labels})
    decoded = Graph(version / "decoder.onnx").run({"z": z.numpy(), **labels})
    with torch.no_grad():
        mu, logvar = model.encode(x, y)
        np.testing.assert_allclose(encoded["mu"], mu.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(encoded["logvar"], logvar.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(decoded["probs"], model.decode_mean(z, y).numpy(), atol=1e-4, rtol=0)
        if config.likelihood == "bernoulli":
            np.testing.assert_allclose(decoded["logits"], model.decode(z, y).numpy(), atol=1e-4, rtol=1e-5)
        else:
            assert set(decoded) == {"probs"}


def test_tiny_conv_export_follows_the_contract(tiny_model_repo: Path) -> None:
    version = tiny_model_repo / "tiny" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["decoder.onnx", "encoder.onnx", "model.json"]
    assert [p.name for p in tiny_model_repo.iterdir()] == ["tiny"]  # the staging directory is gone
    manifest = read_manifest(version)
    assert (manifest.name, manifest.version, manifest.opset) == ("tiny", 1, OPSET)
    assert manifest.parity_batch_sizes == (1, 7, 64)
    assert all(0 <= diff <= 1e-4 for diff in manifest.parity_max_abs_diff.values())
    assert manifest.fp16 is None and manifest.eval is None
    assert manifest.training["epochs"] == 0 and manifest.training["model"]["latent_dim"] == 8

    pairing = set()
    for role in ("encoder", "decoder"):
        proto = onnx.load(version / f"{role}.onnx")
        assert [(o.domain, o.version) for o in proto.opset_import if o.domain == ""] == [("", OPSET)]
        assert all(not t.HasField("data_location") or t.data_location == 0 for t in proto.graph.initializer)
        for value in [*proto.graph.input, *proto.graph.output]:
            dims = value.type.tensor_type.shape.dim
            assert dims[0].dim_param == "batch", value.name
            assert all(d.dim_value > 0 and not d.dim_param for d in dims[1:]), value.name
        props = {p.key: p.value for p in proto.metadata_props}
        assert props["vae.graph"] == role
        assert (props["vae.name"], props["vae.version"], props["vae.likelihood"]) == (
            "tiny",
            "1",
            "bernoulli",
        )
        assert (props["vae.latent_dim"], json.loads(props["vae.image_shape"])) == ("8", [1, 28, 28])
        pairing.add(props["vae.pairing_id"])
    assert pairing == {manifest.pairing_id}


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(image_shape=(1, 8, 8), latent_dim=4, widths=(4, 8, 16)),
        ModelConfig(architecture="mlp", image_shape=(1, 8, 8), latent_dim=4, widths=(32, 16)),
        # A 2-D latent, and the Gaussian likelihood, whose decoder has no logits output.
        ModelConfig(image_shape=(1, 8, 8), latent_dim=2, widths=(4, 8, 16), likelihood="gaussian"),
        ModelConfig(image_shape=(1, 8, 8), latent_dim=4, widths=(4, 8, 16), classes=("a", "b", "c", "d")),
    ],
    ids=["conv-bernoulli", "mlp-bernoulli", "conv-gaussian-2d", "conv-conditional"],
)
def test_export_matches_pytorch(config: ModelConfig, tmp_path: Path) -> None:
    model = _model(config)
    version = export_model(model, tmp_path, "toy", training=TRAINING)
    assert version == tmp_path / "toy" / "1"
    _assert_matches_pytorch(model, version)
    assert verify_version(version).ok


def test_conditional_export_declares_its_classes(tiny_cvae_repo: Path) -> None:
    version = tiny_cvae_repo / "tiny-cvae" / "1"
    manifest = read_manifest(version)
    assert manifest.classes == ("a", "b", "c")
    for role in ("encoder", "decoder"):
        proto = onnx.load(version / f"{role}.onnx")
        assert json.loads({p.key: p.value for p in proto.metadata_props}["vae.classes"]) == ["a", "b", "c"]
        (label,) = [value for value in proto.graph.input if value.name == "y"]
        assert label.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in label.type.tensor_type.shape.dim] == ["batch"]
    # One batch may mix labels, at any size: the label axis is the batch axis.
    decoder = Graph(version / "decoder.onnx")
    z = np.zeros((9, 8), np.float32)
    probs = decoder.run({"z": z, "y": np.arange(9, dtype=np.int64) % 3})["probs"]
    assert probs.shape == (9, 1, 28, 28)
    np.testing.assert_array_equal(probs[0], probs[3])
    assert not np.array_equal(probs[0], probs[1])


def test_a_standard_normal_export_has_no_prior(tiny_model_repo: Path) -> None:
    version = tiny_model_repo / "tiny" / "1"
    assert read_manifest(version).prior is None and not (version / "prior.npz").exists()


def test_a_mixture_prior_is_exported_as_its_parameters(
    tiny_mixture_repo: Path, tiny_model_builder: Callable[..., VAE]
) -> None:
    version = tiny_mixture_repo / "tiny-mixture" / "1"
    manifest = read_manifest(version)
    assert manifest.prior == PriorEntry(
        kind="mixture",
        trained_as="mixture",
        components=3,
        file="prior.npz",
        sha256=file_sha256(version / "prior.npz"),
    )
    assert manifest.training["model"]["prior"] == "mixture"
    prior = load_prior(version, manifest)
    assert isinstance(prior, GaussianMixture)
    model = tiny_model_builder(0, prior="mixture", prior_components=3)
    np.testing.assert_array_equal(prior.means, model.prior.means.detach().numpy())
    np.testing.assert_array_equal(prior.logvars, model.prior.logvars.detach().numpy())
    np.testing.assert_allclose(
        np.exp(prior.log_weights), torch.softmax(model.prior.logits, 0).detach(), rtol=1e-6
    )


def test_a_vamp_prior_is_exported_as_the_posteriors_at_its_pseudo_inputs(
    tiny_vamp_repo: Path, tiny_model_builder: Callable[..., VAE]
) -> None:
    version = tiny_vamp_repo / "tiny-vamp" / "1"
    manifest = read_manifest(version)
    assert manifest.prior is not None and manifest.prior.trained_as == "vamp"
    prior = load_prior(version, manifest)
    assert isinstance(prior, GaussianMixture)
    model = tiny_model_builder(0, prior="vamp", prior_components=3)
    with torch.no_grad():
        mu, logvar = model.encode(model.prior.pseudo_inputs())
    np.testing.assert_allclose(prior.means, mu.numpy(), atol=1e-6)
    np.testing.assert_allclose(prior.logvars, logvar.numpy(), atol=1e-6)
    np.testing.assert_allclose(prior.log_weights, np.full(3, -math.log(3)), atol=1e-7)
    # The same encoder through onnxruntime gives the same components: the file is the graphs' prior.
    encoded = Graph(version / "encoder.onnx").run({"x": model.prior.pseudo_inputs().detach().numpy()})
    np.testing.assert_allclose(prior.means, encoded["mu"], atol=1e-4)


@pytest.mark.parametrize(
    ("repo_fixture", "name", "flow_layers"),
    [("tiny_vamp_repo", "tiny-vamp", 0), ("tiny_flow_repo", "tiny-flow", 3)],
)
def test_evaluating_an_exported_learned_prior_matches_pytorch(
    repo_fixture: str,
    name: str,
    flow_layers: int,
    request: pytest.FixtureRequest,
    tiny_model_builder: Callable[..., VAE],
) -> None:
    version = request.getfixturevalue(repo_fixture) / name / "1"
    prior = "mixture" if flow_layers else "vamp"  # tests/conftest.py: the flow moves tiny-mixture's prior
    model = tiny_model_builder(0, prior=prior, prior_components=3, prior_flow_layers=flow_layers).eval()
    exported = ExportedModel(version, model.config, threads=1)
    z = torch.randn(16, 8) * 3
    with torch.no_grad():
        torch.testing.assert_close(exported.log_prior(z), model.log_prior(z), atol=1e-4, rtol=1e-5)
        x = (torch.rand(3, 1, 28, 28) < 0.3).float()
        torch.manual_seed(7)
        in_torch = importance_weighted_nll(model, x, 50)
        torch.manual_seed(7)
        in_onnxruntime = importance_weighted_nll(exported, x, 50)
    torch.testing.assert_close(in_onnxruntime, in_torch, atol=1e-2, rtol=0)


class _DriftingPriorVAE(VAE):
    """A prior whose PyTorch log p(z) is off by 1e-3 from the mixture it exports."""

    def log_base_prior(self, u: torch.Tensor) -> torch.Tensor:
        return super().log_base_prior(u) + 1e-3


def test_failed_prior_parity_writes_nothing(tmp_path: Path) -> None:
    config = ModelConfig(
        architecture="mlp",
        image_shape=(1, 8, 8),
        latent_dim=2,
        widths=(8,),
        prior="mixture",
        prior_components=2,
    )
    torch.manual_seed(0)
    with pytest.raises(
        ExportError, match=r"parity failed for prior\.npz: its log p\(z\) differs from PyTorch"
    ):
        export_model(_DriftingPriorVAE(config).eval(), tmp_path, "toy", training=TRAINING)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("batch", [1, 3, 64, 513])
def test_batch_axis_is_dynamic(tiny_model_repo: Path, batch: int) -> None:
    version = tiny_model_repo / "tiny" / "1"
    encoded = Graph(version / "encoder.onnx").run(
        {"x": np.random.default_rng(batch).random((batch, 1, 28, 28), np.float32)}
    )
    decoded = Graph(version / "decoder.onnx").run({"z": encoded["mu"]})
    assert encoded["mu"].shape == encoded["logvar"].shape == (batch, 8)
    assert decoded["probs"].shape == decoded["logits"].shape == (batch, 1, 28, 28)


def test_export_run_records_checkpoint_and_eval(tmp_path: Path) -> None:
    config = ModelConfig(architecture="mlp", image_shape=(1, 8, 8), latent_dim=3, widths=(16,))
    train = TrainConfig(epochs=4, seed=3)
    model = _model(config)
    run = tmp_path / "run"
    run.mkdir()
    ckpt.save(
        run / ckpt.BEST,
        ckpt.Checkpoint(
            model_config=config,
            train_config=train,
            epoch=4,
            step=40,
            model_state=model.state_dict(),
            optimizer_state=None,
            best_val_nelbo=50.0,
            train_seconds=12.5,
        ),
    )
    (run / "eval.json").write_text(json.dumps({"test_iw_nll": 81.25, "k": 5000}))
    version = export_run(run, tmp_path / "models", "toy", version=4)
    manifest = read_manifest(version)
    assert (manifest.version, manifest.eval) == (4, {"test_iw_nll": 81.25, "k": 5000})
    assert manifest.training == {
        "model": json.loads(json.dumps(to_dict(config))),
        "train": json.loads(json.dumps(to_dict(train))),
        "epochs": 4,
        "train_seconds": 12.5,
    }
    # Versions are immutable, and the default is the next free one.
    with pytest.raises(RepositoryError, match=r"already exists; versions are immutable.*\(5\)"):
        export_run(run, tmp_path / "models", "toy", version=4)
    assert export_run(run, tmp_path / "models", "toy") == tmp_path / "models" / "toy" / "5"


def test_export_records_the_score_quantiles_of_the_images_it_is_given(tmp_path: Path) -> None:
    config = ModelConfig(architecture="mlp", image_shape=(1, 8, 8), latent_dim=3, widths=(16,))
    images = (np.random.default_rng(0).random((20, 1, 8, 8)) < 0.4).astype(np.float32)
    training = {"model": to_dict(config), "train": {}, "epochs": 0, "train_seconds": 0.0}
    score = ScoreImages(images, k=4, described="twenty random binary images")
    version = export_model(_model(config), tmp_path, "toy", training=training, score_images=score)
    reference = read_manifest(version).score_reference
    assert reference is not None
    assert {key: reference[key] for key in ("k", "seed", "images", "data")} == {
        "k": 4,
        "seed": 0,
        "images": 20,
        "data": "twenty random binary images",
    }
    quantiles = list(reference["quantiles"].values())
    assert quantiles == sorted(quantiles) and reference["quantiles"]["0.5"] == reference["median"]
    assert reference["median"] < 0  # a log-probability of binary images
    assert verify_version(version).ok


def test_export_never_reuses_the_number_of_a_deleted_version(tmp_path: Path) -> None:
    model = _model(ModelConfig(architecture="mlp", image_shape=(1, 8, 8), latent_dim=2, widths=(8,)))
    repo = tmp_path / "models"
    for expected in (1, 2):
        assert export_model(model, repo, "toy", training=TRAINING) == repo / "toy" / str(expected)
    shutil.rmtree(repo / "toy" / "2")
    # A server that loaded version 2 keeps it: a new export under that number would be another model.
    assert export_model(model, repo, "toy", training=TRAINING) == repo / "toy" / "3"
    with pytest.raises(RepositoryError, match=r"version 2 of 'toy' is at or below 3.*never reused.*\(4\)"):
        export_model(model, repo, "toy", training=TRAINING, version=2)
    assert sorted(p.name for p in (repo / "toy").iterdir() if not p.name.startswith(".")) == ["1", "3"]


class _DriftingVAE(VAE):
    """A model whose exported encoder differs from its eager one, as a mis-traced op would."""

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = super().encode(x, y)
        if torch.compiler.is_exporting():
            mu = mu + 1e-3
        return mu, logvar


def test_failed_parity_names_the_graph_and_writes_nothing(tmp_path: Path) -> None:
    config = ModelConfig(architecture="mlp", image_shape=(1, 8, 8), latent_dim=2, widths=(8,))
    torch.manual_seed(0)
    model = _DriftingVAE(config).eval()
    with pytest.raises(ExportError, match=r"parity failed for the encoder graph: output 'mu'.*by 0\.001 "):
        export_model(model, tmp_path, "toy", training=TRAINING)
    assert list(tmp_path.iterdir()) == []


def test_fp16_copies_are_validated_and_recorded(
    tmp_path: Path, tiny_model_exporter: Callable[..., Path]
) -> None:
    version = tiny_model_exporter(tmp_path, 1, seed=0, fp16=True)
    manifest = read_manifest(version)
    assert manifest.fp16 is not None
    assert {e.file for e in manifest.fp16.values()} == {"encoder.fp16.onnx", "decoder.fp16.onnx"}
    assert all(0 < e.max_abs_diff <= 1e-2 for e in manifest.fp16.values())
    assert verify_version(version).ok
    half = onnx.load(version / "decoder.fp16.onnx")
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in half.graph.initializer)
    z = np.random.default_rng(0).standard_normal((4, 8), np.float32)
    fp32_out = Graph(version / "decoder.onnx").run({"z": z})
    fp16_out = Graph(version / "decoder.fp16.onnx").run({"z": z})
    assert fp16_out["probs"].dtype == np.float32  # float32 at the edges, float16 inside
    np.testing.assert_allclose(fp16_out["probs"], fp32_out["probs"], atol=1e-2)


def test_fp16_overflow_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    model = _model(ModelConfig(architecture="mlp", image_shape=(1, 8, 8), latent_dim=2, widths=(8,)))
    with torch.no_grad():
        # Hidden activations of ~1e5 are fine in float32 and past float16's 65504.
        model.decoder[0][0].weight.mul_(1e5)
    # Overflow shows as Inf/NaN, or as pixels flipped between 0 and 1 after a saturated sigmoid.
    refused = (
        r"fp16 refused: the decoder graph's output '(probs|logits)' (has NaN or Inf|differs from float32)"
    )
    with pytest.raises(ExportError, match=refused):
        export_model(model, tmp_path, "toy", training=TRAINING, fp16=True)
    assert list(tmp_path.iterdir()) == []
