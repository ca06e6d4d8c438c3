"""model.json: the schema of a version's manifest and its tensor names, reading and writing it.

Reads format_version 1, 2 and 3 and writes the lowest that expresses a manifest, so that a repository
of models that format 1 can describe stays readable by older servers. Format 3 adds a flow on the
prior, which an older server must refuse rather than sample and score without it. Imports neither
torch nor onnx; see docs/export.md for each field.
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

# Re-exported (`as`): callers name the entries and the axes through this module, as before the split.
from repository.manifest_entries import FLOW_GRAPHS as FLOW_GRAPHS
from repository.manifest_entries import PRIOR_KIND as PRIOR_KIND
from repository.manifest_entries import PRIORS_TRAINED as PRIORS_TRAINED
from repository.manifest_entries import Fp16Entry as Fp16Entry
from repository.manifest_entries import GraphEntry as GraphEntry
from repository.manifest_entries import PriorEntry as PriorEntry
from repository.manifest_entries import PriorFlowEntry as PriorFlowEntry
from repository.manifest_entries import Shape as Shape
from repository.manifest_entries import TensorInfo as TensorInfo
from repository.manifest_entries import (
    classes,
    fp16_entry,
    graph_entry,
    prior_entry,
    prior_flow_entry,
    score_reference,
)
from repository.manifest_fields import Fields
from repository.model_spec import BATCH_AXIS as BATCH_AXIS
from repository.model_spec import (
    DETERMINISTIC,
    LIKELIHOODS,
    ImageSpec,
    LatentSpec,
    flat_specs,
    image_sizes,
    v1_model,
    v2_model,
)
from repository.tensor_names import DECODED_IMAGE, GRAPHS, PROBS

FORMAT_VERSIONS = (1, 2, 3)
MANIFEST_FILE = "model.json"
# Names become directory names and Prometheus label values; keep them plain.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def v1_specs(latent_dim: int, image_shape: tuple[int, int, int], likelihood: str) -> dict[str, Any]:
    """Manifest's image, latent and decoder_output for what format_version 1 says of a model."""
    image, latent = flat_specs(latent_dim, image_shape)
    return {"image": image, "latent": latent, "decoder_output": likelihood}


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """The contents of model.json; see docs/export.md for each field."""

    name: str
    version: int
    created: str  # ISO-8601, UTC
    image: ImageSpec
    latent: LatentSpec
    decoder_output: str  # one of DECODER_OUTPUTS
    opset: int
    pairing_id: str
    graphs: Mapping[str, GraphEntry]  # keys: exactly GRAPHS
    fp16: Mapping[str, Fp16Entry] | None
    parity_max_abs_diff: Mapping[str, float]  # keys: exactly GRAPHS
    parity_batch_sizes: tuple[int, ...]
    eval: Mapping[str, Any] | None
    training: Mapping[str, Any]  # {} for a model this project did not train
    # Score's log-likelihood over the test set at export: the baseline input drift is measured against.
    # Optional and not hashed, so versions exported before it stay valid.
    score_reference: Mapping[str, Any] | None = None
    # A conditional model's class names (label i is classes[i]); empty for an unconditional model,
    # whose model.json omits the field, so versions exported before it stay valid.
    classes: tuple[str, ...] = ()
    # A learned prior; None is N(0, I), and model.json omits the field, so earlier versions stay valid.
    prior: PriorEntry | None = None
    # Format 2: whether samples of the prior are worth decoding, and a likelihood worth scoring.
    # Format 1 models have both (Score still needs a likelihood its files determine).
    has_prior: bool = True
    scorable: bool = True
    # Format 2: the image sizes (H, W) parity ran at, for a model that takes any size.
    parity_image_sizes: tuple[tuple[int, int], ...] = ()
    # Format 2: where an imported model came from (its format, class, config and weights' hash).
    source: Mapping[str, Any] | None = None
    # Format 3: a normalizing flow on the prior, over `prior` (N(0, I) without one).
    prior_flow: PriorFlowEntry | None = None

    @property
    def conditional(self) -> bool:
        return bool(self.classes)

    @property
    def is_spatial(self) -> bool:
        return self.latent.spatial

    @property
    def fixed_image_shape(self) -> tuple[int, int, int] | None:
        """[C, H, W] of a fixed-size model; None for one that takes any size (see divisibility)."""
        size = self.image.size
        return None if size is None else (self.image.channels, *size)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Format 1's [C, H, W]; a model that takes any size has none (use fixed_image_shape)."""
        shape = self.fixed_image_shape
        if shape is None:
            raise ManifestError(
                f"model {self.name!r} version {self.version} takes images of any size (multiples of "
                f"{self.divisibility}): it has no fixed image_shape"
            )
        return shape

    @property
    def latent_dim(self) -> int:
        """Format 1's D; a spatial latent has none (use latent_shape)."""
        if self.is_spatial:
            raise ManifestError(
                f"model {self.name!r} version {self.version} has spatial latents "
                f"{self.latent.shape_json()}: latent_dim is defined for flat latents only"
            )
        return self.latent.channels

    @property
    def likelihood(self) -> str:
        """Format 1's name for decoder_output (bernoulli or gaussian; image for a deterministic decoder)."""
        return self.decoder_output

    @property
    def divisibility(self) -> int:
        """Image sides must be multiples of this."""
        return self.image.multiple_of

    @property
    def value_range(self) -> tuple[float, float]:
        """The range of images: the encoder's input, and the decoder's image output."""
        return self.image.value_range

    @property
    def scaling(self) -> tuple[float, float]:
        """(scaling_factor, shift_factor): a diffusion pipeline's latents are (z - shift) * scaling."""
        return self.latent.scaling_factor, self.latent.shift_factor

    @property
    def image_output(self) -> str:
        """The decoder output that holds the image: probs, or image for a deterministic decoder."""
        return DECODED_IMAGE if self.decoder_output == DETERMINISTIC else PROBS

    def latent_shape(self, image_hw: tuple[int, int] | None = None) -> tuple[int, ...]:
        """One item's latent shape, for an image of size image_hw (a spatial model of any size needs it).

        Raises ValueError, with the rule, for a size the model does not take.
        """
        if not self.is_spatial:
            return (self.latent.channels,)
        height, width = self._image_size(image_hw)
        factor = self.latent.downsampling or 1
        return (self.latent.channels, height // factor, width // factor)

    def decoded_image_shape(self, latent_hw: tuple[int, int] | None = None) -> tuple[int, int, int]:
        """One item's image shape, decoded from a latent of size latent_hw (spatial models of any size)."""
        if not self.is_spatial or self.image.size is not None:
            return self.image_shape
        if latent_hw is None or min(latent_hw) < 1:
            raise ValueError(f"model {self.name!r} decodes latents of any size: give their (h, w)")
        factor = self.latent.downsampling or 1
        return (self.image.channels, latent_hw[0] * factor, latent_hw[1] * factor)

    def _image_size(self, image_hw: tuple[int, int] | None) -> tuple[int, int]:
        if self.image.size is not None:
            if image_hw is not None and tuple(image_hw) != self.image.size:
                raise ValueError(
                    f"model {self.name!r} takes {list(self.image.size)} images, not {list(image_hw)}"
                )
            return self.image.size
        if image_hw is None:
            raise ValueError(f"model {self.name!r} takes images of any size: give their (H, W)")
        m = self.divisibility
        if min(image_hw) < 1 or any(side % m for side in image_hw):
            raise ValueError(
                f"model {self.name!r} takes images whose height and width are positive multiples of {m}, "
                f"not {list(image_hw)}"
            )
        return image_hw[0], image_hw[1]

    @property
    def format_1_expressible(self) -> bool:
        """Whether format 1's fields say all of the model (its graphs' metadata then use format 1's keys)."""
        v1_image, v1_latent = (
            flat_specs(self.latent.channels, self.fixed_image_shape)
            if self.fixed_image_shape
            else (None, None)
        )
        return (
            self.image == v1_image
            and self.latent == v1_latent
            and self.decoder_output in LIKELIHOODS
            and self.has_prior
            and self.scorable
            and not self.parity_image_sizes
            and self.source is None
        )

    @property
    def format_version(self) -> int:
        """1 when format 1 says all of it (older readers then read it too), 3 with a prior flow, else 2."""
        if self.prior_flow is not None:
            return 3
        return 1 if self.format_1_expressible else 2

    def files(self) -> dict[str, str]:
        """Every file the manifest covers (graphs, prior and its flow), mapped to its expected sha256."""
        entries: list[GraphEntry | Fp16Entry | PriorEntry] = [self.graphs[g] for g in GRAPHS]
        if self.fp16 is not None:
            entries += [self.fp16[g] for g in GRAPHS]
        if self.prior is not None:
            entries.append(self.prior)
        if self.prior_flow is not None:
            entries += [self.prior_flow.graphs[g] for g in FLOW_GRAPHS]
        return {entry.file: entry.sha256 for entry in entries}

    def to_json(self) -> dict[str, Any]:
        version = self.format_version
        if version == 1:
            model: dict[str, Any] = {
                "latent_dim": self.latent_dim,
                "image_shape": list(self.image_shape),
                "likelihood": self.decoder_output,
            }
        else:
            model = {
                "image": self.image.to_json(),
                "latent": self.latent.to_json(),
                "decoder_output": self.decoder_output,
                "has_prior": self.has_prior,
                "scorable": self.scorable,
            }
        parity: dict[str, Any] = {
            **{g: {"max_abs_diff": self.parity_max_abs_diff[g]} for g in GRAPHS},
            "batch_sizes": list(self.parity_batch_sizes),
        }
        if self.parity_image_sizes:
            parity["image_sizes"] = [list(size) for size in self.parity_image_sizes]
        return {
            "format_version": version,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            **model,
            "opset": self.opset,
            "pairing_id": self.pairing_id,
            "graphs": {g: self.graphs[g].to_json() for g in GRAPHS},
            "fp16": None if self.fp16 is None else {g: self.fp16[g].to_json() for g in GRAPHS},
            "parity": parity,
            "eval": None if self.eval is None else dict(self.eval),
            "training": dict(self.training),
            **({} if self.source is None else {"source": dict(self.source)}),
            **({} if self.score_reference is None else {"score_reference": dict(self.score_reference)}),
            **({"classes": list(self.classes)} if self.classes else {}),
            **({} if self.prior is None else {"prior": self.prior.to_json()}),
            **({} if self.prior_flow is None else {"prior_flow": self.prior_flow.to_json()}),
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
    """Validate decoded model.json data (format_version 1, 2 or 3); `source` names the file in errors."""
    root = Fields(data, source, "")
    format_version = root.get("format_version", int)
    if format_version not in FORMAT_VERSIONS:
        raise ManifestError(f"{source}: format_version is {format_version!r}; this build reads 1, 2 and 3")
    name = root.get("name", str)
    if not NAME_PATTERN.fullmatch(name):
        raise ManifestError(f"{source}: name {name!r} is not a valid model name")
    created = root.get("created", str)
    try:
        datetime.fromisoformat(created)
    except ValueError:
        raise ManifestError(f"{source}: created {created!r} is not an ISO-8601 time") from None
    graphs = root.child("graphs")
    fp16 = None if data.get("fp16") is None else root.child("fp16")
    parity = root.child("parity")
    if ("prior_flow" in data) != (format_version == 3):
        raise ManifestError(
            f"{source}: a prior_flow needs format_version 3, and format_version 3 a prior_flow"
        )
    for key in ("eval", "source"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise ManifestError(f"{source}: {key} must be an object or null")
    model = v1_model(root) if format_version == 1 else v2_model(root)
    return Manifest(
        name=name,
        version=root.positive_int("version"),
        created=created,
        **model,
        opset=root.positive_int("opset"),
        pairing_id=root.get("pairing_id", str),
        graphs={g: graph_entry(graphs.child(g)) for g in GRAPHS},
        fp16=None if fp16 is None else {g: fp16_entry(fp16.child(g)) for g in GRAPHS},
        parity_max_abs_diff={g: parity.child(g).number("max_abs_diff") for g in GRAPHS},
        parity_batch_sizes=tuple(parity.positive_int_list("batch_sizes")),
        parity_image_sizes=image_sizes(parity) if "image_sizes" in parity.data else (),
        eval=data.get("eval"),
        training=root.get("training", dict),
        source=data.get("source"),
        score_reference=None if data.get("score_reference") is None else score_reference(root),
        classes=classes(root) if "classes" in data else (),
        prior=prior_entry(root.child("prior")) if "prior" in data else None,
        prior_flow=prior_flow_entry(root.child("prior_flow")) if format_version == 3 else None,
    )
