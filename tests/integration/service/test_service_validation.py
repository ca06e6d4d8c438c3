"""Every validation error reaches the client with the right status code and a message saying what is wrong."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from helpers.servers import RunningServer

from vae.v1 import vae_pb2 as pb
from vae.v1 import vae_pb2_grpc

INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
F32, U8 = pb.DTYPE_FLOAT32, pb.DTYPE_UINT8


def tensor(values: np.ndarray, shape: list[int] | None = None, dtype: int | None = None) -> pb.Tensor:
    kind = dtype if dtype is not None else (U8 if values.dtype == np.uint8 else F32)
    return pb.Tensor(shape=list(values.shape) if shape is None else shape, dtype=kind, data=values.tobytes())


def z(n: int = 1, value: float = 0.0) -> pb.Tensor:
    return tensor(np.full((n, 8), value, np.float32))


def x(n: int = 1, value: float = 0.5) -> pb.Tensor:
    return tensor(np.full((n, 1, 28, 28), value, np.float32))


CASES: list[tuple[str, str, Any, grpc.StatusCode, str]] = [
    # (id, rpc, request, code, exact message or the start of it)
    (
        "decode-missing",
        "Decode",
        pb.DecodeRequest(),
        INVALID,
        "latents: missing; set its shape, dtype and data",
    ),
    (
        "decode-dim",
        "Decode",
        pb.DecodeRequest(latents=tensor(np.zeros((2, 5), np.float32))),
        INVALID,
        "latents: shape must be [batch, 8], got [2, 5]",
    ),
    (
        "decode-bytes",
        "Decode",
        pb.DecodeRequest(latents=tensor(np.zeros((2, 8), np.float32), shape=[3, 8])),
        INVALID,
        "latents: shape [3, 8] of DTYPE_FLOAT32 needs 96 bytes, got 64",
    ),
    (
        "decode-dtype",
        "Decode",
        pb.DecodeRequest(latents=tensor(np.zeros((1, 8), np.uint8))),
        INVALID,
        "latents: dtype must be DTYPE_FLOAT32, got DTYPE_UINT8",
    ),
    (
        "decode-nan",
        "Decode",
        pb.DecodeRequest(latents=z(2, np.nan)),
        INVALID,
        "latents: item 0 holds a NaN or infinite value",
    ),
    (
        "decode-huge",
        "Decode",
        pb.DecodeRequest(latents=z(1, 1e9)),
        INVALID,
        "latents: values must lie within ±10000; item 0 does not",
    ),
    (
        "decode-too-many",
        "Decode",
        pb.DecodeRequest(latents=z(65)),
        INVALID,
        "latents: batch must be in 1..64, got 65",
    ),
    (
        "decode-empty",
        "Decode",
        pb.DecodeRequest(latents=pb.Tensor(shape=[0, 8], dtype=F32)),
        INVALID,
        "latents: every dimension of the shape must be at least 1, got [0, 8]",
    ),
    (
        "decode-output-dtype",
        "Decode",
        pb.DecodeRequest(latents=z(), output_dtype=5),
        INVALID,
        "output_dtype must be DTYPE_FLOAT32 or DTYPE_UINT8, got unknown dtype 5",
    ),
    (
        "encode-range",
        "Encode",
        pb.EncodeRequest(images=x(2, 1.5)),
        INVALID,
        "images: float32 pixel values must lie in [0, 1]; item 0 spans [1.5, 1.5]",
    ),
    (
        "encode-shape",
        "Encode",
        pb.EncodeRequest(images=tensor(np.zeros((1, 28, 28), np.uint8))),
        INVALID,
        "images: shape must be [batch, 1, 28, 28], got [1, 28, 28]",
    ),
    (
        "encode-k",
        "Encode",
        pb.EncodeRequest(images=x(), samples=65),
        INVALID,
        "samples must be in 0..64, got 65",
    ),
    ("sample-zero", "Sample", pb.SampleRequest(n=0), INVALID, "n must be in 1..64, got 0"),
    ("sample-too-many", "Sample", pb.SampleRequest(n=65), INVALID, "n must be in 1..64, got 65"),
    (
        "sample-temperature",
        "Sample",
        pb.SampleRequest(n=1, temperature=-1),
        INVALID,
        "temperature must be in 0..10, got -1.0",
    ),
    (
        "sample-temperature-nan",
        "Sample",
        pb.SampleRequest(n=1, temperature=float("nan")),
        INVALID,
        "temperature must be in 0..10, got nan",
    ),
    ("reconstruct-missing", "Reconstruct", pb.ReconstructRequest(), INVALID, "images: missing"),
    (
        "interpolate-steps",
        "Interpolate",
        pb.InterpolateRequest(latents=z(2), steps=1),
        INVALID,
        "steps must be in 2..64, got 1",
    ),
    (
        "interpolate-no-ends",
        "Interpolate",
        pb.InterpolateRequest(steps=3),
        INVALID,
        "endpoints: set images [2, C, H, W] or latents [2, D]",
    ),
    (
        "interpolate-three-ends",
        "Interpolate",
        pb.InterpolateRequest(latents=z(3), steps=3),
        INVALID,
        "latents: interpolation needs exactly 2 endpoints, got 3",
    ),
    (
        "interpolate-one-end",
        "Interpolate",
        pb.InterpolateRequest(images=x(1), steps=3),
        INVALID,
        "images: interpolation needs exactly 2 endpoints, got 1",
    ),
    (
        "interpolate-method",
        "Interpolate",
        pb.InterpolateRequest(latents=z(2), steps=3, method=7),
        INVALID,
        "method must be INTERPOLATION_METHOD_LINEAR or INTERPOLATION_METHOD_SPHERICAL, got 7",
    ),
    (
        "unknown-model",
        "Decode",
        pb.DecodeRequest(model=pb.ModelRef(name="mnist"), latents=z()),
        NOT_FOUND,
        "unknown model 'mnist'; loaded models: tiny",
    ),
    (
        "unknown-version",
        "Sample",
        pb.SampleRequest(model=pb.ModelRef(version=9), n=1),
        NOT_FOUND,
        "model 'tiny' has no version 9; loaded versions: 1",
    ),
    (
        "info-unknown",
        "GetModelInfo",
        pb.GetModelInfoRequest(model=pb.ModelRef(name="x", version=1)),
        NOT_FOUND,
        "unknown model 'x'",
    ),
]


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[vae_pb2_grpc.VaeServiceStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield vae_pb2_grpc.VaeServiceStub(channel)


@pytest.mark.parametrize(
    ("rpc", "request_", "code", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_invalid_requests(
    stub: vae_pb2_grpc.VaeServiceStub,
    server: RunningServer,
    rpc: str,
    request_: Any,
    code: grpc.StatusCode,
    message: str,
) -> None:
    before = server.metric("vae_requests_total", method=rpc, code=code.name)
    with pytest.raises(grpc.RpcError) as caught:
        getattr(stub, rpc)(request_, timeout=10)
    error: Any = caught.value
    assert error.code() == code
    assert error.details().startswith(message)
    assert server.metric("vae_requests_total", method=rpc, code=code.name) == before + 1


def test_the_stream_validates_before_sending_anything(stub: vae_pb2_grpc.VaeServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.SampleStream(pb.SampleRequest(n=0), timeout=10))
    error: Any = caught.value
    assert (error.code(), error.details()) == (INVALID, "n must be in 1..1000000, got 0")


def test_the_server_still_serves_after_bad_requests(stub: vae_pb2_grpc.VaeServiceStub) -> None:
    for _, rpc, request, _, _ in CASES:
        with pytest.raises(grpc.RpcError):
            getattr(stub, rpc)(request, timeout=10)
    response = stub.Sample(pb.SampleRequest(n=2, seed=1), timeout=10)
    assert list(response.images.shape) == [2, 1, 28, 28]


def test_requests_before_the_models_are_loaded_are_unavailable(
    tiny_model_repo: Any, start_server: Callable[..., RunningServer]
) -> None:
    cold = start_server(tiny_model_repo, load=False)
    with grpc.insecure_channel(cold.target) as channel, pytest.raises(grpc.RpcError) as caught:
        vae_pb2_grpc.VaeServiceStub(channel).Sample(pb.SampleRequest(n=1), timeout=10)
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == "models are still loading; retry when health reports SERVING"
