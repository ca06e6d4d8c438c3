"""Loaded model versions: verify and load them from the repository, warm them, resolve requests to one.

A version is served only after export.verify has checked it (model.json, sha256 of every file,
graph interfaces, encoder/decoder pairing, a round trip): a broken version is logged, counted in
vae_model_load_failures_total and skipped, and the default is the newest version that loaded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from repository.errors import RepositoryError
from repository.layout import list_models, list_versions
from repository.manifest import (
    GRAPHS,
    IMAGES,
    LATENTS,
    LOGVAR,
    MANIFEST_FILE,
    MU,
    NAME_PATTERN,
    PROBS,
    Manifest,
    file_sha256,
)
from repository.placement import Placement
from repository.runtime import Graph
from repository.scoring import Likelihood, ScoringUnsupported, likelihood_of
from repository.verify import verify_version
from service.batcher import Batcher, BatchObserver, BatchTracer, RunBatch, bucket_sizes
from service.config import ServiceConfig
from service.errors import InvalidArgument, NotFound, Unavailable
from service.metrics import Metrics
from vae.v1 import vae_pb2 as pb

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scoring:
    """What Score needs of a model: its p(x|z), and a decoder batcher returning the output that reads.

    Its own batcher, apart from Decode's: Decode and Sample never copy back logits they do not need,
    and Score's many decoder items queue there without crowding out the other RPCs' admission.
    """

    likelihood: Likelihood
    decoder: Batcher  # latents [n, D] -> (likelihood.output [n, C, H, W],)


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One model version ready to serve: its manifest, its two graphs and their batchers."""

    manifest: Manifest
    provider: str
    encoder: Batcher  # images [n, C, H, W] -> (mu [n, D], logvar [n, D])
    decoder: Batcher  # latents [n, D] -> (probs [n, C, H, W],)
    scoring: Scoring | ScoringUnsupported  # the exception says why a model cannot be scored
    ref: pb.ModelRef  # built once, copied into every response
    files: tuple[tuple[str, int, int], ...]  # the version directory's files when it was loaded
    manifest_bytes: bytes  # model.json as it was read then

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.manifest.image_shape

    @property
    def latent_dim(self) -> int:
        return self.manifest.latent_dim

    async def close(self) -> None:
        batchers = [self.encoder, self.decoder]
        if isinstance(self.scoring, Scoring):
            batchers.append(self.scoring.decoder)
        await asyncio.gather(*(batcher.close() for batcher in batchers))


def open_graphs(path: Path, config: ServiceConfig, placement: Placement) -> tuple[Manifest, Graph, Graph]:
    """Verify a version directory, then load its two graphs for serving (blocking: call in a thread)."""
    report = verify_version(path, intra_op_threads=config.intra_op_threads)
    report.raise_for_failures()
    if report.manifest is None:  # raise_for_failures covers it; this narrows the type
        raise RepositoryError(f"{path}: no manifest")
    manifest = report.manifest
    graphs = [
        Graph(
            path / manifest.graphs[role].file,
            intra_op_threads=config.intra_op_threads,
            inter_op_threads=config.inter_op_threads,
            spinning=config.spinning,
            placement=placement,
        )
        for role in GRAPHS
    ]
    return manifest, graphs[0], graphs[1]


def _encoder_batch(graph: Graph) -> RunBatch:
    def run(images: np.ndarray) -> tuple[np.ndarray, ...]:
        out = graph.run({IMAGES: images}, (MU, LOGVAR))
        return out[MU], out[LOGVAR]

    return run


def _decoder_batch(graph: Graph) -> RunBatch:
    def run(latents: np.ndarray) -> tuple[np.ndarray, ...]:
        # Only the pixel means: a bernoulli decoder's logits are never sent, so never copied.
        return (graph.run({LATENTS: latents}, (PROBS,))[PROBS],)

    return run


def _scoring(
    manifest: Manifest, graph: Graph, batcher: Callable[[RunBatch], Batcher]
) -> Scoring | ScoringUnsupported:
    try:
        likelihood = likelihood_of(manifest)
    except ScoringUnsupported as exc:
        return exc
    output = likelihood.output

    def run(latents: np.ndarray) -> tuple[np.ndarray, ...]:
        return (graph.run({LATENTS: latents}, (output,))[output],)

    return Scoring(likelihood, batcher(run))


async def load_model(
    path: Path,
    config: ServiceConfig,
    placement: Placement,
    observers: Mapping[str, BatchObserver],
    tracer: BatchTracer | None = None,
) -> LoadedModel:
    """Verify, load and warm up one version; every batch-size bucket runs once before it serves."""
    files = _file_signature(path)  # before verifying: a change after this is seen at the next look
    manifest, encoder, decoder = await asyncio.to_thread(open_graphs, path, config, placement)
    label = f"{manifest.name}/{manifest.version}"

    def batcher(run_batch: RunBatch, graph: str, name: str = "") -> Batcher:
        return Batcher(
            run_batch,
            max_batch_items=config.max_batch_items,
            max_delay_s=config.max_delay_ms / 1000,
            max_gather_s=config.max_gather_ms / 1000,
            max_queue_items=config.max_queue_items,
            observer=observers[graph],
            name=f"{label}/{name or graph}",
            tracer=tracer,
        )

    model = LoadedModel(
        manifest=manifest,
        provider=decoder.provider,
        encoder=batcher(_encoder_batch(encoder), "encoder"),
        decoder=batcher(_decoder_batch(decoder), "decoder"),
        # Not warmed separately: it runs the decoder's session, whose batch sizes are warmed below.
        # Its batches count in the decoder's series: they run the same graph.
        scoring=_scoring(manifest, decoder, lambda run: batcher(run, "decoder", "decoder-score")),
        ref=pb.ModelRef(name=manifest.name, version=manifest.version),
        files=files,
        manifest_bytes=(path / MANIFEST_FILE).read_bytes(),
    )
    sizes = bucket_sizes(config.max_batch_items)
    await model.encoder.warm_up(np.zeros((1, *manifest.image_shape), np.float32), sizes)
    await model.decoder.warm_up(np.zeros((1, manifest.latent_dim), np.float32), sizes)
    log.info("loaded %s on %s, warmed batch sizes %s", label, model.provider, sizes)
    return model


class Registry:
    """The loaded versions by name and number, and which one answers requests that name none."""

    def __init__(self, default_model: str) -> None:
        self.default_model = default_model
        self._models: dict[str, dict[int, LoadedModel]] = {}
        self._default: LoadedModel | None = None
        # Versions that failed to load, with their files' sizes and times then: a reload skips
        # them (no new log line or metric every poll) until their files change.
        self.refused: dict[tuple[str, int], tuple[tuple[str, int, int], ...]] = {}

    def has(self, name: str, version: int) -> bool:
        return version in self._models.get(name, {})

    def get(self, name: str, version: int) -> LoadedModel | None:
        return self._models.get(name, {}).get(version)

    def add(self, model: LoadedModel) -> None:
        self._models.setdefault(model.manifest.name, {})[model.manifest.version] = model
        self._pick_default()

    def remove(self, model: LoadedModel) -> None:
        """Stop answering with `model`; requests that named no version go to the newest one left."""
        versions = self._models[model.manifest.name]
        del versions[model.manifest.version]
        if not versions:
            del self._models[model.manifest.name]
        self._pick_default()

    def _pick_default(self) -> None:
        versions = self._models.get(self.default_model)
        self._default = versions[max(versions)] if versions else None

    def models(self) -> list[LoadedModel]:
        return [self._models[name][v] for name in sorted(self._models) for v in sorted(self._models[name])]

    def versions(self, name: str) -> list[int]:
        return sorted(self._models.get(name, {}))

    @property
    def default(self) -> LoadedModel | None:
        return self._default

    def resolve(self, ref: pb.ModelRef) -> LoadedModel:
        """Empty name: the default model; version 0: its newest loaded version."""
        if self._default is None:
            raise Unavailable("models are still loading; retry when health reports SERVING")
        if not ref.name and not ref.version:
            return self._default
        name = ref.name or self.default_model
        versions = self._models.get(name)
        if not versions:
            if not NAME_PATTERN.fullmatch(name):
                # Never echo an unbounded string: a long name would overflow the status trailer.
                raise InvalidArgument(
                    f"model name must be 1-64 letters, digits, '_', '.' or '-', got {_clip(name)!r} "
                    f"({len(name)} characters)"
                )
            raise NotFound(f"unknown model {name!r}; loaded models: {', '.join(sorted(self._models))}")
        version = ref.version or max(versions)
        if version not in versions:
            loaded = ", ".join(map(str, sorted(versions)))
            raise NotFound(f"model {name!r} has no version {version}; loaded versions: {loaded}")
        return versions[version]


async def load_repository(
    registry: Registry,
    config: ServiceConfig,
    placement: Placement,
    metrics: Metrics,
    tracer: BatchTracer | None = None,
) -> None:
    """Load every version of every model in config.repo; the default model must end up with one."""
    await load_new_versions(registry, config, placement, metrics, tracer)
    if registry.default is None:
        raise RepositoryError(
            f"no version of the default model {registry.default_model!r} in {config.repo} could be loaded; "
            "the log says why (run `vae verify` on it), or choose another with --model"
        )


async def load_new_versions(
    registry: Registry,
    config: ServiceConfig,
    placement: Placement,
    metrics: Metrics,
    tracer: BatchTracer | None = None,
) -> list[LoadedModel]:
    """Verify, load and warm the versions in config.repo that are not loaded yet; return those loaded.

    Each joins the registry once warm, so the newest version of the default model takes over
    between two requests. Versions refused before are skipped until their files change.
    """
    observers = {graph: metrics.graph(graph) for graph in GRAPHS}
    loaded = []
    for name in _model_names(config.repo, registry.default_model):
        for version in sorted(list_versions(config.repo, name), reverse=True):
            path = config.repo / name / str(version)
            files = _file_signature(path)
            current = registry.get(name, version)
            if current is not None:
                if files != current.files and _changed(path, current):
                    await _refuse_changed(registry, current, metrics)
                    registry.refused[name, version] = files
                continue
            if registry.refused.get((name, version)) == files:
                continue
            try:
                model = await load_model(path, config, placement, observers, tracer)
            except RepositoryError as exc:  # verification said why; no traceback needed
                log.error("model %s version %d refused: %s", name, version, exc)
            except Exception:  # a bad version must never stop the others from serving
                log.exception("model %s version %d failed to load", name, version)
            else:
                registry.add(model)
                metrics.model_info.labels(name, str(version), model.provider).set(1)
                _publish_score_reference(model.manifest, metrics)
                loaded.append(model)
                if model is registry.default:
                    log.info("%s/%d now answers requests that name no version", name, version)
                continue
            metrics.model_load_failures.labels(name).inc()
            registry.refused[name, version] = files
    return loaded


def _publish_score_reference(manifest: Manifest, metrics: Metrics) -> None:
    """The drift alert's baseline (deploy/prometheus/rules) from model.json, when the export recorded one."""
    reference = manifest.score_reference
    if reference is None:
        return
    for quantile, nats in reference["quantiles"].items():
        metrics.score_reference.labels(manifest.name, manifest.version, quantile, reference["k"]).set(nats)


def _changed(path: Path, model: LoadedModel) -> bool:
    """Whether a loaded version's files on disk now hold something else (not merely touched)."""
    try:
        if (path / MANIFEST_FILE).read_bytes() != model.manifest_bytes:
            return True
        return any(file_sha256(path / file) != digest for file, digest in model.manifest.files().items())
    except OSError:
        return True  # a file it was loaded from is gone


async def _refuse_changed(registry: Registry, model: LoadedModel, metrics: Metrics) -> None:
    """A version number names one model forever: never go on answering for files that changed."""
    name, version = model.manifest.name, model.manifest.version
    log.error(
        "model %s version %d: its files changed on disk after it was loaded; it no longer answers "
        "(a version number must never be reused: export a new version instead)",
        name,
        version,
    )
    registry.remove(model)
    metrics.model_info.labels(name, str(version), model.provider).set(0)
    metrics.model_files_changed.labels(name, str(version)).inc()
    await model.close()


def _clip(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _file_signature(path: Path) -> tuple[tuple[str, int, int], ...]:
    """Name, size and modification time of each file in a version directory."""
    try:
        return tuple(
            sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.iterdir() if f.is_file())
        )
    except OSError:  # removed while we looked: nothing to compare with
        return ()


def _model_names(repo: Path, default_model: str) -> Sequence[str]:
    """The default model first, so its versions are warm soonest; a missing one fails at once."""
    names = list_models(repo)
    if default_model not in names:
        raise RepositoryError(
            f"no model {default_model!r} in repository {repo} (models there: {', '.join(names) or 'none'}); "
            "pass --repo and --model"
        )
    return [default_model, *(n for n in names if n != default_model)]
