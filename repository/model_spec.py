"""What a model takes and gives: the `image` and `latent` objects of model.json (format_version 2).

A format_version 1 manifest's `image_shape`, `latent_dim` and `likelihood` are the special case a
flat latent, a fixed image size in [0, 1] and an unscaled latent make; docs/export.md has each field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from repository.errors import ManifestError
from repository.manifest_fields import Fields, is_positive_int

# The graphs' named axes: the batch, and for a model that takes any image size its spatial axes.
BATCH_AXIS = "batch"
HEIGHT, WIDTH = "height", "width"
LATENT_HEIGHT, LATENT_WIDTH = "latent_height", "latent_width"
AXES = (BATCH_AXIS, HEIGHT, WIDTH, LATENT_HEIGHT, LATENT_WIDTH)
# The two ranges images are encoded in: this project's models (and MNIST) use [0, 1], latent
# diffusion VAEs [-1, 1].
VALUE_RANGES = ((0.0, 1.0), (-1.0, 1.0))
# What the decoder's image output is: Bernoulli means (probs, with logits beside them), a Gaussian
# mean (probs), or a deterministic image (image) with no likelihood behind it.
LIKELIHOODS = ("bernoulli", "gaussian")
DETERMINISTIC = "image"
DECODER_OUTPUTS = (*LIKELIHOODS, DETERMINISTIC)


@dataclass(frozen=True, kw_only=True)
class ImageSpec:
    """The images a model encodes and decodes: channels, a fixed size or any multiple, value range."""

    channels: int
    size: tuple[int, int] | None  # (H, W); None: any size whose sides are multiples of multiple_of
    multiple_of: int = 1
    value_range: tuple[float, float] = (0.0, 1.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "size": None if self.size is None else list(self.size),
            "multiple_of": self.multiple_of,
            "range": list(self.value_range),
        }


@dataclass(frozen=True, kw_only=True)
class LatentSpec:
    """The latent: flat [channels], or spatial [channels, H / downsampling, W / downsampling].

    A diffusion pipeline works on (z - shift_factor) * scaling_factor, diffusers' names for them;
    the graphs take and give z itself.
    """

    channels: int  # D of a flat latent
    downsampling: int | None = None  # None: flat
    scaling_factor: float = 1.0
    shift_factor: float = 0.0

    @property
    def spatial(self) -> bool:
        return self.downsampling is not None

    def shape_json(self) -> list[int | str]:
        return [self.channels, LATENT_HEIGHT, LATENT_WIDTH] if self.spatial else [self.channels]

    def to_json(self) -> dict[str, Any]:
        return {
            "shape": self.shape_json(),
            **({} if self.downsampling is None else {"downsampling": self.downsampling}),
            "scaling_factor": self.scaling_factor,
            "shift_factor": self.shift_factor,
        }


def flat_specs(latent_dim: int, image_shape: tuple[int, int, int]) -> tuple[ImageSpec, LatentSpec]:
    """What format_version 1's latent_dim and image_shape mean: a flat latent, a fixed size in [0, 1]."""
    channels, height, width = image_shape
    return ImageSpec(channels=channels, size=(height, width)), LatentSpec(channels=latent_dim)


def parse_image(fields: Fields) -> ImageSpec:
    size = fields.data.get("size")
    if size is not None and (
        not isinstance(size, list) or len(size) != 2 or not all(is_positive_int(v) for v in size)
    ):
        raise ManifestError(
            f"{fields.source}: field {fields.path('size')!r} must be [H, W] positive integers or null, "
            f"got {size!r}"
        )
    value_range = fields.get("range", list)
    if tuple(value_range) not in VALUE_RANGES or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value_range
    ):
        raise ManifestError(
            f"{fields.source}: field {fields.path('range')!r} must be one of "
            f"{[list(r) for r in VALUE_RANGES]}, got {value_range!r}"
        )
    return ImageSpec(
        channels=fields.positive_int("channels"),
        size=None if size is None else (size[0], size[1]),
        multiple_of=fields.positive_int("multiple_of"),
        value_range=(float(value_range[0]), float(value_range[1])),
    )


def parse_latent(fields: Fields) -> LatentSpec:
    shape = fields.get("shape", list)
    spatial = "downsampling" in fields.data
    channels: int = shape[0] if shape and is_positive_int(shape[0]) else 0
    if not channels or shape != ([channels, LATENT_HEIGHT, LATENT_WIDTH] if spatial else [channels]):
        raise ManifestError(
            f"{fields.source}: field {fields.path('shape')!r} must be [D] for a flat latent or "
            f"[C, {LATENT_HEIGHT!r}, {LATENT_WIDTH!r}] with 'downsampling' for a spatial one, got {shape!r}"
        )
    scaling = fields.number("scaling_factor")
    if scaling <= 0:
        raise ManifestError(f"{fields.source}: field {fields.path('scaling_factor')!r} must be positive")
    return LatentSpec(
        channels=channels,
        downsampling=fields.positive_int("downsampling") if spatial else None,
        scaling_factor=scaling,
        shift_factor=fields.number("shift_factor"),
    )


def check_specs(image: ImageSpec, latent: LatentSpec, source: str) -> None:
    """Refuse an image and a latent that no network could join, naming the fix."""
    if image.size is not None and any(side % image.multiple_of for side in image.size):
        raise ManifestError(
            f"{source}: image size {list(image.size)} is not a multiple of multiple_of {image.multiple_of}"
        )
    if latent.downsampling is None:
        if image.size is None:
            # A flat latent comes out of a dense layer, whose width fixes the image size.
            raise ManifestError(f"{source}: a flat latent needs a fixed image size (image.size)")
    elif image.multiple_of % latent.downsampling:
        raise ManifestError(
            f"{source}: image multiple_of {image.multiple_of} must be a multiple of the latent's "
            f"downsampling {latent.downsampling}, or latent sides would not be whole"
        )


def v1_model(root: Fields) -> dict[str, Any]:
    """Manifest's model fields from format_version 1's latent_dim, image_shape and likelihood."""
    likelihood = root.get("likelihood", str)
    if likelihood not in LIKELIHOODS:
        raise ManifestError(f"{root.source}: likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    shape = root.get("image_shape", list)
    if len(shape) != 3 or not all(is_positive_int(v) for v in shape):
        raise ManifestError(f"{root.source}: image_shape must be [C, H, W] positive integers, got {shape}")
    image, latent = flat_specs(root.positive_int("latent_dim"), (shape[0], shape[1], shape[2]))
    return {"image": image, "latent": latent, "decoder_output": likelihood}


def v2_model(root: Fields) -> dict[str, Any]:
    """Manifest's model fields from format_version 2's image, latent, decoder_output, has_prior, scorable."""
    image, latent = parse_image(root.child("image")), parse_latent(root.child("latent"))
    check_specs(image, latent, root.source)
    decoder_output = root.get("decoder_output", str)
    if decoder_output not in DECODER_OUTPUTS:
        raise ManifestError(
            f"{root.source}: decoder_output must be one of {DECODER_OUTPUTS}, got {decoder_output!r}"
        )
    scorable = root.flag("scorable")
    if scorable and decoder_output == DETERMINISTIC:
        raise ManifestError(
            f"{root.source}: a deterministic decoder ({DETERMINISTIC!r}) has no likelihood to score"
        )
    return {
        "image": image,
        "latent": latent,
        "decoder_output": decoder_output,
        "has_prior": root.flag("has_prior"),
        "scorable": scorable,
    }


def image_sizes(parity: Fields) -> tuple[tuple[int, int], ...]:
    sizes = parity.get("image_sizes", list)
    if not all(isinstance(s, list) and len(s) == 2 and all(is_positive_int(v) for v in s) for s in sizes):
        raise ManifestError(f"{parity.source}: field {parity.path('image_sizes')!r} must list [H, W] pairs")
    return tuple((s[0], s[1]) for s in sizes)
