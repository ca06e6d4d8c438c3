"""Loading model versions: verify them, open their graphs, build and warm their batchers.

A version is served only after repository/verify.py has checked it (model.json, sha256 of every
file, graph interfaces, encoder/decoder pairing, a round trip): a broken version is logged, counted in
vae_model_load_failures_total and skipped, and the default is the newest version that loaded. A loaded
version whose files later change on disk (service/version_watch.py) stops answering
(vae_model_files_changed_total).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from repository.errors import RepositoryError
from repository.layout import list_models, list_versions
from repository.manifest import Manifest
from repository.prior import FlowPrior, Prior, load_prior
from repository.scoring import ScoringUnsupported, likelihood_of
from repository.tensor_names import GRAPHS
from repository.verify import verify_version
from service.batch_types import BatchObserver, BatchTracer, RunBatch, labelled
from service.batcher import Batcher
from service.buckets import Buckets
from service.config import ServiceConfig
from service.graph_sources import GraphSource, ServedGraph, release_all
from service.metrics import PRIOR_FLOW, SERVED_GRAPHS, Metrics
from service.registry import LoadedModel, Registry, Scoring
from service.run_batches import decoder_batch, encoder_batch, prior_sampler_batch, scoring_batch
from service.version_watch import VersionWatch, file_signature
from service.warm_up import bucket_sizes
from vae.v1 import vae_pb2 as pb

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenedVersion:
    """A verified version's graphs, opened through a GraphSource, and its prior."""

    manifest: Manifest
    prior: Prior | None  # spatial latents have none: N(0, I) is drawn at the size a request asks for
    encoder: ServedGraph
    decoder: ServedGraph
    graphs: tuple[ServedGraph, ...]  # every graph opened, a prior flow's included: what to give back


def open_graphs(path: Path, config: ServiceConfig, source: GraphSource) -> OpenedVersion:
    """Verify a version directory, then load its prior and open its graphs (blocking: call in a thread)."""
    report = verify_version(path, intra_op_threads=config.intra_op_threads)
    report.raise_for_failures()
    if report.manifest is None:  # raise_for_failures covers it; this narrows the type
        raise RepositoryError(f"{path}: no manifest")
    manifest = report.manifest
    graphs: list[ServedGraph] = []

    def open_graph(file: Path, sha256: str) -> ServedGraph:
        graphs.append(source.open(file, sha256))
        return graphs[-1]

    try:
        encoder, decoder = (
            open_graph(path / manifest.graphs[g].file, manifest.graphs[g].sha256) for g in GRAPHS
        )
        prior = None if manifest.is_spatial else load_prior(path, manifest, open_graph)
    except BaseException:
        release_all(source, graphs)  # those opened before the one that failed
        raise
    return OpenedVersion(manifest, prior, encoder, decoder, tuple(graphs))


def _scoring(
    manifest: Manifest, opened: OpenedVersion, batcher: Callable[[RunBatch], Batcher]
) -> Scoring | ScoringUnsupported:
    try:
        likelihood = likelihood_of(manifest)
    except ScoringUnsupported as exc:
        return exc
    if opened.prior is None:
        return ScoringUnsupported(f"model {manifest.name!r}: Score of spatial latents is not served")
    prior = opened.prior
    return Scoring(likelihood, prior, batcher(scoring_batch(opened.decoder, likelihood.output, prior)))


# A model of any image size is warmed at one small size: the smallest multiple of its divisibility
# at least this large (64x64 for factor 8). Other sizes get batchers, unwarmed, when first asked for.
WARM_SIDE = 64


def warm_image_shape(manifest: Manifest) -> tuple[int, int, int]:
    """The image shape a version is warmed at: its fixed size, or a small one it takes."""
    fixed = manifest.fixed_image_shape
    if fixed is not None:
        return fixed
    m = manifest.divisibility
    side = -(-WARM_SIDE // m) * m
    return (manifest.image.channels, side, side)


async def load_model(
    path: Path,
    config: ServiceConfig,
    source: GraphSource,
    observers: Mapping[str, BatchObserver],
    tracer: BatchTracer | None = None,
) -> LoadedModel:
    """Verify, load and warm up one version; every batch-size bucket runs once before it serves.

    A model of any image size is warmed at one size (warm_image_shape); see service/buckets.py.
    """
    opened = await asyncio.to_thread(open_graphs, path, config, source)
    manifest = opened.manifest
    try:
        image = warm_image_shape(manifest)
        latent = manifest.latent_shape(image[1:])
        model = _assemble(opened, config, source, observers, tracer, image, latent)
    except BaseException:
        release_all(source, opened.graphs)  # no batcher holds them yet
        raise
    label = f"{manifest.name}/{manifest.version}"
    sizes = bucket_sizes(config.max_batch_items)
    try:
        await _warm_up(model, image, latent, sizes)
    except BaseException:
        await model.close()  # its batchers' threads, and the executor's hold on its graphs
        raise
    log.info(
        "loaded %s on %s, warmed batch sizes %s at images %s%s",
        label,
        model.provider,
        sizes,
        list(image),
        "" if manifest.fixed_image_shape else " (other sizes: batchers made unwarmed when first asked for)",
    )
    for role, graph, graph_batcher in (
        ("encoder", opened.encoder, model.encoder),
        ("decoder", opened.decoder, model.decoder),
    ):
        log.info(
            "%s %s: %s; batches of at most %d items, started at once from %d (the knee), %.3g µs per item "
            "in a full batch",
            label,
            role,
            graph.describe(),
            graph_batcher.max_batch_items,
            graph_batcher.enough_items,
            graph_batcher.item_seconds * 1e6,
        )
    return model


def _assemble(
    opened: OpenedVersion,
    config: ServiceConfig,
    source: GraphSource,
    observers: Mapping[str, BatchObserver],
    tracer: BatchTracer | None,
    image: tuple[int, ...],
    latent: tuple[int, ...],
) -> LoadedModel:
    """A version's batchers around its opened graphs: one per graph (per image size where sizes vary)."""
    manifest, prior = opened.manifest, opened.prior
    label = f"{manifest.name}/{manifest.version}"

    def batcher(run_batch: RunBatch, graph: str, name: str = "") -> Batcher:
        return Batcher(
            run_batch,
            max_batch_items=config.max_batch_items,
            max_delay_s=config.max_delay_ms / 1000,
            max_gather_s=config.max_gather_ms / 1000,
            max_queue_items=config.max_queue_items,
            max_queue_delay_s=config.max_queue_delay_ms / 1000,
            max_queue_bytes=config.max_queue_bytes,
            observer=observers[graph],
            name=f"{label}/{name or graph}",
            tracer=tracer,
        )

    def buckets(run_batch: RunBatch, graph: str, shape: tuple[int, ...]) -> Buckets:
        def make(other: tuple[int, ...]) -> Batcher:
            return batcher(run_batch, graph, f"{graph}{list(other)}")

        dynamic = manifest.fixed_image_shape is None
        return Buckets(batcher(run_batch, graph), shape, make if dynamic else None)

    return LoadedModel(
        manifest=manifest,
        provider=opened.decoder.provider,
        encoders=buckets(encoder_batch(opened.encoder), "encoder", image),
        # Decode and Sample send only the images: a Bernoulli decoder's logits stay behind.
        decoders=buckets(decoder_batch(opened.decoder, manifest.image_output), "decoder", latent),
        # Warmed at its largest batch only: it runs the decoder's session, whose sizes are warmed below.
        # Its batches count in the decoder's series: they run the same graph (and log p(z), a prior
        # flow's density graph included).
        scoring=_scoring(manifest, opened, lambda run: batcher(run, "decoder", "decoder-score")),
        prior=prior,
        prior_sampler=(
            batcher(prior_sampler_batch(prior), PRIOR_FLOW) if isinstance(prior, FlowPrior) else None
        ),
        ref=pb.ModelRef(name=manifest.name, version=manifest.version),
        release=partial(release_all, source, opened.graphs),
    )


async def _warm_up(
    model: LoadedModel, image: tuple[int, ...], latent: tuple[int, ...], sizes: Sequence[int]
) -> None:
    y = np.zeros(1, np.int64) if model.manifest.conditional else None  # class 0: any class costs the same
    await model.encoder.warm_up(labelled(np.zeros((1, *image), np.float32), y), sizes)
    latents = labelled(np.zeros((1, *latent), np.float32), y)
    await model.decoder.warm_up(latents, sizes)
    if isinstance(model.scoring, Scoring):
        # One full batch: Score's admission needs its cost per item before its first request.
        await model.scoring.decoder.warm_up(latents, sizes[-1:])
    if model.prior_sampler is not None:
        await model.prior_sampler.warm_up(np.zeros((1, *latent), np.float32), sizes)


async def load_repository(
    registry: Registry,
    watch: VersionWatch,
    config: ServiceConfig,
    source: GraphSource,
    metrics: Metrics,
    tracer: BatchTracer | None = None,
) -> None:
    """Load every version of every model in config.repo; the default model must end up with one."""
    await load_new_versions(registry, watch, config, source, metrics, tracer)
    if registry.default is None:
        raise RepositoryError(
            f"no version of the default model {registry.default_model!r} in {config.repo} could be loaded; "
            "the log says why (run `vae verify` on it), or choose another with --model"
        )


async def load_new_versions(
    registry: Registry,
    watch: VersionWatch,
    config: ServiceConfig,
    source: GraphSource,
    metrics: Metrics,
    tracer: BatchTracer | None = None,
) -> list[LoadedModel]:
    """Verify, load and warm the versions in config.repo that are not loaded yet; return those loaded.

    Each joins the registry once warm, so the newest version of the default model takes over
    between two requests. Versions refused before are skipped until their files change.
    """
    observers = {graph: metrics.graph(graph) for graph in SERVED_GRAPHS}
    loaded = []
    for name in _model_names(config.repo, registry.default_model):
        for version in sorted(list_versions(config.repo, name), reverse=True):
            path = config.repo / name / str(version)
            files = file_signature(path)  # before verifying: a change after it is seen next time
            current = registry.get(name, version)
            if current is not None:
                if watch.changed(path, current.manifest, files):
                    await _refuse_changed(registry, current, metrics)
                    watch.refuse(name, version, files)
                continue
            if watch.refused_as_is(name, version, files):
                continue
            try:
                model = await load_model(path, config, source, observers, tracer)
            except RepositoryError as exc:  # verification said why; no traceback needed
                log.error("model %s version %d refused: %s", name, version, exc)
            except Exception:  # a bad version must never stop the others from serving
                log.exception("model %s version %d failed to load", name, version)
            else:
                watch.loaded(model.manifest, files)
                registry.add(model)
                metrics.model_info.labels(name, str(version), model.provider).set(1)
                _publish_score_reference(model.manifest, metrics)
                loaded.append(model)
                if model is registry.default:
                    log.info("%s/%d now answers requests that name no version", name, version)
                continue
            metrics.model_load_failures.labels(name).inc()
            watch.refuse(name, version, files)
    return loaded


def _publish_score_reference(manifest: Manifest, metrics: Metrics) -> None:
    """The drift alert's baseline (deploy/prometheus/rules) from model.json, when the export recorded one."""
    reference = manifest.score_reference
    if reference is None:
        return
    for quantile, nats in reference["quantiles"].items():
        metrics.score_reference.labels(manifest.name, manifest.version, quantile, reference["k"]).set(nats)


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


def _model_names(repo: Path, default_model: str) -> Sequence[str]:
    """The default model first, so its versions are warm soonest; a missing one fails at once."""
    names = list_models(repo)
    if default_model not in names:
        raise RepositoryError(
            f"no model {default_model!r} in repository {repo} (models there: {', '.join(names) or 'none'}); "
            "pass --repo and --model"
        )
    return [default_model, *(n for n in names if n != default_model)]
