"""numpy arrays <-> vae.v1.Tensor messages: the plain conversion both the client and the server use.

Reading checks only what any reader needs (a known dtype, a shape, the byte length it implies) and
raises TensorError otherwise; the server answers that INVALID_ARGUMENT (service/errors.py), and
what a request's contents must satisfy beyond it is checked by service/codec.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from repository.errors import VaeError
from vae.v1 import vae_pb2 as pb

FLOAT32 = pb.DTYPE_FLOAT32
UINT8 = pb.DTYPE_UINT8
# Little-endian whatever the host: the wire format says so.
NUMPY: dict[int, np.dtype[Any]] = {FLOAT32: np.dtype("<f4"), UINT8: np.dtype("u1")}


class TensorError(VaeError, ValueError):
    """A Tensor message is missing, of a dtype not allowed, or its bytes do not fit its shape."""


def dtype_name(value: int) -> str:
    if value not in pb.DType.values():
        return f"unknown dtype {value}"
    return pb.DType.Name(pb.DType.ValueType(value))


def put(target: pb.Tensor, values: np.ndarray) -> None:
    """Write a float32 or uint8 array into a message's tensor field in place (one copy of the data)."""
    kind = UINT8 if values.dtype == np.uint8 else FLOAT32
    target.shape[:] = values.shape
    target.dtype = kind
    target.data = values.astype(NUMPY[kind], copy=False).tobytes()


def field(number: int, values: np.ndarray) -> tuple[bytes, memoryview]:
    """Field `number` of a message holding `values` as a Tensor, in protobuf wire format, uncopied.

    The same bytes as put() into that field and serializing (a test holds them equal), without the
    copies: put() copies the data into the message, serializing copies it into the message's bytes,
    and each copy of a large array pays for its fresh pages. Here the data stays the array's own
    (a view, unless it is not contiguous little-endian) until the response's bytes are joined.
    """
    kind = UINT8 if values.dtype == np.uint8 else FLOAT32
    data = np.ascontiguousarray(values, NUMPY[kind])
    dims = b"".join(map(_varint, values.shape))
    # proto3 leaves out an empty packed field and empty bytes; dtype is never 0 here.
    head = (_key(1, _LENGTH) + _varint(len(dims)) + dims if dims else b"") + _key(2, _VARINT) + _varint(kind)
    if data.nbytes:
        head += _key(3, _LENGTH) + _varint(data.nbytes)
    raw = data.reshape(-1).view(np.uint8).data  # contiguous: a view of the array, as bytes
    return _key(number, _LENGTH) + _varint(len(head) + data.nbytes) + head, raw


_VARINT, _LENGTH = 0, 2  # protobuf wire types


def _key(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tensor(values: np.ndarray) -> pb.Tensor:
    """A float32 or uint8 array on the wire, as a message of its own."""
    message = pb.Tensor()
    put(message, values)
    return message


def array(tensor: pb.Tensor, what: str, allowed: Sequence[int] = (FLOAT32,)) -> np.ndarray:
    """The tensor's bytes as an array of its shape, without copying; dtype and byte length checked."""
    # Each read of tensor.data makes a new bytes object (upb): read it once.
    data = tensor.data
    if tensor.dtype == pb.DTYPE_UNSPECIFIED and not tensor.shape and not data:
        raise TensorError(f"{what}: missing; set its shape, dtype and data")
    if tensor.dtype not in allowed:
        names = " or ".join(dtype_name(d) for d in allowed)
        raise TensorError(f"{what}: dtype must be {names}, got {dtype_name(tensor.dtype)}")
    shape = tuple(tensor.shape)
    if not shape or min(shape) < 1:
        raise TensorError(f"{what}: every dimension of the shape must be at least 1, got {list(shape)}")
    dtype = NUMPY[tensor.dtype]
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise TensorError(
            f"{what}: shape {list(shape)} of {dtype_name(tensor.dtype)} needs {expected} bytes, "
            f"got {len(data)}"
        )
    values: np.ndarray = np.frombuffer(data, dtype).reshape(shape)
    return values


def to_numpy(tensor: pb.Tensor, what: str) -> np.ndarray:
    """Any well-formed float32 or uint8 tensor, as the client reads responses."""
    return array(tensor, what, (FLOAT32, UINT8))
