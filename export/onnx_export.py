"""`vae export`: a checkpoint -> encoder.onnx, decoder.onnx and model.json, checked before written."""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError
from export.flow_graphs import write_prior_flow
from export.fp16 import add_fp16
from export.graphs import OPSET, write_graphs
from export.parity import PARITY_BATCH_SIZES, check_parity
from export.prior_file import write_prior
from repository.layout import publish_version, stage_version
from repository.manifest import Manifest, v1_specs, write_manifest
from repository.prior import load_prior
from repository.runtime import Graph
from repository.scoring import ScoringUnsupported, score_reference
from repository.verify import verify_version
from training import checkpoint as ckpt
from training.config import to_dict, trains_on_binary
from training.data import EVAL_BINARIZATION_SEED, load_dataset, model_inputs
from training.model import VAE
from training.train import class_labels

SCORE_REFERENCE_SEED = 0


@dataclass(frozen=True)
class ScoreImages:
    """The images whose Score quantiles model.json records, the k to score them with, and what they are.

    labels: their classes, for a conditional model (scored conditional on the true label).
    """

    images: np.ndarray
    k: int
    described: str
    labels: np.ndarray | None = None


def export_run(
    run: Path,
    repo: Path,
    name: str,
    *,
    version: int | None = None,
    fp16: bool = False,
    score_k: int = 0,
    data_dir: Path | None = None,
) -> Path:
    """Export RUN's checkpoint (best.pt, else last.pt, or a .pt file) with RUN/eval.json if present.

    score_k > 0 also records the Score quantiles of the run's test set at that k (score_reference).
    """
    checkpoint = ckpt.load(run)
    eval_path = (run if run.is_dir() else run.parent) / "eval.json"
    evaluation = json.loads(eval_path.read_text(encoding="utf-8")) if eval_path.is_file() else None
    training = {
        "model": to_dict(checkpoint.model_config),
        "train": to_dict(checkpoint.train_config),
        "epochs": checkpoint.epoch,
        "train_seconds": checkpoint.train_seconds,
    }
    if checkpoint.averaged_epochs:
        training["averaged_epochs"] = list(checkpoint.averaged_epochs)
    return export_model(
        checkpoint.build_model(),
        repo,
        name,
        version=version,
        fp16=fp16,
        training=training,
        evaluation=evaluation,
        score_images=_test_images(checkpoint, score_k, data_dir) if score_k else None,
    )


def _test_images(checkpoint: ckpt.Checkpoint, k: int, data_dir: Path | None) -> ScoreImages:
    """The test set as `vae eval` feeds it to the model (binarized once, seeded, if it trains on binary)."""
    train = checkpoint.train_config
    binarized = trains_on_binary(checkpoint.model_config, train)
    splits = load_dataset(train.dataset, data_dir)
    test = splits.test_x
    if tuple(test.shape[1:]) != tuple(checkpoint.model_config.image_shape):
        raise ExportError(
            f"the {train.dataset} test images are {list(test.shape[1:])}, the model takes "
            f"{list(checkpoint.model_config.image_shape)}: pass --score-k 0 to export without Score quantiles"
        )
    how = f"binarized once with seed {EVAL_BINARIZATION_SEED}" if binarized else "grey levels"
    conditional = checkpoint.model_config.conditional
    return ScoreImages(
        model_inputs(test, binarized, EVAL_BINARIZATION_SEED),
        k,
        f"the {len(test)} {train.dataset} test images, {how}"
        + (", with their labels" if conditional else ""),
        class_labels(splits.test_y, checkpoint.model_config).numpy() if conditional else None,
    )


def export_model(
    model: VAE,
    repo: Path,
    name: str,
    *,
    training: Mapping[str, Any],
    evaluation: Mapping[str, Any] | None = None,
    version: int | None = None,
    fp16: bool = False,
    score_images: ScoreImages | None = None,
) -> Path:
    """Write repo/name/version (default: the next free one) and return its path.

    Everything is built and checked in a hidden staging directory inside `repo` and moved into place
    with one rename, so a failed export leaves nothing behind and the service never sees half a version.
    """
    model = model.eval()
    config = model.config
    if config.posterior_flow_layers:
        # Encode's mean and log-variance would no longer describe the posterior Score draws from.
        raise ExportError(
            f"the model has a posterior flow ({config.posterior_flow_layers} layers), which the serving "
            "contract does not carry (a prior flow it does: docs/export.md); evaluate its run with "
            "`vae curve` or `vae eval`"
        )
    with stage_version(repo, name, version) as staged:
        pairing_id = uuid.uuid4().hex
        graphs = write_graphs(model, staged.path, name=name, version=staged.version, pairing_id=pairing_id)
        parity = check_parity(model, staged.path)
        prior = write_prior(model, staged.path)
        prior_flow = None
        if config.prior_flow_layers:
            prior_flow = write_prior_flow(
                model, staged.path, name=name, version=staged.version, pairing_id=pairing_id
            )
        manifest = Manifest(
            name=name,
            version=staged.version,
            created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            **v1_specs(config.latent_dim, config.image_shape, config.likelihood),
            opset=OPSET,
            pairing_id=pairing_id,
            graphs=graphs,
            fp16=None,
            parity_max_abs_diff=parity,
            parity_batch_sizes=PARITY_BATCH_SIZES,
            eval=evaluation,
            training=training,
            classes=config.classes,
            prior=prior,
            prior_flow=prior_flow,
        )
        if fp16:
            manifest = add_fp16(staged.path, manifest)
        if score_images is not None:
            manifest = _add_score_reference(staged.path, manifest, score_images)
        write_manifest(staged.path, manifest)
        report = verify_version(staged.path)
        if not report.ok:
            problems = "; ".join(f"{c.name}: {c.message}" for c in report.failures)
            raise ExportError(f"the exported version failed verification: {problems}")
        return publish_version(staged)


def _add_score_reference(staged: Path, manifest: Manifest, score: ScoreImages) -> Manifest:
    """The test set's Score quantiles, the baseline of the drift alert (docs/anomaly.md)."""
    try:
        reference = score_reference(
            Graph(staged / manifest.graphs["encoder"].file),
            Graph(staged / manifest.graphs["decoder"].file),
            manifest,
            load_prior(staged, manifest),
            score.images,
            k=score.k,
            seed=SCORE_REFERENCE_SEED,
            described=score.described,
            labels=score.labels,
        )
    except ScoringUnsupported as exc:
        logging.getLogger(__name__).warning("no score_reference in model.json: %s", exc)
        return manifest
    return dataclasses.replace(manifest, score_reference=reference)
