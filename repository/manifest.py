"""model.json: the schema of a version's manifest and its tensor names, reading and writing it.

Imports neither torch nor onnx; see docs/export.md for each field.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from repository.errors import ManifestError
from repository.manifest_fields import Fields, is_positive_int

FORMAT_VERSION = 1
MANIFEST_FILE = "model.json"
GRAPHS = ("encoder", "decoder")
BATCH_AXIS = "batch"
LIKELIHOODS = ("bernoulli", "gaussian")
# The graph contract's tensor names: encoder x -> (mu, logvar); decoder z -> probs (+ logits if Bernoulli).
IMAGES, MU, LOGVAR = "x", "mu", "logvar"
LATENTS, PROBS, LOGITS = "z", "probs", "logits"
# A conditional model's class index, int64 [batch], a second input of both graphs.
LABELS = "y"
LABEL_DTYPE = "int64"


def feeds(name: str, values: Any, labels: Any | None) -> dict[str, Any]:
    """A graph's inputs: `values` as input `name`, and a conditional model's labels as LABELS."""
    return {name: values} if labels is None else {name: values, LABELS: labels}


# A learned prior is exported as a mixture of diagonal Gaussians, whichever prior training learned.
PRIOR_KIND = "mixture"
PRIORS_TRAINED = ("mixture", "vamp")
# Names become directory names and Prometheus label values; keep them plain.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

Shape = tuple[int | str, ...]


@dataclass(frozen=True, kw_only=True)
class TensorInfo:
    """One graph input or output: name, element type and shape ("batch" for the dynamic axis)."""

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
class Manifest:
    """The contents of model.json (format_version 1); see docs/export.md for each field."""

    name: str
    version: int
    created: str  # ISO-8601, UTC
    latent_dim: int
    image_shape: tuple[int, int, int]
    likelihood: str
    opset: int
    pairing_id: str
    graphs: Mapping[str, GraphEntry]  # keys: exactly GRAPHS
    fp16: Mapping[str, Fp16Entry] | None
    parity_max_abs_diff: Mapping[str, float]  # keys: exactly GRAPHS
    parity_batch_sizes: tuple[int, ...]
    eval: Mapping[str, Any] | None
    training: Mapping[str, Any]
    # Score's log-likelihood over the test set at export: the baseline input drift is measured against.
    # Optional and not hashed, so versions exported before it stay valid.
    score_reference: Mapping[str, Any] | None = None
    # A conditional model's class names (label i is classes[i]); empty for an unconditional model,
    # whose model.json omits the field, so versions exported before it stay valid.
    classes: tuple[str, ...] = ()
    # A learned prior; None is N(0, I), and model.json omits the field, so earlier versions stay valid.
    prior: PriorEntry | None = None

    @property
    def conditional(self) -> bool:
        return bool(self.classes)

    def files(self) -> dict[str, str]:
        """Every file the manifest covers (graphs and prior), mapped to its expected sha256."""
        entries: list[GraphEntry | Fp16Entry | PriorEntry] = [self.graphs[g] for g in GRAPHS]
        if self.fp16 is not None:
            entries += [self.fp16[g] for g in GRAPHS]
        if self.prior is not None:
            entries.append(self.prior)
        return {entry.file: entry.sha256 for entry in entries}

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "latent_dim": self.latent_dim,
            "image_shape": list(self.image_shape),
            "likelihood": self.likelihood,
            "opset": self.opset,
            "pairing_id": self.pairing_id,
            "graphs": {g: self.graphs[g].to_json() for g in GRAPHS},
            "fp16": None if self.fp16 is None else {g: self.fp16[g].to_json() for g in GRAPHS},
            "parity": {
                **{g: {"max_abs_diff": self.parity_max_abs_diff[g]} for g in GRAPHS},
                "batch_sizes": list(self.parity_batch_sizes),
            },
            "eval": None if self.eval is None else dict(self.eval),
            "training": dict(self.training),
            **({} if self.score_reference is None else {"score_reference": dict(self.score_reference)}),
            **({"classes": list(self.classes)} if self.classes else {}),
            **({} if self.prior is None else {"prior": self.prior.to_json()}),
        }


# --- files ---------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_manifest(version_dir: Path, manifest: Manifest) -> Path:
    path = version_dir / MANIFEST_FILE
    path.write_text(json.dumps(manifest.to_json(), indent=2) + "\n", encoding="utf-8")
    return path


def read_manifest(version_dir: Path) -> Manifest:
    """Read and validate version_dir/model.json; raises ManifestError naming the file and the field."""
    path = version_dir / MANIFEST_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{path}: missing; every version directory needs a model.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: not readable JSON ({exc})") from exc
    return parse_manifest(data, source=str(path))


def parse_manifest(data: Any, *, source: str = MANIFEST_FILE) -> Manifest:
    """Validate decoded model.json data; `source` names the file in error messages."""
    root = Fields(data, source, "")
    if root.get("format_version", int) != FORMAT_VERSION:
        raise ManifestError(
            f"{source}: format_version is {data['format_version']!r}; this build reads {FORMAT_VERSION}"
        )
    name = root.get("name", str)
    if not NAME_PATTERN.fullmatch(name):
        raise ManifestError(f"{source}: name {name!r} is not a valid model name")
    created = root.get("created", str)
    try:
        datetime.fromisoformat(created)
    except ValueError:
        raise ManifestError(f"{source}: created {created!r} is not an ISO-8601 time") from None
    likelihood = root.get("likelihood", str)
    if likelihood not in LIKELIHOODS:
        raise ManifestError(f"{source}: likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    image_shape = root.get("image_shape", list)
    if len(image_shape) != 3 or not all(is_positive_int(v) for v in image_shape):
        raise ManifestError(f"{source}: image_shape must be [C, H, W] positive integers, got {image_shape}")

    graphs = root.child("graphs")
    fp16 = None if data.get("fp16") is None else root.child("fp16")
    parity = root.child("parity")
    evaluation = data.get("eval")
    if evaluation is not None and not isinstance(evaluation, dict):
        raise ManifestError(f"{source}: eval must be an object or null")
    return Manifest(
        name=name,
        version=root.positive_int("version"),
        created=created,
        latent_dim=root.positive_int("latent_dim"),
        image_shape=(image_shape[0], image_shape[1], image_shape[2]),
        likelihood=likelihood,
        opset=root.positive_int("opset"),
        pairing_id=root.get("pairing_id", str),
        graphs={g: _graph_entry(graphs.child(g)) for g in GRAPHS},
        fp16=None if fp16 is None else {g: _fp16_entry(fp16.child(g)) for g in GRAPHS},
        parity_max_abs_diff={g: parity.child(g).number("max_abs_diff") for g in GRAPHS},
        parity_batch_sizes=tuple(parity.positive_int_list("batch_sizes")),
        eval=evaluation,
        training=root.get("training", dict),
        score_reference=None if data.get("score_reference") is None else _score_reference(root),
        classes=_classes(root) if "classes" in data else (),
        prior=_prior_entry(root.child("prior")) if "prior" in data else None,
    )


def _classes(root: Fields) -> tuple[str, ...]:
    names = root.get("classes", list)
    if len(names) < 2 or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise ManifestError(
            f"{root.source}: field 'classes' must list at least two distinct, non-empty names, got {names}"
        )
    return tuple(names)


def _prior_entry(fields: Fields) -> PriorEntry:
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


def _score_reference(root: Fields) -> Mapping[str, Any]:
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
        if not all(is_positive_int(d) or d == BATCH_AXIS for d in shape):
            raise ManifestError(
                f"{fields.source}: field {tensor.path('shape')!r} must hold positive integers "
                f"and {BATCH_AXIS!r}, got {shape}"
            )
        result.append(
            TensorInfo(name=tensor.get("name", str), dtype=tensor.get("dtype", str), shape=tuple(shape))
        )
    return tuple(result)


def _graph_entry(fields: Fields) -> GraphEntry:
    return GraphEntry(
        file=_file_name(fields),
        sha256=_sha256_field(fields),
        inputs=_tensors(fields, "inputs"),
        outputs=_tensors(fields, "outputs"),
    )


def _fp16_entry(fields: Fields) -> Fp16Entry:
    return Fp16Entry(
        file=_file_name(fields), sha256=_sha256_field(fields), max_abs_diff=fields.number("max_abs_diff")
    )


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
