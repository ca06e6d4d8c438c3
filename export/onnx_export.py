"""`vae export`: a checkpoint -> encoder.onnx, decoder.onnx and model.json, checked before written."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnxconverter_common import float16

from export.graphs import DecoderGraph, EncoderGraph
from repository.errors import RepositoryError, VaeError
from repository.layout import check_new_version, next_version, record_version, validate_model_name
from repository.manifest import (
    BATCH_AXIS,
    GRAPHS,
    IMAGES,
    LABELS,
    LATENTS,
    PRIOR_KIND,
    Fp16Entry,
    GraphEntry,
    Manifest,
    PriorEntry,
    file_sha256,
    graph_contract,
    graph_metadata,
    write_manifest,
)
from repository.prior import PRIOR_FILE, load_prior, read_mixture, save_prior
from repository.runtime import Graph
from repository.scoring import ScoringUnsupported, score_reference
from repository.verify import (
    compare_outputs,
    fp16_differences,
    probe_images,
    probe_labels,
    probe_latents,
    recorded_difference,
    verify_version,
)
from training import checkpoint as ckpt
from training.config import to_dict, trains_on_binary
from training.data import EVAL_BINARIZATION_SEED, load_dataset, model_inputs
from training.model import VAE
from training.train import class_labels

# torchlib's own opset: newer would make the exporter run a version converter, older ones lack ops
# it emits. onnxruntime has run opset 18 since 1.14.
OPSET = 18
PARITY_BATCH_SIZES = (1, 7, 64)
PARITY_TOLERANCE = 1e-4
# torch.export specialises sizes 0 and 1, which would pin the batch axis; trace with 2.
_TRACE_BATCH = 2
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


class ExportError(VaeError):
    """The export was refused (parity, fp16 or verification failed); nothing was written."""


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
    validate_model_name(name)
    version = next_version(repo, name) if version is None else version
    check_new_version(repo, name, version)
    target = repo / name / str(version)
    model = model.eval()
    config = model.config
    repo.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=repo))
    try:
        staged = staging / name / str(version)
        staged.mkdir(parents=True)
        pairing_id = uuid.uuid4().hex
        contract = graph_contract(
            config.latent_dim, config.image_shape, config.likelihood, conditional=config.conditional
        )
        modules = {"encoder": EncoderGraph(model), "decoder": DecoderGraph(model)}
        # Tracing needs shapes, not values; zeros leave the caller's RNG state alone.
        labels = (torch.zeros(_TRACE_BATCH, dtype=torch.int64),) if config.conditional else ()
        examples = {
            "encoder": (torch.zeros(_TRACE_BATCH, *config.image_shape), *labels),
            "decoder": (torch.zeros(_TRACE_BATCH, config.latent_dim), *labels),
        }
        graphs = {}
        for role in GRAPHS:
            inputs, outputs = contract[role]
            proto = _to_onnx(
                modules[role], examples[role], [t.name for t in inputs], [t.name for t in outputs]
            )
            _name_batch_axis(proto)
            metadata = graph_metadata(
                name=name,
                version=version,
                latent_dim=config.latent_dim,
                image_shape=config.image_shape,
                likelihood=config.likelihood,
                pairing_id=pairing_id,
                graph=role,
                classes=config.classes,
            )
            onnx.helper.set_model_props(proto, metadata)
            onnx.checker.check_model(proto, full_check=True)
            file = f"{role}.onnx"
            # Serialised in one piece: torch's own save defaults to an external-data side file.
            (staged / file).write_bytes(proto.SerializeToString())
            graphs[role] = GraphEntry(
                file=file, sha256=file_sha256(staged / file), inputs=inputs, outputs=outputs
            )
        parity = check_parity(model, staged)
        prior = _write_prior(model, staged)
        manifest = Manifest(
            name=name,
            version=version,
            created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            latent_dim=config.latent_dim,
            image_shape=config.image_shape,
            likelihood=config.likelihood,
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
        )
        if fp16:
            manifest = _add_fp16(staged, manifest)
        if score_images is not None:
            manifest = _add_score_reference(staged, manifest, score_images)
        write_manifest(staged, manifest)
        report = verify_version(staged)
        if not report.ok:
            problems = "; ".join(f"{c.name}: {c.message}" for c in report.failures)
            raise ExportError(f"the exported version failed verification: {problems}")
        target.parent.mkdir(exist_ok=True)
        try:  # again: another export may have taken this number, or a higher one, while we worked
            check_new_version(repo, name, version)
        except RepositoryError as exc:
            raise RepositoryError(f"{exc} (changed during the export; nothing was written)") from exc
        staged.rename(target)
        record_version(repo, name, version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _to_onnx(
    module: torch.nn.Module,
    examples: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
) -> onnx.ModelProto:
    batch = torch.export.Dim(BATCH_AXIS)
    with _quiet_exporter():
        program = torch.onnx.export(
            module.eval(),
            examples,
            dynamo=True,
            input_names=input_names,
            # Every input shares the one batch axis (forward's parameter names, in order).
            dynamic_shapes=tuple({0: batch} for _ in examples),
            output_names=output_names,
            opset_version=OPSET,
            external_data=False,
            verbose=False,
        )
    if program is None:  # only the legacy exporter returns None
        raise ExportError("torch.onnx.export returned no program")
    return program.model_proto


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide the exporter's notes about its own internals (missing torchvision ops, pytree renames)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            # A conditional model's two inputs share one batch axis; torch notes that it keeps one name.
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*", category=UserWarning)
            yield
    finally:
        logger.setLevel(level)


def _name_batch_axis(proto: onnx.ModelProto) -> None:
    """Call the dynamic leading axis of every input and output "batch", whatever torch named it."""
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if not dims[0].dim_param:
            raise ExportError(
                f"{value.name}: the batch axis was exported with fixed size {dims[0].dim_value}; "
                "the dynamic_shapes given to torch.onnx.export did not take effect"
            )
        dims[0].dim_param = BATCH_AXIS


def check_parity(model: VAE, graphs_dir: Path) -> dict[str, float]:
    """onnxruntime against PyTorch at each parity batch size; max abs difference per graph."""
    config = model.config
    encoder = Graph(graphs_dir / "encoder.onnx")
    decoder = Graph(graphs_dir / "decoder.onnx")
    worst = dict.fromkeys(GRAPHS, 0.0)
    for batch in PARITY_BATCH_SIZES:
        x = probe_images(config.image_shape, batch, seed=batch)
        z = probe_latents(config.latent_dim, batch, seed=batch)
        feeds: dict[str, np.ndarray] = {}
        y = None
        if config.conditional:
            feeds[LABELS] = probe_labels(len(config.classes), batch)
            y = torch.from_numpy(feeds[LABELS])
        with torch.no_grad():
            mu, logvar = model.encode(torch.from_numpy(x), y)
            expected = {
                "encoder": {"mu": mu.numpy(), "logvar": logvar.numpy()},
                "decoder": {"probs": model.decode_mean(torch.from_numpy(z), y).numpy()},
            }
            if config.likelihood == "bernoulli":
                expected["decoder"]["logits"] = model.decode(torch.from_numpy(z), y).numpy()
        actual = {"encoder": encoder.run({IMAGES: x, **feeds}), "decoder": decoder.run({LATENTS: z, **feeds})}
        for role in GRAPHS:
            differences = compare_outputs(expected[role], actual[role], PARITY_TOLERANCE)
            for d in differences:
                if not d.ok:
                    raise ExportError(
                        f"parity failed for the {role} graph: output {d.output!r} at batch size {batch} "
                        f"{d.describe('PyTorch')}; nothing was written"
                    )
            worst[role] = max(worst[role], recorded_difference(differences))
    return worst


def _write_prior(model: VAE, staged: Path) -> PriorEntry | None:
    """A learned prior as the mixture it is now, in PRIOR_FILE; None (nothing written) for N(0, I).

    A VampPrior's components are the encoder's posteriors at its pseudo-inputs, computed here once.
    The file's log p(z) must match PyTorch's on probe latents from N(0, I) and from the prior itself.
    """
    config = model.config
    with torch.no_grad():
        components = model.prior_components()
        if components is None:
            return None
        means, logvars, log_weights = (c.numpy() for c in components)
        save_prior(staged / PRIOR_FILE, means, logvars, log_weights)
        entry = PriorEntry(
            kind=PRIOR_KIND,
            trained_as=config.prior,
            components=config.prior_components,
            file=PRIOR_FILE,
            sha256=file_sha256(staged / PRIOR_FILE),
        )
        prior = read_mixture(staged / PRIOR_FILE, config.prior_components, config.latent_dim)
        z = np.concatenate(
            [
                probe_latents(config.latent_dim, 64),
                prior.sample(np.random.default_rng(SCORE_REFERENCE_SEED), 64, 1.0),
            ]
        )
        expected = model.log_prior(torch.from_numpy(z)).numpy()
    # log p(z) reaches hundreds of nats far from the prior, where float32 resolves ~1e-5: scaled.
    (difference,) = compare_outputs(
        {"log_prior": expected}, {"log_prior": prior.log_prob(z)}, PARITY_TOLERANCE, scaled={"log_prior"}
    )
    if not difference.ok:
        raise ExportError(
            f"parity failed for {PRIOR_FILE}: its log p(z) {difference.describe('PyTorch')}; "
            "nothing was written"
        )
    return entry


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


def _add_fp16(staged: Path, manifest: Manifest) -> Manifest:
    """Write half-precision copies with float32 inputs and outputs; refuse them if they drift."""
    entries = {}
    for role in GRAPHS:
        source = staged / manifest.graphs[role].file
        file = f"{role}.fp16.onnx"
        with warnings.catch_warnings():
            # The converter warns for each weight it clamps into the float16 range; the comparison
            # below is what decides whether that mattered.
            warnings.filterwarnings("ignore", category=UserWarning, module="onnxconverter_common")
            half = float16.convert_float_to_float16(onnx.load(source), keep_io_types=True)
        # The converter types every intermediate as float16, even Sigmoid(logits), which reads the
        # float32 graph output "logits" and so computes in float32; the checker rejects that stale
        # annotation. Shape inference recomputes the types from the nodes.
        half.graph.ClearField("value_info")
        onnx.checker.check_model(half, full_check=True)
        (staged / file).write_bytes(half.SerializeToString())
        differences = fp16_differences(Graph(source), Graph(staged / file), manifest, role)
        for d in differences:
            if not d.ok:
                raise ExportError(
                    f"fp16 refused: the {role} graph's output {d.output!r} {d.describe('float32')} "
                    "(VAE decoders can overflow float16); export without --fp16. Nothing was written"
                )
        entries[role] = Fp16Entry(
            file=file, sha256=file_sha256(staged / file), max_abs_diff=recorded_difference(differences)
        )
    return dataclasses.replace(manifest, fp16=entries)
