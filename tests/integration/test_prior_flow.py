"""A prior flow exported (issue 31): its two graphs beside the encoder and decoder, hashed, verified
(round trips, log-determinants), equal to PyTorch's, read back by `vae recover`, scored in process."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from export.recover import recover_run
from repository.comparison import graph_differences
from repository.manifest import file_sha256, read_manifest
from repository.placement import CUDA, Placement
from repository.prior import FlowPrior, GaussianMixture, load_prior
from repository.runtime import Graph, available_providers
from repository.scoring import Scorer, decode_all, draws, likelihood_of, score_in_process
from repository.tensor_names import BASE_LATENTS, LOG_DET
from repository.verify import verify_version
from training import checkpoint as ckpt
from training.model import VAE

FLOW, COMPONENTS, LAYERS = "tiny-flow", 3, 3  # tests/conftest.py's tiny_flow_repo


@pytest.fixture
def version(tiny_flow_repo: Path, tmp_path: Path) -> Path:
    """A copy of tiny-flow/1 that a test may change."""
    shutil.copytree(tiny_flow_repo, tmp_path / "repo")
    return tmp_path / "repo" / FLOW / "1"


@pytest.fixture(scope="module")
def model(tiny_model_builder: Callable[..., VAE]) -> VAE:
    """The PyTorch model behind tiny-flow/1 (tests/conftest.py)."""
    built: VAE = tiny_model_builder(0, prior="mixture", prior_components=COMPONENTS, prior_flow_layers=LAYERS)
    return built.eval()


def _checks(version: Path) -> dict[str, tuple[bool, str]]:
    return {c.name: (c.passed, c.message) for c in verify_version(version).checks}


def _rehash(version: Path, file: str) -> None:
    """model.json's sha256 of `file` made right again after the test changed it: only the content is wrong."""
    data = json.loads((version / "model.json").read_text())
    for entry in data["prior_flow"]["graphs"].values():
        if entry["file"] == file:
            entry["sha256"] = file_sha256(version / file)
    (version / "model.json").write_text(json.dumps(data))


def test_the_flow_is_exported_as_two_hashed_graphs_that_verify(tiny_flow_repo: Path) -> None:
    version = tiny_flow_repo / FLOW / "1"
    manifest = read_manifest(version)
    assert manifest.format_version == 3 and manifest.prior_flow is not None
    assert manifest.prior_flow.layers == 3
    assert set(manifest.files()) == {
        "encoder.onnx",
        "decoder.onnx",
        "prior.npz",
        "prior_flow_density.onnx",
        "prior_flow_sampler.onnx",
    }
    assert max(manifest.prior_flow.parity_max_abs_diff.values()) < 1e-4
    checks = _checks(version)
    assert all(passed for passed, _ in checks.values()), checks
    assert checks["prior-flow"][1].startswith("3 layers: z -> u -> z within")
    assert checks["hashes"][1] == "sha256 of 5 files match"


def test_the_served_prior_is_pytorchs_flow_prior(tiny_flow_repo: Path, model: VAE) -> None:
    version = tiny_flow_repo / FLOW / "1"
    prior = load_prior(version, read_manifest(version))
    assert isinstance(prior, FlowPrior) and isinstance(prior.base, GaussianMixture)
    z = np.random.default_rng(3).standard_normal((50, 8), dtype=np.float32) * 4
    with torch.no_grad():
        expected = model.log_prior(torch.from_numpy(z)).double().numpy()
        base_only = prior.base.log_prob(z)
    np.testing.assert_allclose(prior.log_prob(z), expected, rtol=1e-5, atol=1e-4)
    assert np.abs(base_only - expected).max() > 1.0  # the flow moves the density: it is not the identity
    # A sample is the base's own draws from the stream, through the inverse.
    u = prior.base.sample(np.random.Generator(np.random.PCG64(7)), 20, 0.5)
    with torch.no_grad():
        through = model.prior_point(torch.from_numpy(u)).numpy()
    sampled = prior.sample(np.random.Generator(np.random.PCG64(7)), 20, 0.5)
    np.testing.assert_allclose(sampled, through, atol=1e-5)
    assert np.abs(sampled - u).max() > 0.1


def test_score_in_process_uses_the_flow_and_equals_the_weights_computed_in_pytorch(
    tiny_flow_repo: Path, model: VAE
) -> None:
    version = tiny_flow_repo / FLOW / "1"
    manifest = read_manifest(version)
    prior = load_prior(version, manifest)
    images = (np.random.default_rng(0).random((5, 1, 28, 28)) > 0.5).astype(np.float32)
    eps = draws(np.random.Generator(np.random.PCG64(1)), 16, 8)
    encoder, decoder = Graph(version / "encoder.onnx"), Graph(version / "decoder.onnx")
    likelihood = likelihood_of(manifest)
    scores = score_in_process(encoder, decoder, likelihood, prior, images, eps)
    with torch.no_grad():
        x = torch.from_numpy(images)
        mu, logvar = model.encode(x)
        z = mu[:, None] + torch.from_numpy(eps)[None] * torch.exp(0.5 * logvar)[:, None]  # [5, 16, 8]
        logits = model.decode(z.reshape(-1, 8)).reshape(5, 16, -1)
        log_px = -torch.nn.functional.binary_cross_entropy_with_logits(
            logits, x.reshape(5, 1, -1).expand(-1, 16, -1), reduction="none"
        ).sum(-1)
        log_q = (-0.5 * (np.log(2 * np.pi) + logvar[:, None] + torch.from_numpy(eps)[None] ** 2)).sum(-1)
        log_w = log_px + model.log_prior(z) - log_q
        expected = (torch.logsumexp(log_w.double(), 1) - np.log(16)).numpy()
    np.testing.assert_allclose(scores.log_likelihood, expected, rtol=0, atol=2e-3)
    # Scored under the base prior alone, the numbers differ: Score reads the flow.
    assert isinstance(prior, FlowPrior)
    encoded = encoder.run({"x": images})
    base = decode_all(decoder, Scorer(likelihood, prior.base, images, encoded["mu"], encoded["logvar"], eps))
    assert np.abs(base.log_likelihood - scores.log_likelihood).min() > 0.01


def test_verify_finds_a_sampler_that_does_not_invert_the_density(
    version: Path, tmp_path: Path, tiny_model_exporter: Callable[..., Path]
) -> None:
    # Another flow's sampler, hashed into model.json: shapes and pairing hold, the round trip does not.
    other = tiny_model_exporter(
        tmp_path / "other",
        1,
        seed=5,
        prior="mixture",
        prior_components=COMPONENTS,
        prior_flow_layers=LAYERS,
    )
    sampler = onnx.load(str(other / "prior_flow_sampler.onnx"))
    mine = onnx.load(str(version / "prior_flow_sampler.onnx"))
    del sampler.metadata_props[:]
    sampler.metadata_props.extend(mine.metadata_props)  # this version's pairing id
    onnx.save(sampler, str(version / "prior_flow_sampler.onnx"))
    _rehash(version, "prior_flow_sampler.onnx")
    checks = _checks(version)
    assert checks["pairing"][0] and checks["shapes"][0]
    passed, message = checks["prior-flow"]
    assert not passed and "the flow does not invert: z -> u -> z differs from the start" in message


def test_verify_finds_a_log_det_that_is_not_the_jacobians(version: Path) -> None:
    # log_det + 0.5: the round trips still hold, every log p(z) would be half a nat off.
    path = version / "prior_flow_density.onnx"
    proto = onnx.load(str(path))
    for node in proto.graph.node:
        node.output[:] = [f"{LOG_DET}_raw" if name == LOG_DET else name for name in node.output]
    proto.graph.node.extend(
        [
            helper.make_node(
                "Constant", [], ["half"], value=helper.make_tensor("half", onnx.TensorProto.FLOAT, [], [0.5])
            ),
            helper.make_node("Add", [f"{LOG_DET}_raw", "half"], [LOG_DET]),
        ]
    )
    onnx.save(proto, str(path))
    _rehash(version, path.name)
    passed, message = _checks(version)["prior-flow"]
    assert not passed and f"{LOG_DET} is" in message and "whose Jacobian has log|det|" in message
    # A changed graph whose hash model.json still gives is never run at all.
    path.write_bytes(path.read_bytes() + b"\0")
    checks = _checks(version)
    assert not checks["hashes"][0] and "prior_flow_density.onnx sha256" in checks["hashes"][1]
    assert "prior-flow" not in checks


def test_recover_reads_the_flow_back(tiny_flow_repo: Path, model: VAE, tmp_path: Path) -> None:
    recover_run(tiny_flow_repo / FLOW / "1", tmp_path / "run")
    recovered = ckpt.load(tmp_path / "run").build_model()
    assert recovered.config.prior_flow_layers == 3
    for key, value in model.state_dict().items():
        if key.startswith("prior_flow."):
            torch.testing.assert_close(recovered.state_dict()[key], value)
    u = np.random.default_rng(0).standard_normal((4, 8), dtype=np.float32)
    with torch.no_grad():
        flowed = recovered.prior_flow(torch.from_numpy(u))  # type: ignore[misc]
    graph = Graph(tiny_flow_repo / FLOW / "1" / "prior_flow_density.onnx").run({"z": u})
    np.testing.assert_allclose(flowed[0].numpy(), graph[BASE_LATENTS], atol=1e-5)


def test_a_conditional_models_judged_samples_go_through_its_flow(
    tmp_path: Path, tiny_model_exporter: Callable[..., Path]
) -> None:
    from training.judge import conditional_samples

    version = tiny_model_exporter(tmp_path, 1, seed=0, classes=("a", "b"), prior_flow_layers=LAYERS)
    manifest = read_manifest(version)
    assert manifest.conditional and manifest.prior is None and manifest.prior_flow is not None
    probs, labels = conditional_samples(version, 3, temperature=0.5, seed=2)
    z = (0.5 * np.random.default_rng(2).standard_normal((6, 8))).astype(np.float32)
    prior = load_prior(version, manifest)
    assert isinstance(prior, FlowPrior)
    decoded = Graph(version / "decoder.onnx").run({"z": prior.latents(z), "y": labels}, ("probs",))["probs"]
    np.testing.assert_allclose(probs, decoded, rtol=0, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available")
def test_verify_on_a_device_runs_the_flows_graphs_there_too(tiny_flow_repo: Path) -> None:
    version = tiny_flow_repo / FLOW / "1"
    manifest = read_manifest(version)
    for role, outputs in (("density", {BASE_LATENTS, LOG_DET}), ("sampler", {"z"})):
        graph = Graph(version / f"prior_flow_{role}.onnx")
        differences = graph_differences(graph, graph, manifest, f"prior_flow.{role}", 1e-4, batch=8)
        assert {d.output for d in differences} == outputs and all(d.max_abs_diff == 0 for d in differences)
    if "CUDAExecutionProvider" in available_providers():
        return  # the gpu-marked tests run the device itself
    # Without CUDA onnxruntime falls back to the CPU, which the check reports for every float32 graph.
    (failure,) = verify_version(version, placement=Placement(CUDA)).failures
    assert all(
        f"{file} runs on CPUExecutionProvider" in failure.message
        for file in manifest.files()
        if ".onnx" in file
    )
