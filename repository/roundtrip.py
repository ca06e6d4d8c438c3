"""verify's end-to-end check: probe images encoded and their means decoded, at each size checked.

Shapes, dtypes, finiteness, and the decoder's image inside the declared value range. A model that
takes any image size is run at two sizes of different aspect, so that a spatial axis the export
fixed, or height and width swapped, fails here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from repository.comparison import label_feeds, probe_images, probe_size
from repository.manifest import Manifest
from repository.runtime import Graph
from repository.tensor_names import IMAGES, LATENTS, LOGITS, LOGVAR, MU

Expectation = tuple[str, np.ndarray, tuple[int, ...], Callable[[np.ndarray], bool], str]


def check_sizes(manifest: Manifest) -> list[tuple[int, int]]:
    """The image sizes (H, W) the check runs: the fixed one, or two of different aspect."""
    first = probe_size(manifest)
    if manifest.image.size is not None:
        return [first]
    m = manifest.divisibility
    return [first, (2 * m, 5 * m)]


def sizes_note(manifest: Manifest) -> str:
    """' at 32x24 and 16x40' for a model of any size: the sizes its round trip ran at."""
    if manifest.image.size is not None:
        return ""
    return " at " + " and ".join(f"{h}x{w}" for h, w in check_sizes(manifest))


def round_trip_problems(encoder: Graph, decoder: Graph, manifest: Manifest, batch: int) -> list[str]:
    sizes = check_sizes(manifest)
    problems = []
    for size in sizes:
        found = _problems_at(encoder, decoder, manifest, batch, size)
        # A fixed-size model's messages read as before; sizes are named only where there are several.
        problems += found if len(sizes) == 1 else [f"at {size[0]}x{size[1]}: {p}" for p in found]
    return problems


def _problems_at(
    encoder: Graph, decoder: Graph, manifest: Manifest, batch: int, size: tuple[int, int]
) -> list[str]:
    latent = (batch, *manifest.latent_shape(size))
    image = (batch, manifest.image.channels, *size)
    low, high = manifest.value_range
    labels = label_feeds(manifest, batch)
    encoded = encoder.run({IMAGES: probe_images(image[1:], batch, value_range=(low, high)), **labels})
    decoded = decoder.run({LATENTS: encoded[MU], **labels})
    output = manifest.image_output
    expectations: list[Expectation] = [
        (MU, encoded[MU], latent, _finite, "finite"),
        (LOGVAR, encoded[LOGVAR], latent, _finite, "finite"),
        (
            output,
            decoded[output],
            image,
            lambda a: bool(((a >= low) & (a <= high)).all()),
            f"in [{low:g}, {high:g}]",
        ),
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


def _finite(array: np.ndarray) -> bool:
    return bool(np.isfinite(array).all())
