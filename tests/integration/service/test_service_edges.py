"""Edges found from outside: over-long names, expired deadlines, and version files changed under a server."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from helpers import wait_until
from helpers.servers import RunningServer

from vae.v1 import vae_pb2 as pb
from vae.v1 import vae_pb2_grpc

BUNDLED = Path(__file__).resolve().parents[3] / "models"


def test_an_overlong_model_name_is_refused_briefly_and_the_channel_keeps_working(
    server: RunningServer,
) -> None:
    name = "m" * 20_000  # echoed whole, this overflowed the status trailer and broke the connection
    with grpc.insecure_channel(server.target) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetModelInfo(pb.GetModelInfoRequest(model=pb.ModelRef(name=name)), timeout=10)
        error = caught.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        details: str = error.details()  # type: ignore[attr-defined]
        assert details.startswith("model name must be 1-64 letters") and "(20000 characters)" in details
        assert len(details) < 300
        assert stub.ListModels(pb.ListModelsRequest(), timeout=10).models  # the same channel still answers


def test_a_deadline_that_passes_mid_batch_is_counted_once_as_deadline_exceeded(
    start_server: Callable[..., RunningServer],
) -> None:
    # The bundled model needs well over 50 ms for 4096 samples on any CPU, so the deadline passes
    # while the batch computes: grpc cancels the handler, which must count DEADLINE_EXCEEDED.
    server = start_server(
        BUNDLED, model="mnist", max_batch_items=4096, max_request_items=4096, max_queue_items=8192
    )
    with grpc.insecure_channel(server.target) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        stub.Sample(pb.SampleRequest(n=1), timeout=30)  # connected and warm
        with pytest.raises(grpc.RpcError) as caught:
            stub.Sample(pb.SampleRequest(n=4096), timeout=0.05)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]

    def counted(code: str) -> float:
        return server.metric("vae_requests_total", method="Sample", code=code)

    wait_until(lambda: counted("DEADLINE_EXCEEDED") == 1, timeout=10, what="the expired call counted")
    assert counted("CANCELLED") == 0


def test_a_loaded_version_whose_files_change_on_disk_stops_answering_loudly(
    tiny_model_repo: Path,
    tmp_path: Path,
    start_server: Callable[..., RunningServer],
    tiny_model_exporter: Callable[..., Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    repo = tmp_path / "models"
    shutil.copytree(tiny_model_repo, repo)
    tiny_model_exporter(repo, 2, seed=1)
    server = start_server(repo)
    version_2 = repo / "tiny" / "2"
    # Someone deletes version 2 and puts other weights under the same number.
    other = tiny_model_exporter(tmp_path / "elsewhere", 2, seed=2)
    shutil.rmtree(version_2)
    shutil.copytree(other, version_2)
    server.call(server.server.reload())

    assert "tiny version 2: its files changed on disk after it was loaded" in caplog.text
    assert server.metric("vae_model_files_changed_total", name="tiny", version="2") == 1
    assert server.metric("vae_model_info", name="tiny", version="2", provider="CPUExecutionProvider") == 0
    with grpc.insecure_channel(server.target) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        assert (info.version, list(info.versions)) == (1, [1])  # the default fell back to version 1
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetModelInfo(pb.GetModelInfoRequest(model=pb.ModelRef(name="tiny", version=2)), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    server.call(server.server.reload())  # refused once: a later look neither logs nor counts again
    assert server.metric("vae_model_files_changed_total", name="tiny", version="2") == 1


def test_a_touched_but_unchanged_version_keeps_answering(
    tiny_model_repo: Path, tmp_path: Path, start_server: Callable[..., RunningServer]
) -> None:
    repo = tmp_path / "models"
    shutil.copytree(tiny_model_repo, repo)
    server = start_server(repo)
    for file in (repo / "tiny" / "1").iterdir():
        file.touch()
    server.call(server.server.reload())
    assert server.metric("vae_model_files_changed_total", name="tiny", version="1") == 0
    with grpc.insecure_channel(server.target) as channel:
        info = vae_pb2_grpc.VaeServiceStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert info.version == 1


def test_a_response_the_client_refuses_leaves_no_error_in_the_server_log(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    # 64 images of 1x28x28 float32 are 200 KB: over a 64 KiB receive limit the client refuses them.
    small = [("grpc.max_receive_message_length", 64 * 1024)]
    with caplog.at_level("WARNING"), grpc.insecure_channel(server.target, options=small) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Sample(pb.SampleRequest(n=64), timeout=10)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert stub.ListModels(pb.ListModelsRequest(), timeout=10).models  # the channel still works
    assert [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")] == []
