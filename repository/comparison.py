"""How far a graph's outputs are from a reference's: probe inputs, per-output differences, bounds.

Export compares its graphs with PyTorch this way, and verify the fp16 copies with float32 and a
device's graphs with the CPU's.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np

from repository.contract import flow_graph_name
from repository.manifest import Manifest
from repository.runtime import Graph
from repository.tensor_names import BASE_LATENTS, IMAGES, LABELS, LATENTS, LOG_DET, LOGITS

# Half precision keeps ~3 significant digits and overflows past 65504. The bound is 1% of an
# output's scale (at least 0.01 absolute, about 2.5 grey levels of an 8-bit pixel): rounding noise
# stays well inside it, a layer that lost its precision or overflowed does not.
FP16_TOLERANCE = 1e-2
# A device in exact float32 differs from the CPU only by the order of its sums: ~1e-6 on an H200
# (issue 29); 1e-4 leaves room for other devices and still catches a wrong kernel.
DEVICE_TOLERANCE = 1e-4
# TF32 keeps float16's 10-bit mantissa (and float32's range): float16's bound applies. It measured
# 1.2-1.9e-3 from the CPU on an H200.
TF32_TOLERANCE = FP16_TOLERANCE
# Logits of saturated pixels reach magnitudes of 20 or more, where float32 itself resolves only
# ~2e-6, and a prior flow's log_det is a sum over the latent's dimensions, so they are compared
# relative to their scale and left out of the recorded max_abs_diff, which covers mu, logvar, probs
# and the flow's points: the outputs the parity rule of the issue bounds absolutely.
SCALED_OUTPUTS = frozenset({LOGITS, LOG_DET})


@dataclass(frozen=True)
class Difference:
    """How far one output of a candidate is from its reference."""

    output: str
    max_abs_diff: float
    allowed: float
    finite: bool

    @property
    def ok(self) -> bool:
        return self.finite and self.max_abs_diff <= self.allowed

    def describe(self, against: str) -> str:
        if not self.finite:
            return "has NaN or Inf values"
        return f"differs from {against} by {self.max_abs_diff:.3g} (allowed {self.allowed:.3g})"


def compare_outputs(
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    tolerance: float,
    *,
    scaled: Collection[str] = SCALED_OUTPUTS,
) -> list[Difference]:
    """Per output: max |candidate - reference| against tolerance, times max(1, |reference|) if scaled."""
    differences = []
    for name, expected in reference.items():
        actual = candidate[name]
        finite = bool(np.isfinite(actual).all())
        diff = float(np.abs(actual.astype(np.float64) - expected).max()) if finite else float("inf")
        scale = max(1.0, float(np.abs(expected).max())) if name in scaled else 1.0
        differences.append(Difference(name, diff, tolerance * scale, finite))
    return differences


def recorded_difference(differences: Collection[Difference]) -> float:
    """The max_abs_diff model.json records for a graph: over its outputs that are not scaled."""
    return max(d.max_abs_diff for d in differences if d.output not in SCALED_OUTPUTS)


def probe_images(
    image_shape: tuple[int, int, int],
    batch: int,
    seed: int = 0,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """Deterministic encoder inputs, uniform in value_range."""
    low, high = value_range
    uniform = np.random.default_rng(seed).random((batch, *image_shape), dtype=np.float32)
    return (low + (high - low) * uniform).astype(np.float32)  # exactly `uniform` for [0, 1]


def probe_latents(latent_shape: int | tuple[int, ...], batch: int, seed: int = 0) -> np.ndarray:
    """Deterministic decoder inputs drawn from N(0, I): [batch, D] or [batch, *latent_shape]."""
    shape = (latent_shape,) if isinstance(latent_shape, int) else latent_shape
    return np.random.default_rng(seed).standard_normal((batch, *shape), dtype=np.float32)


def probe_size(manifest: Manifest) -> tuple[int, int]:
    """The image size (H, W) checks run at: the fixed one, or a small non-square one the model takes."""
    if manifest.image.size is not None:
        return manifest.image.size
    # Not square, so that swapped height and width axes show; small, so that checks stay fast.
    return 4 * manifest.divisibility, 3 * manifest.divisibility


def probe_labels(classes: int, batch: int) -> np.ndarray:
    """Class indices 0, 1, ... cycling through every class: a conditional graph's second input."""
    return np.arange(batch, dtype=np.int64) % classes


def label_feeds(manifest: Manifest, batch: int) -> dict[str, np.ndarray]:
    """The labels input a conditional model's graphs take (none for an unconditional one)."""
    return {LABELS: probe_labels(len(manifest.classes), batch)} if manifest.conditional else {}


def fp16_differences(
    fp32: Graph, fp16: Graph, manifest: Manifest, role: str, batch: int = 64
) -> list[Difference]:
    """Run both precisions of one graph on the same probe batch and compare every output."""
    return graph_differences(fp32, fp16, manifest, role, FP16_TOLERANCE, batch=batch, scale_all=True)


def graph_differences(
    reference: Graph,
    candidate: Graph,
    manifest: Manifest,
    role: str,
    tolerance: float,
    *,
    batch: int,
    scale_all: bool = False,
) -> list[Difference]:
    """Both graphs of one role on one probe batch, every output compared (scale_all: each to its scale)."""
    feeds = _probe_feeds(manifest, role, batch)
    expected = reference.run(feeds)
    scaled = expected.keys() if scale_all else SCALED_OUTPUTS
    return compare_outputs(expected, candidate.run(feeds), tolerance, scaled=scaled)


def _probe_feeds(manifest: Manifest, role: str, batch: int) -> dict[str, np.ndarray]:
    """Probe inputs of graph `role`: encoder, decoder, or a prior flow's (contract.flow_graph_name)."""
    if role in (flow_graph_name("density"), flow_graph_name("sampler")):
        name = LATENTS if role == flow_graph_name("density") else BASE_LATENTS
        return {name: probe_latents(manifest.latent_dim, batch)}
    size = probe_size(manifest)
    if role == "encoder":
        images = probe_images((manifest.image.channels, *size), batch, value_range=manifest.value_range)
        return {IMAGES: images, **label_feeds(manifest, batch)}
    return {LATENTS: probe_latents(manifest.latent_shape(size), batch), **label_feeds(manifest, batch)}
