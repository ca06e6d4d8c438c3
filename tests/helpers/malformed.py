"""Hypothesis strategies for malformed vae.v1 requests, each with the status and message it must get.

Every case starts from a valid request for the served model and breaks exactly one thing, drawn at
random: a tensor's dtype, shape, byte length or values, a count, an enum, the model reference, the
size of the message, labels sent to the (unconditional) model under test, or the protobuf encoding
itself. Knowing which thing broke is what lets the test check that the server's message names it,
not merely that some error came back.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError, Message
from hypothesis import strategies as st

from repository.manifest import NAME_PATTERN
from service.config import ServiceConfig
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
    max_score_samples: int = ServiceConfig.max_score_samples


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

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # hypothesis's printer would otherwise show every dataclass field

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


# Strategies are built once: building one per draw costs hypothesis more than the server spends
# answering the request. Arrays come from numpy seeded by one draw, for the same reason.
SEEDS = st.integers(0, UINT32_MAX)
BAD_ENUMS = st.one_of(st.integers(3, INT32_MAX), st.integers(-(2**31), -1))
NAMES = st.text(min_size=1, max_size=12)
MODEL_NAMES = st.from_regex(NAME_PATTERN, fullmatch=True)
VERSIONS = st.integers(0, UINT32_MAX)
MISSING_VERSIONS = st.integers(2, UINT32_MAX)  # the repository under test holds version 1 only
HUGE_DIMS = st.integers(2**31, 2**62)
NON_POSITIVE_DIMS = st.integers(-(2**40), 0)
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
OUT_OF_RANGE_PIXELS = st.one_of(st.floats(-3e38, -1e-6), st.floats(1.000001, 3e38))
OUT_OF_RANGE_LATENTS = st.floats(1.001e4, 3e38)
BAD_TEMPERATURES = st.one_of(st.floats(max_value=-1e-30), st.floats(min_value=10.001), st.just(math.nan))
TENSOR_FAULTS = st.sampled_from(
    ["missing", "dtype", "dims", "bytes", "huge_dims", "shape", "batch", "nonfinite", "range"]
)
ENCODE_FAULTS = st.sampled_from(["tensor", "model", "samples", "labels", "response_size"])
DECODE_FAULTS = st.sampled_from(["tensor", "model", "output_dtype", "labels", "response_size"])
SAMPLE_FAULTS = st.sampled_from(["model", "n", "temperature", "output_dtype", "labels", "response_size"])
STREAM_FAULTS = st.sampled_from(["model", "n", "temperature", "output_dtype", "labels"])
RECONSTRUCT_FAULTS = st.sampled_from(["tensor", "model", "output_dtype", "labels"])
SCORE_FAULTS = st.sampled_from(["tensor", "model", "samples", "labels"])
INTERPOLATE_FAULTS = st.sampled_from(
    ["tensor", "endpoints", "model", "steps", "method", "output_dtype", "labels"]
)


def _rng(draw: st.DrawFn) -> np.random.Generator:
    """The numpy generator of one case: its arrays, sizes and positions (one draw, replayed by hypothesis)."""
    return np.random.default_rng(draw(SEEDS))


def _valid_images(rng: np.random.Generator, limits: Limits, batch: int | None = None) -> np.ndarray:
    n = int(rng.integers(1, 5)) if batch is None else batch
    if rng.random() < 0.5:
        return rng.integers(0, 256, (n, *limits.image_shape), dtype=np.uint8)
    return rng.random((n, *limits.image_shape), dtype=np.float32)


def _valid_latents(rng: np.random.Generator, limits: Limits, batch: int | None = None) -> np.ndarray:
    n = int(rng.integers(1, 5)) if batch is None else batch
    return rng.standard_normal((n, limits.latent_dim), dtype=np.float32)


# --- a broken tensor --------------------------------------------------------------------------------

TensorFault = tuple[pb.Tensor, str, str]  # (tensor, fault name, message pattern)


def _bad_tensor(
    draw: st.DrawFn, rng: np.random.Generator, what: str, limits: Limits, latent: bool
) -> TensorFault:
    """A tensor for field `what` (images or latents) with one thing wrong."""
    item_shape = (limits.latent_dim,) if latent else limits.image_shape
    max_items = limits.max_request_items
    n = int(rng.integers(1, min(4, max_items) + 1))  # within the batch limit: one fault at a time
    valid = _valid_latents(rng, limits, n) if latent else _valid_images(rng, limits, n)
    good = _tensor(valid)
    fault = draw(TENSOR_FAULTS)
    if fault == "missing":
        return pb.Tensor(), fault, rf"^{what}: missing"
    if fault == "dtype":
        # Unspecified, unknown values, and uint8 where only float32 is taken (latents).
        dtype = draw(
            st.sampled_from([pb.DTYPE_UNSPECIFIED, UINT8] if latent else [pb.DTYPE_UNSPECIFIED]) | BAD_ENUMS
        )
        return pb.Tensor(shape=good.shape, dtype=dtype, data=good.data), fault, rf"^{what}: dtype must be"
    if fault == "dims":
        shape = list(good.shape)[: rng.integers(0, len(good.shape) + 1)]  # [] has no dimension at all
        if shape:
            shape[rng.integers(0, len(shape))] = draw(NON_POSITIVE_DIMS)
        return (
            pb.Tensor(shape=shape, dtype=good.dtype, data=good.data),
            fault,
            rf"^{what}: every dimension .* at least 1",
        )
    if fault == "bytes":
        delta = int(rng.integers(-len(good.data), 65)) or 1
        data = good.data[:delta] if delta < 0 else good.data + bytes(delta)
        return (
            pb.Tensor(shape=good.shape, dtype=good.dtype, data=data),
            fault,
            rf"^{what}: shape .* needs \d+ bytes, got {len(data)}$",
        )
    if fault == "huge_dims":
        shape = list(good.shape)
        shape[rng.integers(0, len(shape))] = draw(HUGE_DIMS)
        return (
            pb.Tensor(shape=shape, dtype=good.dtype, data=good.data),
            fault,
            rf"^{what}: shape .* needs \d+ bytes",
        )
    if fault == "shape":
        # Consistent bytes for a shape the model does not take: another rank, or other item dims.
        shape = [int(rng.integers(1, 5)), *rng.integers(1, 17, rng.integers(0, 4))]
        if tuple(shape[1:]) == item_shape:
            shape.append(2)
        expected = re.escape(", ".join(["batch", *map(str, item_shape)]))
        return _tensor(np.zeros(shape, np.float32)), fault, rf"^{what}: shape must be \[{expected}\], got"
    if fault == "batch":
        n = max_items + int(rng.integers(1, 9))
        array = _valid_latents(rng, limits, n) if latent else _valid_images(rng, limits, n).astype(np.uint8)
        return _tensor(array), fault, rf"^{what}: batch must be in 1\.\.{max_items}, got {n}$"
    # Values are checked on float32 data: uint8 images cannot hold a NaN or leave [0, 255].
    array = valid.astype(np.float32) / (255 if valid.dtype == np.uint8 else 1)
    flat = array.reshape(-1)
    spots = rng.integers(0, flat.size, rng.integers(1, 4))
    if fault == "nonfinite":
        flat[spots] = draw(NON_FINITE)
        return _tensor(array), fault, rf"^{what}: item \d+ holds a NaN or infinite value$"
    if latent:
        flat[spots] = rng.choice([1, -1]) * draw(OUT_OF_RANGE_LATENTS)
        return _tensor(array), fault, rf"^{what}: values must lie within"
    flat[spots] = draw(OUT_OF_RANGE_PIXELS)
    return _tensor(array), fault, rf"^{what}: float32 pixel values must lie in \[0, 1\]"


# --- cases per RPC -----------------------------------------------------------------------------------


def _ref(limits: Limits) -> pb.ModelRef:
    return pb.ModelRef(name=limits.model)


def _bad_model(draw: st.DrawFn, limits: Limits) -> tuple[pb.ModelRef, frozenset[str], str, str]:
    """A reference to a model or version the server does not have: (ref, codes, pattern, fault)."""
    if draw(st.booleans()):
        name = draw(st.one_of(MODEL_NAMES, NAMES))
        name = name + "x" if name == limits.model else name
        ref = pb.ModelRef(name=name, version=draw(VERSIONS))
        if not NAME_PATTERN.fullmatch(name):
            # No model can have it: refused as such, without echoing an unbounded string.
            return ref, INVALID, "^model name must be 1-64 letters", "invalid model name"
        return ref, NOT_FOUND, "^unknown model", "unknown model"
    version = draw(MISSING_VERSIONS)
    name = limits.model if version % 2 else ""  # both spellings of the default model
    return (
        pb.ModelRef(name=name, version=version),
        NOT_FOUND,
        rf"has no version {version};",
        "unknown version",
    )


def _model_case(draw: st.DrawFn, limits: Limits, method: str, request: Message) -> Case:
    """`request` naming a model or version the server does not have: NOT_FOUND, or INVALID_ARGUMENT
    for a name no model can have."""
    ref, codes, pattern, fault = _bad_model(draw, limits)
    request.model.CopyFrom(ref)
    return Case(method, request, codes, pattern, fault)


def _tensor_case(
    draw: st.DrawFn,
    rng: np.random.Generator,
    limits: Limits,
    method: str,
    request: Message,
    field: str,
    latent: bool,
) -> Case:
    """`request` with a malformed tensor in `field`: INVALID_ARGUMENT naming the field."""
    tensor, fault, pattern = _bad_tensor(draw, rng, field, limits, latent)
    getattr(request, field).CopyFrom(tensor)
    # An empty tensor stays on the wire; for Interpolate that selects the oneof member.
    getattr(request, field).SetInParent()
    return Case(method, request, INVALID, pattern, f"{field}/{fault}")


def _labels_case(rng: np.random.Generator, limits: Limits, method: str, request: Message) -> Case:
    """`request` with class labels, which the unconditional model under test takes none of."""
    request.labels.extend(rng.integers(0, 10, rng.integers(1, 5)).tolist())
    pattern = rf"^labels: model '{re.escape(limits.model)}' is unconditional \(it has no classes\)"
    return Case(method, request, INVALID, pattern, "labels")


def _images_over_message_limit(limits: Limits) -> int:
    """The fewest float32 images whose response is over the server's message limit."""
    return limits.max_message_bytes // (4 * math.prod(limits.image_shape)) + 1


def encode_case(draw: st.DrawFn, limits: Limits) -> Case:
    rng = _rng(draw)
    request = pb.EncodeRequest(model=_ref(limits), images=_tensor(_valid_images(rng, limits)))
    kind = draw(ENCODE_FAULTS)
    if kind == "tensor":
        return _tensor_case(draw, rng, limits, "Encode", request, "images", False)
    if kind == "model":
        return _model_case(draw, limits, "Encode", request)
    if kind == "samples":
        request.samples = draw(st.integers(limits.max_posterior_samples + 1, UINT32_MAX))
        pattern = rf"^samples must be in 0\.\.{limits.max_posterior_samples}, got {request.samples}$"
        return Case("Encode", request, INVALID, pattern, "samples")
    if kind == "labels":
        return _labels_case(rng, limits, "Encode", request)
    # As many posterior samples as allowed, for enough images that mu, logvar and z exceed the limit.
    k = limits.max_posterior_samples
    n = limits.max_message_bytes // ((2 + k) * limits.latent_dim * 4) + 1
    request.images.CopyFrom(_tensor(_valid_images(rng, limits, n).astype(np.uint8)))
    request.samples = k
    return Case(
        "Encode",
        request,
        INVALID,
        r"^the response would be \d+ bytes, over the server's limit",
        "response size",
    )


def decode_case(draw: st.DrawFn, limits: Limits) -> Case:
    rng = _rng(draw)
    request = pb.DecodeRequest(model=_ref(limits), latents=_tensor(_valid_latents(rng, limits)))
    kind = draw(DECODE_FAULTS)
    if kind == "tensor":
        return _tensor_case(draw, rng, limits, "Decode", request, "latents", True)
    if kind == "model":
        return _model_case(draw, limits, "Decode", request)
    if kind == "output_dtype":
        request.output_dtype = draw(BAD_ENUMS)
        return Case(
            "Decode", request, INVALID, r"^output_dtype must be DTYPE_FLOAT32 or DTYPE_UINT8", "output_dtype"
        )
    if kind == "labels":
        return _labels_case(rng, limits, "Decode", request)
    request.latents.CopyFrom(_tensor(_valid_latents(rng, limits, _images_over_message_limit(limits))))
    return Case("Decode", request, INVALID, r"^the response would be \d+ bytes", "response size")


def sample_case(draw: st.DrawFn, limits: Limits, method: str = "Sample") -> Case:
    rng = _rng(draw)
    stream = method == "SampleStream"
    request = pb.SampleRequest(model=_ref(limits), n=draw(st.integers(1, 4)))
    kind = draw(STREAM_FAULTS if stream else SAMPLE_FAULTS)  # a stream is chunked: no size limit
    if kind == "model":
        return _model_case(draw, limits, method, request)
    if kind == "n":
        high = limits.max_stream_items if stream else limits.max_request_items
        request.n = draw(st.just(0) | st.integers(high + 1, UINT32_MAX))
        return Case(method, request, INVALID, rf"^n must be in 1\.\.{high}, got {request.n}$", "n")
    if kind == "temperature":
        request.temperature = draw(BAD_TEMPERATURES)
        return Case(method, request, INVALID, r"^temperature must be in 0\.\.10", "temperature")
    if kind == "output_dtype":
        request.output_dtype = draw(BAD_ENUMS)
        return Case(method, request, INVALID, r"^output_dtype must be", "output_dtype")
    if kind == "labels":
        return _labels_case(rng, limits, method, request)
    request.n = _images_over_message_limit(limits)
    return Case(method, request, INVALID, r"^the response would be \d+ bytes", "response size")


def reconstruct_case(draw: st.DrawFn, limits: Limits) -> Case:
    rng = _rng(draw)
    request = pb.ReconstructRequest(model=_ref(limits), images=_tensor(_valid_images(rng, limits)))
    kind = draw(RECONSTRUCT_FAULTS)
    if kind == "tensor":
        return _tensor_case(draw, rng, limits, "Reconstruct", request, "images", False)
    if kind == "model":
        return _model_case(draw, limits, "Reconstruct", request)
    if kind == "labels":
        return _labels_case(rng, limits, "Reconstruct", request)
    request.output_dtype = draw(BAD_ENUMS)
    return Case("Reconstruct", request, INVALID, r"^output_dtype must be", "output_dtype")


def interpolate_case(draw: st.DrawFn, limits: Limits) -> Case:
    rng = _rng(draw)
    request = pb.InterpolateRequest(model=_ref(limits), steps=int(rng.integers(2, 9)))
    latent = draw(st.booleans())
    field = "latents" if latent else "images"
    ends = _valid_latents(rng, limits, 2) if latent else _valid_images(rng, limits, 2)
    getattr(request, field).CopyFrom(_tensor(ends))
    kind = draw(INTERPOLATE_FAULTS)
    if kind == "tensor":
        # The endpoints pass the batch check of every tensor before their count is checked (below).
        return _tensor_case(draw, rng, limits, "Interpolate", request, field, latent)
    if kind == "endpoints":
        if draw(st.booleans()):
            request.ClearField("endpoints")
            pattern = r"^endpoints: set images \[2, C, H, W\] or latents"
            return Case("Interpolate", request, INVALID, pattern, "no endpoints")
        getattr(request, field).CopyFrom(_tensor(ends[:1]))
        pattern = rf"^{field}: interpolation needs exactly 2 endpoints, got 1$"
        return Case("Interpolate", request, INVALID, pattern, "one endpoint")
    if kind == "model":
        return _model_case(draw, limits, "Interpolate", request)
    if kind == "steps":
        request.steps = draw(st.integers(0, 1) | st.integers(limits.max_request_items + 1, UINT32_MAX))
        pattern = rf"^steps must be in 2\.\.{limits.max_request_items}, got {request.steps}$"
        return Case("Interpolate", request, INVALID, pattern, "steps")
    if kind == "method":
        request.method = draw(BAD_ENUMS)
        return Case(
            "Interpolate", request, INVALID, r"^method must be INTERPOLATION_METHOD_LINEAR or", "method"
        )
    if kind == "labels":
        return _labels_case(rng, limits, "Interpolate", request)
    request.output_dtype = draw(BAD_ENUMS)
    return Case("Interpolate", request, INVALID, r"^output_dtype must be", "output_dtype")


def score_case(draw: st.DrawFn, limits: Limits) -> Case:
    rng = _rng(draw)
    request = pb.ScoreRequest(model=_ref(limits), images=_tensor(_valid_images(rng, limits)), samples=2)
    kind = draw(SCORE_FAULTS)
    if kind == "tensor":
        return _tensor_case(draw, rng, limits, "Score", request, "images", False)
    if kind == "model":
        return _model_case(draw, limits, "Score", request)
    if kind == "labels":
        return _labels_case(rng, limits, "Score", request)
    request.samples = draw(st.just(0) | st.integers(limits.max_score_samples + 1, UINT32_MAX))
    pattern = rf"^samples must be in 1\.\.{limits.max_score_samples}, got {request.samples}$"
    return Case("Score", request, INVALID, pattern, "samples")


def model_info_case(draw: st.DrawFn, limits: Limits) -> Case:
    ref, codes, pattern, fault = _bad_model(draw, limits)
    return Case("GetModelInfo", pb.GetModelInfoRequest(model=ref), codes, pattern, fault)


REQUEST_TYPES: dict[str, type[Message]] = {
    "Encode": pb.EncodeRequest,
    "Decode": pb.DecodeRequest,
    "Sample": pb.SampleRequest,
    "SampleStream": pb.SampleRequest,
    "Reconstruct": pb.ReconstructRequest,
    "Interpolate": pb.InterpolateRequest,
    "Score": pb.ScoreRequest,
    "ListModels": pb.ListModelsRequest,
    "GetModelInfo": pb.GetModelInfoRequest,
}


def _parses(data: bytes, kind: type[Message]) -> bool:
    try:
        kind.FromString(data)
    except DecodeError:
        return False
    return True


def undecodable_case(draw: st.DrawFn, limits: Limits) -> Case:
    """Bytes that are not a valid protobuf message of the method's request type."""
    method = draw(st.sampled_from(sorted(REQUEST_TYPES)))
    rng = _rng(draw)
    data = rng.bytes(int(rng.integers(1, 257)))
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


MAKERS: dict[str, Callable[[st.DrawFn, Limits], Case]] = {
    "Encode": encode_case,
    "Decode": decode_case,
    "Sample": sample_case,
    "SampleStream": lambda draw, limits: sample_case(draw, limits, "SampleStream"),
    "Reconstruct": reconstruct_case,
    "Interpolate": interpolate_case,
    "Score": score_case,
    "GetModelInfo": model_info_case,
    "undecodable": undecodable_case,
}

_METHODS = st.sampled_from(sorted(MAKERS))


@st.composite
def malformed_cases(draw: st.DrawFn, limits: Limits) -> Case:
    """Any malformed call to any RPC of vae.v1.VaeService, except oversized messages (oversized_case).

    The helpers above are plain functions of `draw`, not strategies: building strategy objects for
    every draw costs hypothesis more than sending the request costs the server.
    """
    return MAKERS[draw(_METHODS)](draw, limits)
