"""What a request carries -> checked arrays, and response arrays -> wire bytes: the server's edge.

Everything a request carries is checked here, at the edge, so nothing invalid reaches a batch;
each failure is an InvalidArgument (a malformed tensor: wire's TensorError, answered the same) whose
message names the field and what was wrong with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

import numpy as np

from repository.manifest import Manifest
from service.config import setting
from service.errors import InvalidArgument
from vae.v1 import vae_pb2 as pb
from wire.tensors import FLOAT32, NUMPY, UINT8, array, dtype_name, field

# A standard normal prior puts essentially all its mass within +-10; beyond this bound a latent
# is a mistake, and large enough values overflow the decoder's activations.
LATENT_LIMIT = 1e4
# The responses that carry tensors.
M = TypeVar(
    "M",
    pb.EncodeResponse,
    pb.DecodeResponse,
    pb.SampleResponse,
    pb.ReconstructResponse,
    pb.InterpolateResponse,
    pb.ScoreResponse,
)


# One item's shape; None stands for a side of any size (a model that takes any image size).
ItemShape = tuple[int | None, ...]


def _check_shape(what: str, got: tuple[int, ...], item_shape: ItemShape, max_items: int) -> None:
    """[batch, *item_shape] with 1 <= batch <= max_items; a None side matches any positive size."""
    if len(got) != 1 + len(item_shape) or any(
        want is not None and side != want for side, want in zip(got[1:], item_shape, strict=True)
    ):
        expected = ", ".join(["batch", *("*" if side is None else str(side) for side in item_shape)])
        raise InvalidArgument(f"{what}: shape must be [{expected}], got {list(got)}")
    if not 1 <= got[0] <= max_items:
        raise InvalidArgument(f"{what}: batch must be in 1..{max_items}, got {got[0]}")


def check_pixels(what: str, height: int, width: int, max_pixels: int, lead: str = "") -> None:
    """An image size a caller chose (a model of any size) holds at most max_pixels pixels.

    What one image costs grows with its pixels (docs/any-vae.md measures the SD 1.x VAE), so the
    limit bounds one image's memory; larger images would need tiling, which is not served.
    """
    if height * width > max_pixels:
        raise InvalidArgument(
            f"{what}: {lead or 'images of'} {height}x{width}: {height * width} pixels per image, over the "
            f"server's limit of {max_pixels} set by {setting('max_image_pixels')}; send smaller images, "
            "or raise the limit"
        )


def model_images(tensor: pb.Tensor, manifest: Manifest, max_items: int, max_pixels: int) -> np.ndarray:
    """A model's images: its fixed [C, H, W], or any size it takes of at most max_pixels pixels."""
    fixed = manifest.fixed_image_shape
    shape: ItemShape = fixed if fixed is not None else (manifest.image.channels, None, None)
    values = images(
        tensor, shape, max_items, multiple_of=manifest.divisibility, value_range=manifest.value_range
    )
    if fixed is None:
        check_pixels("images", values.shape[2], values.shape[3], max_pixels)
    return values


def images(
    tensor: pb.Tensor,
    image_shape: ItemShape,
    max_items: int,
    what: str = "images",
    *,
    multiple_of: int = 1,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """float32 [batch, C, H, W] in value_range; uint8 input maps 0..255 onto it.

    A None side in image_shape takes any positive multiple of `multiple_of`.
    """
    values = array(tensor, what, (FLOAT32, UINT8))
    _check_shape(what, values.shape, image_shape, max_items)
    if any(side % multiple_of for side in values.shape[2:]):
        raise InvalidArgument(
            f"{what}: height and width must be multiples of {multiple_of}, got {list(values.shape[2:])}"
        )
    lowest, highest = value_range
    if values.dtype == np.uint8:
        if value_range == (0.0, 1.0):  # the arithmetic of format 1 models, kept bit for bit
            return values.astype(np.float32) * np.float32(1 / 255)
        return values.astype(np.float32) * np.float32((highest - lowest) / 255) + np.float32(lowest)
    low, high = values.min(), values.max()
    # NaN fails both comparisons, so one test covers range and finiteness.
    if not (low >= lowest and high <= highest):
        bad = ~np.isfinite(values) | (values < lowest) | (values > highest)
        item = int(np.argmax(bad.reshape(len(values), -1).any(axis=1)))
        if not np.isfinite(values[item]).all():
            raise InvalidArgument(f"{what}: item {item} holds a NaN or infinite value")
        raise InvalidArgument(
            f"{what}: float32 pixel values must lie in [{lowest:g}, {highest:g}]; item {item} spans "
            f"[{values[item].min():g}, {values[item].max():g}]"
        )
    return values


def model_latents(
    tensor: pb.Tensor, manifest: Manifest, max_items: int, max_pixels: int, what: str = "latents"
) -> np.ndarray:
    """A model's latents: flat [batch, D], or spatial [batch, C, h, w] that decode to a size it takes.

    A model of any size decodes latents to images of at most max_pixels pixels.
    """
    if not manifest.is_spatial:
        return latents(tensor, manifest.latent_dim, max_items, what)
    values = latents(tensor, (manifest.latent.channels, None, None), max_items, what)
    shape = list(values.shape[1:])
    try:
        image = manifest.decoded_image_shape((values.shape[2], values.shape[3]))
        expected = manifest.latent_shape((image[1], image[2]))
    except ValueError as exc:
        raise InvalidArgument(f"{what}: latents {shape} decode to no image the model takes: {exc}") from None
    _check_shape(what, values.shape, expected, max_items)
    if manifest.fixed_image_shape is None:
        check_pixels(what, image[1], image[2], max_pixels, f"{shape} decode to images of")
    return values


def latents(
    tensor: pb.Tensor, item_shape: int | ItemShape, max_items: int, what: str = "latents"
) -> np.ndarray:
    """float32 [batch, D] (or [batch, *item_shape]), finite and within +-LATENT_LIMIT."""
    values = array(tensor, what)
    _check_shape(what, values.shape, (item_shape,) if isinstance(item_shape, int) else item_shape, max_items)
    # NaN fails the comparison, so one reduction covers both checks.
    if not np.abs(values).max() <= LATENT_LIMIT:
        item = int(np.argmax(~(np.abs(values) <= LATENT_LIMIT).reshape(len(values), -1).all(axis=1)))
        if not np.isfinite(values[item]).all():
            raise InvalidArgument(f"{what}: item {item} holds a NaN or infinite value")
        raise InvalidArgument(f"{what}: values must lie within ±{LATENT_LIMIT:g}; item {item} does not")
    return values


def labels(
    values: Sequence[int], manifest: Manifest, items: int, *, single: bool = False
) -> np.ndarray | None:
    """A conditional model's class index per item, int64 [items]; None for an unconditional model.

    One label stands for every item; `single` (Interpolate: one class for the whole path) takes
    exactly one. An unconditional model takes none, and pays for no more than this length check.
    """
    if not manifest.classes:
        if values:
            raise InvalidArgument(
                f"labels: model {manifest.name!r} is unconditional (it has no classes): send no labels"
            )
        return None
    wanted = "exactly one, the class of the whole path" if single else "one per item or one for all"
    if not values:
        raise InvalidArgument(f"labels: {_conditional(manifest)}: pass labels, {wanted}")
    if len(values) != 1 and (single or len(values) != items):
        got = f"got {len(values)} labels"
        if not single:
            got += f" for {items} item" if items == 1 else f" for {items} items"
        raise InvalidArgument(f"labels: {got}; {_conditional(manifest)}: pass labels, {wanted}")
    given = np.array(values, dtype=np.int64)
    if given.max() >= len(manifest.classes):
        item = int(np.argmax(given >= len(manifest.classes)))
        raise InvalidArgument(
            f"labels: label {given[item]} (position {item}) is out of range; {_conditional(manifest)}"
        )
    return np.full(items, given[0]) if len(given) == 1 else given


def _conditional(manifest: Manifest) -> str:
    """'model 'x' is conditional on 10 classes (0..9)', naming the classes when they are not just 0..n-1."""
    classes = manifest.classes
    span = f"0..{len(classes) - 1}"
    if list(classes) != [str(i) for i in range(len(classes))]:
        # Class names come from model.json, unbounded: keep the status message short.
        names = ", ".join(classes)
        span += f": {names if len(names) <= 200 else names[:200] + '…'}"
    return f"model {manifest.name!r} is conditional on {len(classes)} classes ({span})"


def count(value: int, what: str, low: int, high: int) -> int:
    if not low <= value <= high:
        raise InvalidArgument(f"{what} must be in {low}..{high}, got {value}")
    return value


def output_dtype(value: int) -> int:
    """FLOAT32 (also when unspecified) or UINT8."""
    if value == pb.DTYPE_UNSPECIFIED:
        return FLOAT32
    if value not in NUMPY:
        raise InvalidArgument(f"output_dtype must be DTYPE_FLOAT32 or DTYPE_UINT8, got {dtype_name(value)}")
    return value


class Reply(Generic[M]):
    """A response: its small fields in `message`, its tensors as wire bytes, joined once when sent.

    Large responses (Sample n=4,096: 12.8 MB of float32) spent most of their time copying: into the
    message, into its serialization, each copy into fresh pages (docs/benchmarks.md). Here each
    array's data is copied once, when SerializeToString joins the parts into the bytes grpc sends.
    """

    __slots__ = ("_fields", "message")

    def __init__(self, message: M) -> None:
        self.message: M = message
        self._fields: list[tuple[int, tuple[bytes, memoryview]]] = []

    @property
    def model(self) -> pb.ModelRef:
        """The version that answered: what the call observer notes."""
        return self.message.model

    def put(self, name: str, values: np.ndarray) -> None:
        """`values` (float32 or uint8) as the message's Tensor field `name`."""
        number = self.message.DESCRIPTOR.fields_by_name[name].number
        self._fields.append((number, field(number, values)))

    def put_images(
        self, name: str, pixels: np.ndarray, dtype: int, value_range: tuple[float, float] = (0.0, 1.0)
    ) -> None:
        """Images in value_range as float32, or quantized to 0..255 when the client asked for uint8."""
        if dtype == UINT8:
            low, high = value_range
            if low:
                pixels = (pixels - np.float32(low)) * np.float32(1 / (high - low))
            pixels = (pixels * np.float32(255) + np.float32(0.5)).astype(np.uint8)
        self.put(name, pixels)

    def SerializeToString(self) -> bytes:  # what calls.py calls on any response
        """The message's bytes, then its tensors' in field order: as protobuf would write them."""
        parts: list[bytes | memoryview] = [self.message.SerializeToString()]
        for _, (head, data) in sorted(self._fields, key=lambda entry: entry[0]):
            parts += (head, data)
        return b"".join(parts)
