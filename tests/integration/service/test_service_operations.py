"""Batching, health, reflection and the metrics endpoint of a real server."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from helpers.servers import RunningServer
from prometheus_client.parser import text_string_to_metric_families

from client.clients import AsyncVaeClient, VaeClient

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def patient(tiny_model_repo: Path, start_server: Callable[..., RunningServer]) -> RunningServer:
    """Waits up to half a second for a batch to fill: concurrent requests always share batches."""
    return start_server(
        tiny_model_repo, max_delay_ms=500, max_batch_items=16, max_request_items=16, max_queue_items=16
    )


def batches(server: RunningServer, graph: str = "decoder") -> tuple[float, float]:
    """(batches run, items in them) so far."""
    count = server.metric("vae_batch_size_items_count", graph=graph)
    return count, server.metric("vae_batch_size_items_sum", graph=graph)


def test_concurrent_requests_are_merged_into_batches(patient: RunningServer) -> None:
    count, total = batches(patient)

    async def main() -> list[Any]:
        async with AsyncVaeClient(patient.target) as client:
            z = np.random.default_rng(0).standard_normal((16, 8), dtype=np.float32)
            return await asyncio.gather(*(client.decode(z[i : i + 1]) for i in range(16)))

    results = asyncio.run(main())
    after_count, after_total = batches(patient)
    assert after_total - total == 16
    assert after_count - count < 16  # some batch held more than one request's item
    assert patient.metric("vae_batch_size_items_bucket", graph="decoder", le="1.0") < after_count
    with VaeClient(patient.target) as client:
        z = np.random.default_rng(0).standard_normal((16, 8), dtype=np.float32)
        np.testing.assert_allclose(
            np.concatenate([r.images for r in results]), client.decode(z).images, atol=1e-6
        )


def test_seeded_sample_is_identical_alone_and_under_concurrent_load(patient: RunningServer) -> None:
    async def main() -> tuple[Any, Any]:
        async with AsyncVaeClient(patient.target) as client:
            alone = await client.sample(3, seed=1234)
            noise = [client.sample(2) for _ in range(6)] + [client.sample(1, seed=s) for s in range(4)]
            crowded, *_ = await asyncio.gather(client.sample(3, seed=1234), *noise)
            return alone, crowded

    alone, crowded = asyncio.run(main())
    np.testing.assert_array_equal(crowded.latents, alone.latents)
    np.testing.assert_array_equal(crowded.images, alone.images)


def test_large_requests_are_split_into_full_batches(server: RunningServer) -> None:
    count, total = batches(server)
    with VaeClient(server.target) as client:
        z = np.random.default_rng(1).standard_normal((20, 8), dtype=np.float32)
        split = client.decode(z).images
        assert split.shape == (20, 1, 28, 28)
        np.testing.assert_allclose(split[8:16], client.decode(z[8:16]).images, atol=1e-6)
    after_count, after_total = batches(server)
    # 20 items with max_batch_items 8: batches of 8, 8 and 4 (then one of 8 for the check).
    assert (after_count - count, after_total - total) == (4, 28)


def test_a_full_queue_rejects_with_resource_exhausted(patient: RunningServer) -> None:
    async def main() -> None:
        async with AsyncVaeClient(patient.target) as client:
            z = np.zeros((10, 8), np.float32)
            # 10 of 16 queued items wait for the batching delay; 10 more do not fit.
            first = asyncio.ensure_future(client.decode(z))
            await asyncio.sleep(0.1)
            with pytest.raises(grpc.RpcError) as caught:
                await client.decode(z)
            error: Any = caught.value
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "queue full (10 of 16 items waiting, this request adds 10)" in error.details()
            assert (await first).images.shape == (10, 1, 28, 28)

    asyncio.run(main())


def test_health_goes_from_not_serving_to_serving(
    tiny_model_repo: Path, start_server: Callable[..., RunningServer]
) -> None:
    running = start_server(tiny_model_repo, load=False)
    with grpc.insecure_channel(running.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "vae.v1.VaeService"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == NOT_SERVING
        running.call(running.server.load_models())
        for service in ("", "vae.v1.VaeService"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == SERVING


def test_reflection_lists_the_services(server: RunningServer) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        (response,) = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
    names = {service.name for service in response.list_services_response.service}
    assert {"vae.v1.VaeService", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


def test_the_metrics_endpoint_exposes_the_documented_series(server: RunningServer) -> None:
    with VaeClient(server.target) as client:
        client.sample(3, seed=0)
        client.encode(np.zeros((2, 1, 28, 28), np.float32))
        with pytest.raises(grpc.RpcError):
            client.sample(0)
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }

    def value(series: str, **labels: str) -> float:
        return samples[(series, tuple(sorted(labels.items())))]

    assert value("vae_requests_total", method="Sample", code="OK") >= 1
    assert value("vae_requests_total", method="Sample", code="INVALID_ARGUMENT") >= 1
    assert value("vae_request_duration_seconds_count", method="Sample") >= 2
    assert value("vae_items_total", method="Sample") >= 3
    assert value("vae_items_total", method="Encode") >= 2
    for graph in ("encoder", "decoder"):
        assert value("vae_batch_size_items_count", graph=graph) >= 1
        assert value("vae_inference_duration_seconds_count", graph=graph) >= 1
        assert value("vae_queue_wait_seconds_count", graph=graph) >= 1
        assert value("vae_queue_depth_items", graph=graph) == 0
        assert value("vae_deadline_expired_total", graph=graph) == 0
    assert value("vae_in_flight_requests") == 0
    assert value("vae_model_info", name="tiny", version="1", provider="CPUExecutionProvider") == 1
    assert ("vae_batch_size_items_bucket", (("graph", "decoder"), ("le", "1.0"))) in samples
    assert "# TYPE vae_model_load_failures_total counter" in text
