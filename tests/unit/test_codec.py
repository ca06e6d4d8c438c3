"""Wire tensors -> checked arrays: each malformed input is an error naming the fault (INVALID_ARGUMENT)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from repository.manifest import Manifest, v1_specs
from service import codec
from service.errors import InvalidArgument, status_of
from vae.v1 import vae_pb2 as pb
from wire import tensors
from wire.tensors import TensorError

IMAGE = (1, 4, 4)
LATENT = 3
# What the checks raise: codec's own errors, or wire's for a tensor no reader could use.
MALFORMED = (InvalidArgument, TensorError)


def tensor(values: np.ndarray, dtype: int | None = None, shape: list[int] | None = None) -> pb.Tensor:
    kind = dtype if dtype is not None else (pb.DTYPE_UINT8 if values.dtype == np.uint8 else pb.DTYPE_FLOAT32)
    return pb.Tensor(shape=values.shape if shape is None else shape, dtype=kind, data=values.tobytes())


def images(n: int = 2) -> np.ndarray:
    return np.random.default_rng(0).random((n, *IMAGE), dtype=np.float32)


def test_float_images_come_back_unchanged_without_a_copy() -> None:
    sent = images()
    message = tensor(sent)
    got = codec.images(message, IMAGE, max_items=8)
    np.testing.assert_array_equal(got, sent)
    assert got.dtype == np.float32 and not got.flags.writeable  # a view of the message's bytes


def test_uint8_images_are_scaled_to_unit_range() -> None:
    sent = np.array([0, 51, 255] + [0] * 13, np.uint8).reshape(1, *IMAGE)
    got = codec.images(tensor(sent), IMAGE, max_items=8)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got.reshape(-1)[:3], [0.0, 0.2, 1.0], rtol=1e-6)


def test_latents_accept_any_finite_values_within_the_limit() -> None:
    sent = np.array([[-5.0, 0.0, 123.0]], np.float32)
    np.testing.assert_array_equal(codec.latents(tensor(sent), LATENT, max_items=4), sent)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (pb.Tensor(), "images: missing"),
        (
            tensor(images(), dtype=pb.DTYPE_UNSPECIFIED),
            "dtype must be DTYPE_FLOAT32 or DTYPE_UINT8, got DTYPE_UNSPECIFIED",
        ),
        (tensor(images(), dtype=7), "got unknown dtype 7"),
        (tensor(images(), shape=[2, 1, 16]), "images: shape must be [batch, 1, 4, 4], got [2, 1, 16]"),
        (
            tensor(images(), shape=[2, 1, 4, 0]),
            "every dimension of the shape must be at least 1, got [2, 1, 4, 0]",
        ),
        (
            tensor(images(), shape=[3, 1, 4, 4]),
            "shape [3, 1, 4, 4] of DTYPE_FLOAT32 needs 192 bytes, got 128",
        ),
        (tensor(images(9)), "images: batch must be in 1..8, got 9"),
        (tensor(images().astype(np.uint8), dtype=pb.DTYPE_FLOAT32), "needs 128 bytes, got 32"),
    ],
)
def test_malformed_image_tensors(message: pb.Tensor, expected: str) -> None:
    with pytest.raises(MALFORMED) as caught:
        codec.images(message, IMAGE, max_items=8)
    assert expected in str(caught.value)
    assert status_of(caught.value) == (grpc.StatusCode.INVALID_ARGUMENT, str(caught.value))


def test_images_out_of_range_name_the_item_and_its_span() -> None:
    bad = images(3)
    bad[2, 0, 1, 1] = 1.5
    with pytest.raises(InvalidArgument, match=r"pixel values must lie in \[0, 1\]; item 2 spans \[.*, 1.5\]"):
        codec.images(tensor(bad), IMAGE, max_items=8)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_images_with_non_finite_values(value: float) -> None:
    bad = images(3)
    bad[1, 0, 0, 0] = value
    with pytest.raises(InvalidArgument, match="images: item 1 holds a NaN or infinite value"):
        codec.images(tensor(bad), IMAGE, max_items=8)


def test_latents_with_a_wrong_dimension_or_dtype() -> None:
    with pytest.raises(InvalidArgument, match=r"latents: shape must be \[batch, 3\], got \[1, 4\]"):
        codec.latents(tensor(np.zeros((1, 4), np.float32)), LATENT, max_items=4)
    with pytest.raises(TensorError, match="latents: dtype must be DTYPE_FLOAT32, got DTYPE_UINT8"):
        codec.latents(tensor(np.zeros((1, 3), np.uint8)), LATENT, max_items=4)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.nan, "latents: item 1 holds a NaN or infinite value"),
        (np.inf, "latents: item 1 holds a NaN or infinite value"),
        (2e4, "latents: values must lie within ±10000; item 1 does not"),
    ],
)
def test_latents_with_bad_values(value: float, expected: str) -> None:
    bad = np.zeros((2, LATENT), np.float32)
    bad[1, 2] = value
    with pytest.raises(InvalidArgument) as caught:
        codec.latents(tensor(bad), LATENT, max_items=4)
    assert str(caught.value) == expected


def test_count_limits() -> None:
    assert codec.count(3, "n", 1, 3) == 3
    with pytest.raises(InvalidArgument, match=r"n must be in 1\.\.3, got 0"):
        codec.count(0, "n", 1, 3)


def test_output_dtype_defaults_to_float32_and_rejects_unknown_values() -> None:
    assert codec.output_dtype(pb.DTYPE_UNSPECIFIED) == pb.DTYPE_FLOAT32
    assert codec.output_dtype(pb.DTYPE_UINT8) == pb.DTYPE_UINT8
    with pytest.raises(
        InvalidArgument, match="output_dtype must be DTYPE_FLOAT32 or DTYPE_UINT8, got unknown"
    ):
        codec.output_dtype(9)


def test_tensors_round_trip_little_endian() -> None:
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    message = tensors.tensor(values)
    assert list(message.shape) == [2, 3] and message.dtype == pb.DTYPE_FLOAT32
    assert message.data == values.astype("<f4").tobytes()
    np.testing.assert_array_equal(tensors.to_numpy(message, "x"), values)


def test_uint8_images_round_to_the_nearest_level() -> None:
    pixels = np.array([0.0, 0.5, 1.0, 0.999, 0.001], np.float32)
    given = pixels.copy()
    reply = codec.Reply(pb.DecodeResponse())
    reply.put_images("images", pixels, pb.DTYPE_UINT8)
    message = pb.DecodeResponse.FromString(reply.SerializeToString()).images
    assert message.dtype == pb.DTYPE_UINT8
    assert list(tensors.to_numpy(message, "images")) == [0, 128, 255, 255, 0]
    np.testing.assert_array_equal(pixels, given)  # the batch's array is not quantized in place


@pytest.mark.parametrize(
    "values",
    [
        np.linspace(0, 1, 4096 * 6, dtype=np.float32).reshape(4096, 1, 2, 3),  # varints of 2 bytes
        np.arange(300, dtype=np.uint8).reshape(3, 100)[:, ::-1],  # not contiguous: copied first
        np.arange(5, dtype=">f4"),  # big-endian: written little-endian, as the wire says
        np.zeros((1, 0), np.float32),  # no data: protobuf leaves the field out
        np.float32(7.0).reshape(()),  # no shape: left out too
    ],
)
def test_reply_writes_the_bytes_protobuf_would(values: np.ndarray) -> None:
    """Reply's hand-written tensor fields, in any order put, serialize exactly as the message would."""
    reply = codec.Reply(pb.SampleResponse(model=pb.ModelRef(name="mnist", version=2)))
    first = values.reshape(-1)[:1]
    reply.put("latents", first)
    reply.put("images", values)
    message = pb.SampleResponse(model=pb.ModelRef(name="mnist", version=2))
    tensors.put(message.images, values)
    tensors.put(message.latents, first)
    assert reply.SerializeToString() == message.SerializeToString()
    assert reply.model == message.model


def _manifest(classes: tuple[str, ...], name: str = "cvae") -> Manifest:
    """Only name and classes are read by codec.labels."""
    return Manifest(
        name=name,
        version=1,
        created="2025-01-02T03:04:05Z",
        **v1_specs(LATENT, IMAGE, "bernoulli"),
        opset=18,
        pairing_id="0" * 32,
        graphs={},
        fp16=None,
        parity_max_abs_diff={},
        parity_batch_sizes=(1,),
        eval=None,
        training={},
        classes=classes,
    )


ABC = _manifest(("a", "b", "c"))
DIGITS = _manifest(tuple(map(str, range(10))), name="mnist-cvae")


def test_labels_are_one_per_item_or_one_for_all() -> None:
    per_item = codec.labels([2, 0, 1], ABC, 3)
    assert per_item is not None and per_item.dtype == np.int64 and per_item.tolist() == [2, 0, 1]
    one = codec.labels([1], ABC, 4)
    assert one is not None and one.dtype == np.int64 and one.tolist() == [1, 1, 1, 1]
    path = codec.labels([2], ABC, 5, single=True)
    assert path is not None and path.tolist() == [2] * 5
    assert codec.labels([], _manifest(()), 3) is None  # unconditional: no array at all


@pytest.mark.parametrize(
    ("values", "manifest", "items", "single", "expected"),
    [
        (
            [],
            DIGITS,
            16,
            False,
            "labels: model 'mnist-cvae' is conditional on 10 classes (0..9): pass labels, "
            "one per item or one for all",
        ),
        (
            [0, 1],
            ABC,
            3,
            False,
            "labels: got 2 labels for 3 items; model 'cvae' is conditional on 3 classes (0..2: a, b, c): "
            "pass labels, one per item or one for all",
        ),
        (
            [0, 1],
            ABC,
            1,
            False,
            "labels: got 2 labels for 1 item; model 'cvae' is conditional on 3 classes (0..2: a, b, c): "
            "pass labels, one per item or one for all",
        ),
        (
            [1, 3, 4],
            ABC,
            3,
            False,
            "labels: label 3 (position 1) is out of range; model 'cvae' is conditional on 3 classes "
            "(0..2: a, b, c)",
        ),
        (
            [],
            ABC,
            4,
            True,
            "labels: model 'cvae' is conditional on 3 classes (0..2: a, b, c): pass labels, exactly one, "
            "the class of the whole path",
        ),
        (
            [0, 0],
            ABC,
            2,
            True,
            "labels: got 2 labels; model 'cvae' is conditional on 3 classes (0..2: a, b, c): pass labels, "
            "exactly one, the class of the whole path",
        ),
        (
            [0],
            _manifest((), name="mnist"),
            1,
            False,
            "labels: model 'mnist' is unconditional (it has no classes): send no labels",
        ),
    ],
)
def test_wrong_labels_name_the_model_and_its_classes(
    values: list[int], manifest: Manifest, items: int, single: bool, expected: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        codec.labels(values, manifest, items, single=single)
    assert str(caught.value) == expected


def test_many_long_class_names_are_clipped_in_messages() -> None:
    many = _manifest(tuple(f"class-{i:03d}" for i in range(100)))
    with pytest.raises(InvalidArgument) as caught:
        codec.labels([100], many, 1)
    message = str(caught.value)
    assert message.startswith("labels: label 100 (position 0) is out of range; model 'cvae' is conditional")
    assert "(0..99: class-000, class-001" in message and message.endswith("…)") and len(message) < 320
