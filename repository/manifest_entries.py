"""model.json's file entries: graphs with their tensors, fp16 copies, a learned prior and a flow on it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repository.errors import ManifestError
from repository.manifest_fields import Fields, is_positive_int
from repository.model_spec import AXES

# A learned prior is exported as a mixture of diagonal Gaussians, whichever prior training learned.
PRIOR_KIND = "mixture"
PRIORS_TRAINED = ("mixture", "vamp")
# A flow on the prior is two graphs: density z -> (u, log_det) and its inverse, sampler u -> z.
FLOW_GRAPHS = ("density", "sampler")

Shape = tuple[int | str, ...]


@dataclass(frozen=True, kw_only=True)
class TensorInfo:
    """One graph input or output: name, element type and shape (named axes, e.g. "batch", are dynamic)."""

    name: str
    dtype: str
    shape: Shape

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True, kw_only=True)
class GraphEntry:
    """One float32 graph file of a version, its hash and its interface."""

    file: str
    sha256: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "sha256": self.sha256,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
        }


@dataclass(frozen=True, kw_only=True)
class Fp16Entry:
    """A half-precision copy of a graph (float32 inputs and outputs) and how far it is from float32."""

    file: str
    sha256: str
    max_abs_diff: float

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "max_abs_diff": self.max_abs_diff}


@dataclass(frozen=True, kw_only=True)
class PriorEntry:
    """A learned prior, exported as a mixture of diagonal Gaussians in one hashed file (repository/prior.py).

    trained_as: what training learned ("mixture" or "vamp"); kind: what the file holds, always "mixture".
    """

    kind: str
    trained_as: str
    components: int
    file: str
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "trained_as": self.trained_as,
            "components": self.components,
            "file": self.file,
            "sha256": self.sha256,
        }


@dataclass(frozen=True, kw_only=True)
class PriorFlowEntry:
    """A normalizing flow on the prior (format 3; repository/prior.py's FlowPrior).

    u = f(z) maps a latent into the base prior's space (model.json's `prior`; N(0, I) without one), so
    log p(z) = log p_base(f(z)) + log|det f'(z)|, and a sample is f^-1(u) of a base draw u.
    layers: coupling layers (training/flows.py); parity_max_abs_diff: each graph against PyTorch.
    """

    layers: int
    graphs: Mapping[str, GraphEntry]  # keys: exactly FLOW_GRAPHS
    parity_max_abs_diff: Mapping[str, float]  # keys: exactly FLOW_GRAPHS

    def to_json(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "graphs": {g: self.graphs[g].to_json() for g in FLOW_GRAPHS},
            "parity": {g: {"max_abs_diff": self.parity_max_abs_diff[g]} for g in FLOW_GRAPHS},
        }


def prior_flow_entry(fields: Fields) -> PriorFlowEntry:
    graphs, parity = fields.child("graphs"), fields.child("parity")
    return PriorFlowEntry(
        layers=fields.positive_int("layers"),
        graphs={g: graph_entry(graphs.child(g)) for g in FLOW_GRAPHS},
        parity_max_abs_diff={g: parity.child(g).number("max_abs_diff") for g in FLOW_GRAPHS},
    )


def graph_entry(fields: Fields) -> GraphEntry:
    return GraphEntry(
        file=_file_name(fields),
        sha256=_sha256_field(fields),
        inputs=_tensors(fields, "inputs"),
        outputs=_tensors(fields, "outputs"),
    )


def fp16_entry(fields: Fields) -> Fp16Entry:
    return Fp16Entry(
        file=_file_name(fields), sha256=_sha256_field(fields), max_abs_diff=fields.number("max_abs_diff")
    )


def prior_entry(fields: Fields) -> PriorEntry:
    kind, trained_as = fields.get("kind", str), fields.get("trained_as", str)
    if kind != PRIOR_KIND or trained_as not in PRIORS_TRAINED:
        raise ManifestError(
            f"{fields.source}: prior must have kind {PRIOR_KIND!r} and trained_as one of {PRIORS_TRAINED}, "
            f"got {kind!r} and {trained_as!r}"
        )
    return PriorEntry(
        kind=kind,
        trained_as=trained_as,
        components=fields.positive_int("components"),
        file=_file_name(fields),
        sha256=_sha256_field(fields),
    )


def classes(root: Fields) -> tuple[str, ...]:
    names = root.get("classes", list)
    if len(names) < 2 or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise ManifestError(
            f"{root.source}: field 'classes' must list at least two distinct, non-empty names, got {names}"
        )
    return tuple(names)


def score_reference(root: Fields) -> dict[str, Any]:
    fields = root.child("score_reference")
    fields.positive_int("k")
    fields.number("median")
    quantiles = fields.child("quantiles")
    for key in quantiles.data:
        quantiles.number(key)
    return fields.data


def _tensors(fields: Fields, key: str) -> tuple[TensorInfo, ...]:
    result = []
    for i, item in enumerate(fields.get(key, list)):
        tensor = Fields(item, fields.source, f"{fields.path(key)}[{i}]")
        shape = tensor.get("shape", list)
        if not all(is_positive_int(d) or d in AXES for d in shape):
            raise ManifestError(
                f"{fields.source}: field {tensor.path('shape')!r} must hold positive integers "
                f"and the axis names {list(AXES)}, got {shape}"
            )
        result.append(
            TensorInfo(name=tensor.get("name", str), dtype=tensor.get("dtype", str), shape=tuple(shape))
        )
    return tuple(result)


def _file_name(fields: Fields) -> str:
    name: str = fields.get("file", str)
    # A manifest must not point outside its own version directory.
    if Path(name).name != name or name in ("", ".", ".."):
        raise ManifestError(
            f"{fields.source}: {fields.path('file')!r} must be a plain file name, got {name!r}"
        )
    return name


def _sha256_field(fields: Fields) -> str:
    value: str = fields.get("sha256", str)
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ManifestError(f"{fields.source}: {fields.path('sha256')!r} is not a sha256 hex digest")
    return value
