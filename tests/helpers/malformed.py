"""Hypothesis strategies for malformed vae.v1 requests, each with the status and message it must get.

Every case starts from a valid request for the served model and breaks exactly one thing, drawn at
random: a tensor's dtype, shape, byte length or values, a count, an enum, the model reference, the
size of the message, or the protobuf encoding itself. Knowing which thing broke is what lets the
test check that the server's message names it, not merely that some error came back.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from google.protobuf.message import DecodeError, Message
from hypothesis import strategies as st

from vae.v1 import vae_pb2 as pb

FLOAT32, UINT8 = pb.DTYPE_FLOAT32, pb.DTYPE_UINT8
INT32_MAX, UINT32_MAX = 2**31 - 1, 2**32 - 1
INVALID = frozenset({"INVALID_ARGUMENT"})
NOT_FOUND = frozenset({"NOT_FOUND"})
EXHAUSTED = frozenset({"RESOURCE_EXHAUSTED"})


@dataclass(frozen=True)
class Limits:
    """What the server under test was started with, and its model's shapes."""

    model: str
    image_shape: tuple[int, int, int]
    latent_dim: int
    max_request_items: int
    max_posterior_samples: int
    max_stream_items: int
    max_message_bytes: int


@dataclass(frozen=True, repr=False)
class Case:
    """One malformed call: the RPC, its request (bytes: not even valid protobuf) and what must come back."""

    method: str
    request: Message | bytes
    codes: frozenset[str]
    pattern: str  # a regular expression the status message must match
    fault: str  # which thing was broken, for the tally

    def __repr__(self) -> str:
        # Requests can be megabytes; hypothesis prints failing examples, so keep them short.
        size = len(self.request) if isinstance(self.request, bytes) else self.request.ByteSize()
        return f"Case({self.method}, {self.fault}, {size} bytes)"

    def check(self, code: str, message: str) -> str | None:
        """None when the answer is as required, else what was wrong with it."""
        if code not in self.codes or not re.search(self.pattern, message):
            want = f"{'/'.join(sorted(self.codes))} matching /{self.pattern}/"
            return f"{self.method} with {self.fault}: got {code} {message!r}, want {want}"
        return None


def _tensor(array: np.ndarray) -> pb.Tensor:
    dtype = UINT8 if array.dtype == np.uint8 else FLOAT32
    return pb.Tensor(
        shape=array.shape, dtype=dtype, data=array.astype(array.dtype.newbyteorder("<")).tobytes()
    )


def _rng(draw: st.DrawFn) -> np.random.Generator:
    # Arrays come from numpy seeded by hypothesis: fast, and still reproduced when hypothesis replays.
    return np.random.default_rng(draw(st.integers(0, UINT32_MAX)))


@st.composite
def _valid_images(draw: st.DrawFn, limits: Limits, batch: int | None = None) -> np.ndarray:
    n = batch if batch is not None else draw(st.integers(1, 4))
    rng = _rng(draw)
    if draw(st.booleans()):
        return rng.integers(0, 256, (n, *limits.image_shape), dtype=np.uint8)
    return rng.random((n, *limits.image_shape), dtype=np.float32)


@st.composite
def _valid_latents(draw: st.DrawFn, limits: Limits, batch: int | None = None) -> np.ndarray:
    n = batch if batch is not None else draw(st.integers(1, 4))
    return _rng(draw).standard_normal((n, limits.latent_dim), dtype=np.float32)


# --- a broken tensor --------------------------------------------------------------------------------

TensorFault = tuple[pb.Tensor, str, str]  # (tensor, fault name, message pattern)


@st.composite
def _bad_tensor(draw: st.DrawFn, what: str, limits: Limits, latent: bool, max_items: int) -> TensorFault:
    """A tensor for field `what` (images or latents) with one thing wrong."""
    item_shape = (limits.latent_dim,) if latent else limits.image_shape
    valid = draw(_valid_latents(limits) if latent else _valid_images(limits))
    good = _tensor(valid)
    fault = draw(
        st.sampled_from(
            ["missing", "dtype", "dims", "bytes", "huge_dims", "shape", "batch", "nonfinite", "range"]
        )
    )
    if fault == "missing":
        return pb.Tensor(), fault, rf"^{what}: missing"
    if fault == "dtype":
        bad = [pb.DTYPE_UNSPECIFIED, draw(st.integers(3, INT32_MAX)), draw(st.integers(-(2**31), -1))]
        if latent:
            bad.append(UINT8)  # latents are float32 only
        dtype = draw(st.sampled_from(bad))
        return pb.Tensor(shape=good.shape, dtype=dtype, data=good.data), fault, rf"^{what}: dtype must be"
    if fault == "dims":
        shape = draw(
            st.lists(st.integers(-(2**40), 2**20), min_size=0, max_size=5).filter(
                lambda s: not s or min(s) < 1
            )
        )
        data = draw(st.binary(max_size=64))
        return (
            pb.Tensor(shape=shape, dtype=good.dtype, data=data),
            fault,
            rf"^{what}: every dimension .* at least 1",
        )
    if fault == "bytes":
        delta = draw(st.integers(-len(good.data), 64).filter(lambda d: d != 0))
        data = good.data[:delta] if delta < 0 else good.data + bytes(delta)
        return (
            pb.Tensor(shape=good.shape, dtype=good.dtype, data=data),
            fault,
            rf"^{what}: shape .* needs \d+ bytes, got {len(data)}$",
        )
    if fault == "huge_dims":
        shape = list(good.shape)
        shape[draw(st.integers(0, len(shape) - 1))] = draw(st.integers(2**31, 2**62))
        return (
            pb.Tensor(shape=shape, dtype=good.dtype, data=good.data),
            fault,
            rf"^{what}: shape .* needs \d+ bytes",
        )
    if fault == "shape":
        # Consistent bytes for a shape the model does not take: another rank, or other item dims.
        shape = draw(
            st.lists(st.integers(1, 32), min_size=1, max_size=5).filter(
                lambda s: tuple(s[1:]) != item_shape and math.prod(s) <= 8192
            )
        )
        array = np.zeros(shape, np.float32)
        expected = re.escape(", ".join(["batch", *map(str, item_shape)]))
        return _tensor(array), fault, rf"^{what}: shape must be \[{expected}\], got"
    if fault == "batch":
        n = draw(st.integers(max_items + 1, max_items + 8))
        array = draw(_valid_latents(limits, n)) if latent else draw(_valid_images(limits, n)).astype(np.uint8)
        return _tensor(array), fault, rf"^{what}: batch must be in 1\.\.{max_items}, got {n}$"
    # Values are checked on float32 data: uint8 images cannot hold a NaN or leave [0, 255].
    array = valid.astype(np.float32) / (255 if valid.dtype == np.uint8 else 1)
    if fault == "nonfinite":
        flat = array.reshape(-1)
        spots = draw(st.lists(st.integers(0, flat.size - 1), min_size=1, max_size=3))
        flat[spots] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        return _tensor(array), fault, rf"^{what}: item \d+ holds a NaN or infinite value$"
    # range: finite values the model does not take
    flat = array.reshape(-1)
    spot = draw(st.integers(0, flat.size - 1))
    if latent:
        flat[spot] = draw(st.sampled_from([1, -1])) * draw(st.floats(1.001e4, 3e38))
        return _tensor(array), fault, rf"^{what}: values must lie within"
    flat[spot] = draw(st.one_of(st.floats(-3e38, -1e-6), st.floats(1.000001, 3e38)))
    return _tensor(array), fault, rf"^{what}: float32 pixel values must lie in \[0, 1\]"


# --- cases per RPC -----------------------------------------------------------------------------------


def _ref(limits: Limits) -> pb.ModelRef:
    return pb.ModelRef(name=limits.model)


@st.composite
def _bad_model(draw: st.DrawFn, limits: Limits) -> tuple[pb.ModelRef, str, str]:
    """A reference to a model or version the server does not have."""
    if draw(st.booleans()):
        name = draw(st.text(min_size=1, max_size=40).filter(lambda n: n != limits.model))
        return (
            pb.ModelRef(name=name, version=draw(st.integers(0, UINT32_MAX))),
            "unknown model",
            "^unknown model",
        )
    name = draw(st.sampled_from(["", limits.model]))
    version = draw(st.integers(2, UINT32_MAX))  # the repository under test holds version 1 only
    return pb.ModelRef(name=name, version=version), "unknown version", rf"has no version {version};"


@st.composite
def _bad_output_dtype(draw: st.DrawFn) -> int:
    return draw(st.one_of(st.integers(3, INT32_MAX), st.integers(-(2**31), -1)))


@st.composite
def encode_case(draw: st.DrawFn, limits: Limits) -> Case:
    request = pb.EncodeRequest(model=_ref(limits), images=_tensor(draw(_valid_images(limits))))
    kind = draw(st.sampled_from(["tensor", "model", "samples", "response_size"]))
    if kind == "tensor":
        tensor, fault, pattern = draw(_bad_tensor("images", limits, False, limits.max_request_items))
        request.images.CopyFrom(tensor)
        return Case("Encode", request, INVALID, pattern, f"images/{fault}")
    if kind == "model":
        ref, fault, pattern = draw(_bad_model(limits))
        request.model.CopyFrom(ref)
        return Case("Encode", request, NOT_FOUND, pattern, fault)
    if kind == "samples":
        request.samples = draw(st.integers(limits.max_posterior_samples + 1, UINT32_MAX))
        return Case(
            "Encode",
            request,
            INVALID,
            rf"^samples must be in 0\.\.{limits.max_posterior_samples}, got",
            "samples",
        )
    # as many items and posterior samples as allowed, whose mu, logvar and z exceed the message limit
    k = limits.max_posterior_samples
    n = limits.max_message_bytes // ((2 + k) * limits.latent_dim * 4) + 1
    request.images.CopyFrom(_tensor(draw(_valid_images(limits, n)).astype(np.uint8)))
    request.samples = k
    return Case(
        "Encode",
        request,
        INVALID,
        r"^the response would be \d+ bytes, over the server's limit",
        "response size",
    )


@st.composite
def decode_case(draw: st.DrawFn, limits: Limits) -> Case:
    request = pb.DecodeRequest(model=_ref(limits), latents=_tensor(draw(_valid_latents(limits))))
    kind = draw(st.sampled_from(["tensor", "model", "output_dtype", "response_size"]))
    if kind == "tensor":
        tensor, fault, pattern = draw(_bad_tensor("latents", limits, True, limits.max_request_items))
        request.latents.CopyFrom(tensor)
        return Case("Decode", request, INVALID, pattern, f"latents/{fault}")
    if kind == "model":
        ref, fault, pattern = draw(_bad_model(limits))
        request.model.CopyFrom(ref)
        return Case("Decode", request, NOT_FOUND, pattern, fault)
    if kind == "output_dtype":
        request.output_dtype = draw(_bad_output_dtype())
        return Case(
            "Decode", request, INVALID, r"^output_dtype must be DTYPE_FLOAT32 or DTYPE_UINT8", "output_dtype"
        )
    n = limits.max_message_bytes // (4 * math.prod(limits.image_shape)) + 1
    request.latents.CopyFrom(_tensor(draw(_valid_latents(limits, n))))
    return Case("Decode", request, INVALID, r"^the response would be \d+ bytes", "response size")


@st.composite
def sample_case(draw: st.DrawFn, limits: Limits, method: str = "Sample") -> Case:
    stream = method == "SampleStream"
    request = pb.SampleRequest(model=_ref(limits), n=draw(st.integers(1, 4)))
    kinds = ["model", "n", "temperature", "output_dtype"] + ([] if stream else ["response_size"])
    kind = draw(st.sampled_from(kinds))
    if kind == "model":
        ref, fault, pattern = draw(_bad_model(limits))
        request.model.CopyFrom(ref)
        return Case(method, request, NOT_FOUND, pattern, fault)
    if kind == "n":
        high = limits.max_stream_items if stream else limits.max_request_items
        request.n = draw(st.one_of(st.just(0), st.integers(high + 1, UINT32_MAX)))
        return Case(method, request, INVALID, rf"^n must be in 1\.\.{high}, got {request.n}$", "n")
    if kind == "temperature":
        request.temperature = draw(
            st.one_of(st.floats(max_value=-1e-30), st.floats(min_value=10.001), st.just(math.nan))
        )
        return Case(method, request, INVALID, r"^temperature must be in 0\.\.10", "temperature")
    if kind == "output_dtype":
        request.output_dtype = draw(_bad_output_dtype())
        return Case(method, request, INVALID, r"^output_dtype must be", "output_dtype")
    request.n = limits.max_message_bytes // (4 * math.prod(limits.image_shape)) + 1
    return Case(method, request, INVALID, r"^the response would be \d+ bytes", "response size")


@st.composite
def reconstruct_case(draw: st.DrawFn, limits: Limits) -> Case:
    request = pb.ReconstructRequest(model=_ref(limits), images=_tensor(draw(_valid_images(limits))))
    kind = draw(st.sampled_from(["tensor", "model", "output_dtype"]))
    if kind == "tensor":
        tensor, fault, pattern = draw(_bad_tensor("images", limits, False, limits.max_request_items))
        request.images.CopyFrom(tensor)
        return Case("Reconstruct", request, INVALID, pattern, f"images/{fault}")
    if kind == "model":
        ref, fault, pattern = draw(_bad_model(limits))
        request.model.CopyFrom(ref)
        return Case("Reconstruct", request, NOT_FOUND, pattern, fault)
    request.output_dtype = draw(_bad_output_dtype())
    return Case("Reconstruct", request, INVALID, r"^output_dtype must be", "output_dtype")


@st.composite
def interpolate_case(draw: st.DrawFn, limits: Limits) -> Case:
    request = pb.InterpolateRequest(model=_ref(limits), steps=draw(st.integers(2, 8)))
    latent = draw(st.booleans())
    field = "latents" if latent else "images"
    ends = draw(_valid_latents(limits, 2) if latent else _valid_images(limits, 2))
    getattr(request, field).CopyFrom(_tensor(ends))
    kind = draw(st.sampled_from(["tensor", "endpoints", "model", "steps", "method", "output_dtype"]))
    if kind == "tensor":
        tensor, fault, pattern = draw(_bad_tensor(field, limits, latent, 2))
        getattr(request, field).CopyFrom(tensor)
        getattr(request, field).SetInParent()  # an empty tensor still selects its oneof member
        return Case("Interpolate", request, INVALID, pattern, f"{field}/{fault}")
    if kind == "endpoints":
        if draw(st.booleans()):
            request.ClearField("endpoints")
            return Case(
                "Interpolate",
                request,
                INVALID,
                r"^endpoints: set images \[2, C, H, W\] or latents",
                "no endpoints",
            )
        one = ends[:1]
        getattr(request, field).CopyFrom(_tensor(one))
        return Case(
            "Interpolate",
            request,
            INVALID,
            rf"^{field}: interpolation needs exactly 2 endpoints, got 1$",
            "one endpoint",
        )
    if kind == "model":
        ref, fault, pattern = draw(_bad_model(limits))
        request.model.CopyFrom(ref)
        return Case("Interpolate", request, NOT_FOUND, pattern, fault)
    if kind == "steps":
        request.steps = draw(
            st.one_of(st.integers(0, 1), st.integers(limits.max_request_items + 1, UINT32_MAX))
        )
        return Case(
            "Interpolate",
            request,
            INVALID,
            rf"^steps must be in 2\.\.{limits.max_request_items}, got",
            "steps",
        )
    if kind == "method":
        request.method = draw(st.one_of(st.integers(3, INT32_MAX), st.integers(-(2**31), -1)))
        return Case(
            "Interpolate", request, INVALID, r"^method must be INTERPOLATION_METHOD_LINEAR or", "method"
        )
    request.output_dtype = draw(_bad_output_dtype())
    return Case("Interpolate", request, INVALID, r"^output_dtype must be", "output_dtype")


@st.composite
def model_info_case(draw: st.DrawFn, limits: Limits) -> Case:
    ref, fault, pattern = draw(_bad_model(limits))
    return Case("GetModelInfo", pb.GetModelInfoRequest(model=ref), NOT_FOUND, pattern, fault)


REQUEST_TYPES: dict[str, type[Message]] = {
    "Encode": pb.EncodeRequest,
    "Decode": pb.DecodeRequest,
    "Sample": pb.SampleRequest,
    "SampleStream": pb.SampleRequest,
    "Reconstruct": pb.ReconstructRequest,
    "Interpolate": pb.InterpolateRequest,
    "ListModels": pb.ListModelsRequest,
    "GetModelInfo": pb.GetModelInfoRequest,
}


def _parses(data: bytes, kind: type[Message]) -> bool:
    try:
        kind.FromString(data)
    except DecodeError:
        return False
    return True


@st.composite
def undecodable_case(draw: st.DrawFn, limits: Limits) -> Case:
    """Bytes that are not a valid protobuf message of the method's request type."""
    method = draw(st.sampled_from(sorted(REQUEST_TYPES)))
    data = draw(st.binary(min_size=1, max_size=256))
    if _parses(data, REQUEST_TYPES[method]):
        data = b"\x07" + data  # field number 0 is never valid
    return Case(
        method,
        data,
        INVALID,
        rf"^the request is not a valid vae\.v1\.{REQUEST_TYPES[method].__name__}",
        "undecodable",
    )


@st.composite
def oversized_case(draw: st.DrawFn, limits: Limits) -> Case:
    """A request message larger than the server accepts: refused by the transport before any parsing.

    Kept out of malformed_cases: gRPC takes 0.1 s or more to refuse one (measured on loopback), far
    longer than any other fault, so these go in a smaller test of their own.
    """
    method = draw(st.sampled_from(["Encode", "Decode", "Reconstruct", "Interpolate"]))
    size = draw(st.integers(limits.max_message_bytes + 1, 2 * limits.max_message_bytes))
    tensor = pb.Tensor(shape=[size // 4], dtype=FLOAT32, data=bytes(size))
    request = REQUEST_TYPES[method](model=_ref(limits))
    getattr(request, "latents" if method == "Decode" else "images").CopyFrom(tensor)
    return Case(method, request, EXHAUSTED, r"[Rr]eceived message larger than max", "oversized")


def malformed_cases(limits: Limits) -> st.SearchStrategy[Case]:
    """Any malformed call to any RPC of vae.v1.VaeService, except oversized messages (oversized_case)."""
    makers: list[Callable[[Limits], st.SearchStrategy[Case]]] = [
        encode_case,
        decode_case,
        sample_case,
        lambda lim: sample_case(lim, "SampleStream"),
        reconstruct_case,
        interpolate_case,
        model_info_case,
        undecodable_case,
    ]
    return st.one_of(*(make(limits) for make in makers))
