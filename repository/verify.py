"""`vae verify`: check a repository version against its model.json with onnxruntime alone.

Imports neither torch nor onnx, so the service runs the same checks before it loads a version.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from repository.comparison import (
    FP16_TOLERANCE,
    fp16_differences,
    label_feeds,
    probe_images,
    probe_labels,
    probe_latents,
)
from repository.contract import graph_contract, graph_metadata
from repository.errors import ManifestError, VerificationError
from repository.manifest import (
    GRAPHS,
    IMAGES,
    LABELS,
    LATENTS,
    LOGITS,
    LOGVAR,
    MU,
    PROBS,
    Manifest,
    TensorInfo,
    file_sha256,
    read_manifest,
)
from repository.prior import PriorError, load_prior
from repository.runtime import Graph, TensorSpec

VERIFY_BATCH = 8
_ORT_DTYPES = {"float": "float32", "double": "float64"}  # onnxruntime's names -> numpy's


@dataclass(frozen=True)
class Check:
    """One named check of a version, and what it found (the problems, or what passed)."""

    name: str
    passed: bool
    message: str


@dataclass(frozen=True)
class VerifyReport:
    """Every check run on one version directory, in order.

    Later checks are skipped when an earlier failure makes them meaningless: no manifest, a file
    whose hash is wrong (never run what we cannot vouch for), mis-shaped graphs.
    """

    path: Path
    manifest: Manifest | None
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.passed]

    def raise_for_failures(self) -> None:
        if not self.ok:
            lines = "; ".join(f"{c.name}: {c.message}" for c in self.failures)
            raise VerificationError(f"{self.path} failed verification: {lines}")


def verify_version(path: Path, *, intra_op_threads: int = 1) -> VerifyReport:
    """Every check of docs/export.md on one version directory; never raises for a bad version."""
    checks: list[Check] = []

    def check(name: str, problems: list[str], ok_message: str) -> bool:
        checks.append(Check(name, not problems, "; ".join(problems) or ok_message))
        return not problems

    try:
        manifest = read_manifest(path)
    except ManifestError as exc:
        return VerifyReport(path, None, (Check("manifest", False, str(exc)),))
    check("manifest", _location_problems(path, manifest), f"{manifest.name} version {manifest.version}")
    check("contract", _contract_problems(manifest), "inputs and outputs follow the graph contract")
    hashes_ok = check(
        "hashes", _hash_problems(path, manifest), f"sha256 of {len(manifest.files())} files match"
    )
    if not hashes_ok:
        return VerifyReport(path, manifest, tuple(checks))  # never run files we cannot vouch for

    if manifest.prior is not None:
        check("prior", _prior_problems(path, manifest), f"a mixture of {manifest.prior.components} Gaussians")

    variants = _variants(manifest)
    graphs: dict[str, Graph] = {}
    load_problems = []
    for name in dict.fromkeys(file for _, file in variants):
        try:
            graphs[name] = Graph(path / name, intra_op_threads=intra_op_threads)
        except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
            load_problems.append(f"{name} does not load in onnxruntime: {exc}")
    if not check("load", load_problems, f"{len(graphs)} graphs load in onnxruntime"):
        return VerifyReport(path, manifest, tuple(checks))

    spec_problems = [p for role, file in variants for p in _spec_problems(graphs[file], file, manifest, role)]
    check("shapes", spec_problems, "graph inputs and outputs match model.json")
    pairing_problems = [
        p for role, file in variants for p in _metadata_problems(graphs[file], file, manifest, role)
    ]
    check("pairing", pairing_problems, f"all graphs carry pairing id {manifest.pairing_id}")
    if spec_problems:
        return VerifyReport(path, manifest, tuple(checks))  # running mis-shaped graphs proves nothing

    encoder, decoder = (graphs[manifest.graphs[g].file] for g in GRAPHS)
    problems = _guarded(lambda: _end_to_end_problems(encoder, decoder, manifest))
    check("end-to-end", problems, f"a batch of {VERIFY_BATCH} round-trips")
    if manifest.conditional:
        problems = _guarded(lambda: _conditioning_problems(decoder, manifest))
        check("classes", problems, f"each of the {len(manifest.classes)} classes decodes; labels matter")
    if manifest.fp16 is not None:
        problems = _guarded(lambda: _fp16_problems(graphs, manifest))
        check("fp16", problems, f"half-precision graphs within {FP16_TOLERANCE} of float32")
    return VerifyReport(path, manifest, tuple(checks))


def _prior_problems(path: Path, manifest: Manifest) -> list[str]:
    try:
        load_prior(path, manifest)
    except PriorError as exc:
        return [str(exc)]
    return []


def _guarded(find_problems: Callable[[], list[str]]) -> list[str]:
    """Report a graph that fails while running as a problem, so verify_version never raises for it."""
    try:
        return find_problems()
    except Exception as exc:  # onnxruntime raises its own exception types at run time
        return [f"onnxruntime failed while running the graphs: {exc}"]


def _variants(manifest: Manifest) -> list[tuple[str, str]]:
    """(role, file) for every graph file: float32 and, if present, float16."""
    files = [(role, manifest.graphs[role].file) for role in GRAPHS]
    if manifest.fp16 is not None:
        files += [(role, manifest.fp16[role].file) for role in GRAPHS]
    return files


def _location_problems(path: Path, manifest: Manifest) -> list[str]:
    # The service names a version by its directory; model.json and the metadata must agree with it.
    problems = []
    resolved = path.resolve()
    if resolved.name != str(manifest.version):
        problems.append(f"directory {resolved.name!r} but model.json says version {manifest.version}")
    if resolved.parent.name != manifest.name:
        problems.append(f"model directory {resolved.parent.name!r} but model.json says {manifest.name!r}")
    return problems


def _contract_problems(manifest: Manifest) -> list[str]:
    problems = []
    contract = graph_contract(
        manifest.latent_dim, manifest.image_shape, manifest.likelihood, conditional=manifest.conditional
    )
    conditioning = f"{len(manifest.classes)} classes" if manifest.conditional else "no classes"
    for role, (inputs, outputs) in contract.items():
        entry = manifest.graphs[role]
        for kind, declared, expected in (
            ("inputs", entry.inputs, inputs),
            ("outputs", entry.outputs, outputs),
        ):
            if declared != expected:
                problems.append(
                    f"model.json {role} {kind} are {_show(declared)} but latent_dim {manifest.latent_dim}, "
                    f"image_shape {list(manifest.image_shape)}, likelihood {manifest.likelihood!r} and "
                    f"{conditioning} require {_show(expected)}"
                )
    return problems


def _hash_problems(path: Path, manifest: Manifest) -> list[str]:
    problems = []
    for name, expected in manifest.files().items():
        file = path / name
        if not file.is_file():
            problems.append(f"{name} is missing")
            continue
        try:
            actual = file_sha256(file)
        except OSError as exc:
            problems.append(f"{name} is not readable: {exc}")
            continue
        if actual != expected:
            problems.append(
                f"{name} sha256 is {actual[:12]}… but model.json says {expected[:12]}… (file changed)"
            )
    return problems


def _spec_problems(graph: Graph, file: str, manifest: Manifest, role: str) -> list[str]:
    entry = manifest.graphs[role]
    problems = []
    for kind, declared, actual in (
        ("inputs", entry.inputs, graph.inputs),
        ("outputs", entry.outputs, graph.outputs),
    ):
        found = tuple(_tensor_info(spec) for spec in actual)
        if found != declared:
            problems.append(f"{file} {kind} are {_show(found)} but model.json says {_show(declared)}")
    return problems


def _metadata_problems(graph: Graph, file: str, manifest: Manifest, role: str) -> list[str]:
    expected = graph_metadata(
        name=manifest.name,
        version=manifest.version,
        latent_dim=manifest.latent_dim,
        image_shape=manifest.image_shape,
        likelihood=manifest.likelihood,
        pairing_id=manifest.pairing_id,
        graph=role,
        classes=manifest.classes,
    )
    problems = []
    for key, value in expected.items():
        found = graph.metadata.get(key)
        if found != value:
            what = "pairing id" if key == "vae.pairing_id" else f"metadata {key}"
            problems.append(f"{file} {what} is {found!r} but model.json says {value!r}")
    return problems


def _end_to_end_problems(encoder: Graph, decoder: Graph, manifest: Manifest) -> list[str]:
    batch, latent = VERIFY_BATCH, manifest.latent_dim
    image = (batch, *manifest.image_shape)
    labels = label_feeds(manifest, batch)
    encoded = encoder.run({IMAGES: probe_images(manifest.image_shape, batch), **labels})
    decoded = decoder.run({LATENTS: encoded[MU], **labels})
    expectations: list[tuple[str, np.ndarray, tuple[int, ...], Callable[[np.ndarray], bool], str]] = [
        (MU, encoded[MU], (batch, latent), _finite, "finite"),
        (LOGVAR, encoded[LOGVAR], (batch, latent), _finite, "finite"),
        (PROBS, decoded[PROBS], image, lambda a: bool(((a >= 0) & (a <= 1)).all()), "in [0, 1]"),
    ]
    if LOGITS in decoded:
        expectations.append((LOGITS, decoded[LOGITS], image, _finite, "finite"))
    problems = []
    for name, array, shape, ok, wanted in expectations:
        if array.shape != shape:
            problems.append(f"{name} has shape {list(array.shape)}, expected {list(shape)}")
        elif array.dtype != np.float32:
            problems.append(f"{name} is {array.dtype}, expected float32")
        elif not ok(array):
            problems.append(f"{name} is not {wanted}")
    return problems


def _conditioning_problems(decoder: Graph, manifest: Manifest) -> list[str]:
    """One latent decoded under every class: each must run, and the label must change the picture."""
    classes = len(manifest.classes)
    z = np.repeat(probe_latents(manifest.latent_dim, 1), classes, axis=0)
    probs = decoder.run({LATENTS: z, LABELS: probe_labels(classes, classes)}, (PROBS,))[PROBS]
    if not _finite(probs):
        return ["decoding under some class gives NaN or Inf"]
    if np.array_equal(probs.min(axis=0), probs.max(axis=0)):
        return [f"the decoder gives the same picture for all {classes} classes: it ignores {LABELS!r}"]
    return []


def _fp16_problems(graphs: Mapping[str, Graph], manifest: Manifest) -> list[str]:
    if manifest.fp16 is None:
        return []
    problems = []
    for role in GRAPHS:
        fp32_file, fp16_file = manifest.graphs[role].file, manifest.fp16[role].file
        for d in fp16_differences(graphs[fp32_file], graphs[fp16_file], manifest, role):
            if not d.ok:
                problems.append(f"{fp16_file} output {d.output!r} {d.describe('float32')}")
    return problems


def _finite(array: np.ndarray) -> bool:
    return bool(np.isfinite(array).all())


def _tensor_info(spec: TensorSpec) -> TensorInfo:
    return TensorInfo(name=spec.name, dtype=_ORT_DTYPES.get(spec.dtype, spec.dtype), shape=spec.shape)


def _show(tensors: tuple[TensorInfo, ...]) -> str:
    return ", ".join(f"{t.name} {t.dtype}{list(t.shape)}" for t in tensors)
