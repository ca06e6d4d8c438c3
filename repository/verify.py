"""`vae verify`: check a repository version against its model.json with onnxruntime alone.

Imports neither torch nor onnx, so the service runs the same checks before it loads a version.
On a device (`vae verify --device cuda`), the float32 graphs also run there and must match the CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from repository.comparison import (
    DEVICE_TOLERANCE,
    FP16_TOLERANCE,
    TF32_TOLERANCE,
    fp16_differences,
    graph_differences,
    probe_labels,
    probe_latents,
    probe_size,
)
from repository.contract import (
    Contract,
    describe_model,
    flow_contract,
    flow_graph_name,
    manifest_contract,
    manifest_metadata,
)
from repository.errors import ManifestError, VerificationError
from repository.flow_checks import flow_problems
from repository.manifest import (
    FLOW_GRAPHS,
    GraphEntry,
    Manifest,
    PriorFlowEntry,
    TensorInfo,
    file_sha256,
    read_manifest,
)
from repository.placement import CPU, ON_CPU, Placement
from repository.prior import PriorError, load_base_prior
from repository.roundtrip import round_trip_problems, sizes_note
from repository.runtime import Graph, TensorSpec
from repository.tensor_names import GRAPHS, LABELS, LATENTS

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


def verify_version(path: Path, *, intra_op_threads: int = 1, placement: Placement = ON_CPU) -> VerifyReport:
    """Every check of docs/export.md on one version directory; never raises for a bad version.

    A `placement` off the CPU adds the check `device`: the float32 graphs there against the CPU's.
    """
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
    for name in dict.fromkeys(file for _, file, _ in variants):
        try:
            graphs[name] = Graph(path / name, intra_op_threads=intra_op_threads)
        except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
            load_problems.append(f"{name} does not load in onnxruntime: {exc}")
    if not check("load", load_problems, f"{len(graphs)} graphs load in onnxruntime"):
        return VerifyReport(path, manifest, tuple(checks))

    spec_problems = [p for _, file, entry in variants for p in _spec_problems(graphs[file], file, entry)]
    check("shapes", spec_problems, "graph inputs and outputs match model.json")
    pairing_problems = [
        p for graph, file, _ in variants for p in _metadata_problems(graphs[file], file, manifest, graph)
    ]
    check("pairing", pairing_problems, f"all graphs carry pairing id {manifest.pairing_id}")
    if spec_problems:
        return VerifyReport(path, manifest, tuple(checks))  # running mis-shaped graphs proves nothing

    encoder, decoder = (graphs[manifest.graphs[g].file] for g in GRAPHS)
    problems = _guarded(lambda: round_trip_problems(encoder, decoder, manifest, VERIFY_BATCH))
    check("end-to-end", problems, f"a batch of {VERIFY_BATCH} round-trips{sizes_note(manifest)}")
    if manifest.conditional:
        problems = _guarded(lambda: _conditioning_problems(decoder, manifest))
        check("classes", problems, f"each of the {len(manifest.classes)} classes decodes; labels matter")
    if manifest.fp16 is not None:
        problems = _guarded(lambda: _fp16_problems(graphs, manifest))
        check("fp16", problems, f"half-precision graphs within {FP16_TOLERANCE} of float32")
    if manifest.prior_flow is not None:
        checks.append(_flow_check(path, manifest, manifest.prior_flow, graphs))
    if placement.provider != CPU:
        checks.append(_device_check(path, manifest, graphs, placement))
    return VerifyReport(path, manifest, tuple(checks))


def _device_check(path: Path, manifest: Manifest, cpu: Mapping[str, Graph], placement: Placement) -> Check:
    """The check batch through the float32 graphs on `placement` and on the CPU; the figures either way."""
    tolerance = TF32_TOLERANCE if placement.tf32 else DEVICE_TOLERANCE
    found: list[str] = []
    problems: list[str] = []
    # fp16 copies name their float32 graph's entry: the device runs the float32 graphs and the flow's.
    float32 = [(role, file) for role, file, entry in _variants(manifest) if file == entry.file]
    try:
        for role, file in float32:
            graph = Graph(path / file, placement=placement)
            if graph.provider != placement.provider:  # onnxruntime fell back: nothing to compare
                problems.append(f"{file} runs on {graph.provider}, not {placement.provider} (docs/gpu.md)")
                continue
            differences = graph_differences(cpu[file], graph, manifest, role, tolerance, batch=VERIFY_BATCH)
            found.append(
                f"{graph.describe()}: " + ", ".join(f"{d.output} {d.max_abs_diff:.1e}" for d in differences)
            )
            problems += [f"{file} {d.output!r} {d.describe('the CPU')}" for d in differences if not d.ok]
    except Exception as exc:  # onnxruntime raises its own exception types
        problems.append(f"onnxruntime failed on {placement.provider}: {exc}")
    precision = "TF32" if placement.tf32 else "exact float32"
    summary = f"max abs difference from the CPU (allowed {tolerance:g}, {precision}): {'; '.join(found)}"
    return Check("device", not problems, "; ".join(problems + ([summary] if found else [])))


def _prior_problems(path: Path, manifest: Manifest) -> list[str]:
    try:
        load_base_prior(path, manifest)
    except PriorError as exc:
        return [str(exc)]
    return []


def _flow_check(path: Path, manifest: Manifest, flow: PriorFlowEntry, graphs: Mapping[str, Graph]) -> Check:
    """The prior flow's graphs invert each other and give the Jacobian's log-determinant."""
    density, sampler = (graphs[flow.graphs[g].file] for g in FLOW_GRAPHS)
    try:
        problems, figures = flow_problems(density, sampler, load_base_prior(path, manifest))
    except PriorError as exc:  # the prior check has said why
        return Check("prior-flow", False, f"no base prior to check the flow on: {exc}")
    except Exception as exc:  # onnxruntime raises its own exception types at run time
        return Check("prior-flow", False, f"onnxruntime failed while running the flow: {exc}")
    return Check("prior-flow", not problems, "; ".join(problems) or f"{flow.layers} layers: {figures}")


def _guarded(find_problems: Callable[[], list[str]]) -> list[str]:
    """Report a graph that fails while running as a problem, so verify_version never raises for it."""
    try:
        return find_problems()
    except Exception as exc:  # onnxruntime raises its own exception types at run time
        return [f"onnxruntime failed while running the graphs: {exc}"]


def _variants(manifest: Manifest) -> list[tuple[str, str, GraphEntry]]:
    """(graph name, file, the entry declaring its tensors) for every graph file.

    The float32 encoder and decoder, their float16 copies if present (same tensors), a prior flow's.
    """
    files = [(role, manifest.graphs[role].file, manifest.graphs[role]) for role in GRAPHS]
    if manifest.fp16 is not None:
        files += [(role, manifest.fp16[role].file, manifest.graphs[role]) for role in GRAPHS]
    if manifest.prior_flow is not None:
        flow = manifest.prior_flow.graphs
        files += [(flow_graph_name(role), flow[role].file, flow[role]) for role in FLOW_GRAPHS]
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
    problems = _entry_problems(manifest_contract(manifest), manifest.graphs, describe_model(manifest))
    if manifest.prior_flow is not None:
        if manifest.is_spatial:
            return [*problems, "a prior flow needs flat latents; this model's are spatial"]
        flows = {flow_graph_name(role): entry for role, entry in manifest.prior_flow.graphs.items()}
        contract = {
            flow_graph_name(role): tensors for role, tensors in flow_contract(manifest.latent_dim).items()
        }
        problems += _entry_problems(contract, flows, f"latent_dim {manifest.latent_dim}")
    return problems


def _entry_problems(contract: Contract, entries: Mapping[str, GraphEntry], because: str) -> list[str]:
    problems = []
    for role, (inputs, outputs) in contract.items():
        entry = entries[role]
        for kind, declared, expected in (
            ("inputs", entry.inputs, inputs),
            ("outputs", entry.outputs, outputs),
        ):
            if declared != expected:
                problems.append(
                    f"model.json {role} {kind} are {_show(declared)} but {because} require {_show(expected)}"
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


def _spec_problems(graph: Graph, file: str, entry: GraphEntry) -> list[str]:
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
    expected = manifest_metadata(manifest, role)
    problems = []
    for key, value in expected.items():
        found = graph.metadata.get(key)
        if found != value:
            what = "pairing id" if key == "vae.pairing_id" else f"metadata {key}"
            problems.append(f"{file} {what} is {found!r} but model.json says {value!r}")
    return problems


def _conditioning_problems(decoder: Graph, manifest: Manifest) -> list[str]:
    """One latent decoded under every class: each must run, and the label must change the picture."""
    classes = len(manifest.classes)
    z = np.repeat(probe_latents(manifest.latent_shape(probe_size(manifest)), 1), classes, axis=0)
    output = manifest.image_output
    probs = decoder.run({LATENTS: z, LABELS: probe_labels(classes, classes)}, (output,))[output]
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
