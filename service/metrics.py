"""Every Prometheus metric of the service, defined once; docs/metrics.md describes each.

Each server owns a CollectorRegistry, so several servers (tests) can live in one process.
Label children are bound once per method and graph: the request path does no label lookups.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Request latency: from well under a millisecond (one latent) to seconds (large streams).
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
# Queue waits and batch compute are finer: tens of microseconds up to a second.
_STEP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_BATCH_BUCKETS = tuple(float(1 << i) for i in range(13))  # 1 .. 4096 items
GRAPHS = ("encoder", "decoder")


class Metrics:
    """The service's series in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "vae_requests_total",
            "RPCs answered, by method and gRPC status code",
            ["method", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "vae_request_duration_seconds",
            "Time from receiving an RPC to answering it",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "vae_queue_wait_seconds",
            "Time a request's items waited for a batch (everything but compute)",
            ["graph"],
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "vae_batch_size_items", "Items per executed batch", ["graph"], buckets=_BATCH_BUCKETS, registry=r
        )
        self.inference_duration = Histogram(
            "vae_inference_duration_seconds",
            "onnxruntime time per executed batch",
            ["graph"],
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "vae_queue_depth_items", "Items admitted and waiting for a batch", ["graph"], registry=r
        )
        self.in_flight = Gauge("vae_in_flight_requests", "RPCs being handled now", registry=r)
        self.items = Counter(
            "vae_items_total", "Items (images, latents, samples) served, by method", ["method"], registry=r
        )
        self.model_info = Gauge(
            "vae_model_info", "1 for each loaded model version", ["name", "version", "provider"], registry=r
        )
        self.deadline_expired = Counter(
            "vae_deadline_expired_total",
            "Requests dropped before compute: deadline passed",
            ["graph"],
            registry=r,
        )
        self.model_load_failures = Counter(
            "vae_model_load_failures_total",
            "Model versions that failed to verify or load",
            ["name"],
            registry=r,
        )
        # Every graph's series exist from the start, so dashboards and alerts see zeros, not gaps.
        for graph in GRAPHS:
            for metric in (self.queue_wait, self.batch_size, self.inference_duration, self.queue_depth):
                metric.labels(graph)
            self.deadline_expired.labels(graph)

    def method(self, name: str) -> MethodMetrics:
        return MethodMetrics(self, name)

    def graph(self, name: str) -> GraphMetrics:
        return GraphMetrics(self, name)


class MethodMetrics:
    """The series of one RPC method, bound once."""

    def __init__(self, metrics: Metrics, method: str) -> None:
        self._requests = metrics.requests
        self._method = method
        self.ok = metrics.requests.labels(method, "OK")
        self.duration = metrics.request_duration.labels(method)
        self.items = metrics.items.labels(method)
        self.in_flight = metrics.in_flight

    def finished(self, code: str, started: float) -> None:
        """An RPC that began at time.perf_counter() `started` ends with status `code`."""
        self.in_flight.dec()
        (self.ok if code == "OK" else self._requests.labels(self._method, code)).inc()
        self.duration.observe(time.perf_counter() - started)


class GraphMetrics:
    """The batcher's report for one graph (service.batcher.BatchObserver)."""

    def __init__(self, metrics: Metrics, graph: str) -> None:
        self._depth = metrics.queue_depth.labels(graph)
        self._batch_size = metrics.batch_size.labels(graph)
        self._inference = metrics.inference_duration.labels(graph)
        self._wait = metrics.queue_wait.labels(graph)
        self._expired = metrics.deadline_expired.labels(graph)

    def queued(self, items: int) -> None:
        # Deltas, not levels: every loaded version of a model has its own batcher per graph.
        self._depth.inc(items)

    def batch_ran(self, items: int, seconds: float) -> None:
        self._batch_size.observe(items)
        self._inference.observe(seconds)

    def request_waited(self, seconds: float) -> None:
        self._wait.observe(seconds)

    def request_expired(self) -> None:
        self._expired.inc()
