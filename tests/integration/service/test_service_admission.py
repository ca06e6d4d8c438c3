"""Admission by time on the bundled model with default settings: bursts the CPU serves in time go
through whole; work that cannot finish before its deadline, or the server's, is refused at once."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers.servers import RunningServer

from service.config import ServiceConfig
from vae.v1 import vae_pb2 as pb
from vae.v1 import vae_pb2_grpc

BUNDLED = Path(__file__).resolve().parents[3] / "models"


@pytest.fixture(scope="module")
def default_server() -> Iterator[RunningServer]:
    """The bundled default model, every setting at its default but the loopback ports."""
    server = RunningServer(_defaults())
    yield server
    server.stop()


def _defaults(**options: float) -> ServiceConfig:
    return ServiceConfig(repo=BUNDLED, host="127.0.0.1", port=0, metrics_port=0, device="cpu", **options)


def _tensor(values: np.ndarray) -> pb.Tensor:
    return pb.Tensor(shape=values.shape, dtype=pb.DTYPE_FLOAT32, data=values.astype(np.float32).tobytes())


def _decode(latents: int) -> pb.DecodeRequest:
    return pb.DecodeRequest(latents=_tensor(np.random.default_rng(latents).standard_normal((latents, 32))))


def _callers(target: str, count: int, call: Callable[[vae_pb2_grpc.VaeServiceStub], object]) -> Counter[str]:
    codes: Counter[str] = Counter()
    lock = threading.Lock()

    def one() -> None:
        with grpc.insecure_channel(target) as channel:
            stub = vae_pb2_grpc.VaeServiceStub(channel)
            for _ in range(3):
                try:
                    call(stub)
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name  # type: ignore[attr-defined]
                with lock:
                    codes[code] += 1

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return codes


def test_eight_callers_of_1024_latents_are_all_served(default_server: RunningServer) -> None:
    # 8,192 latents queued at once: twice the item bound of old, a second or two of this CPU's work.
    request = _decode(1024)
    codes = _callers(default_server.target, 8, lambda stub: stub.Decode(request, timeout=30))
    assert codes == Counter({"OK": 24})


def test_score_that_cannot_finish_before_its_deadline_is_refused_before_computing(
    default_server: RunningServer,
) -> None:
    images = (np.random.default_rng(0).random((512, 1, 28, 28)) < 0.5).astype(np.float32)
    request = pb.ScoreRequest(images=_tensor(images), samples=1024)
    batches = default_server.metric("vae_batch_size_items_count", graph="decoder")
    expired = default_server.metric("vae_deadline_expired_total", graph="decoder")
    started = time.monotonic()
    with grpc.insecure_channel(default_server.target) as channel, pytest.raises(grpc.RpcError) as caught:
        # 524,288 decoder draws: minutes on this CPU, against a 10 s deadline.
        vae_pb2_grpc.VaeServiceStub(channel).Score(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "deadline would pass while queued" in (caught.value.details() or "")
    assert time.monotonic() - started < 5
    assert default_server.metric("vae_batch_size_items_count", graph="decoder") == batches
    assert default_server.metric("vae_deadline_expired_total", graph="decoder") == expired + 1


def test_the_server_bounds_calls_that_set_no_deadline(tmp_path: Path) -> None:
    server = RunningServer(_defaults(max_deadline_seconds=2))
    try:
        images = np.zeros((64, 1, 28, 28), np.float32)
        request = pb.ScoreRequest(images=_tensor(images), samples=1024)
        with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as caught:
            vae_pb2_grpc.VaeServiceStub(channel).Score(request)  # no deadline of its own
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        server.stop()
