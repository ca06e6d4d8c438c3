"""Every Prometheus metric of the service, defined once; docs/metrics.md describes each.

Each server owns a CollectorRegistry, so several servers (tests) can live in one process. The
series are plain Python numbers behind one collector: every update happens on the server's
event-loop thread, so none needs the lock that each prometheus_client metric takes per update (ten
per Decode). The scrape thread only reads them; a histogram's count is its buckets' total, so a
scrape that lands between two statements of an update still sees a consistent histogram.
Label children are bound once per method and graph: the request path does no label lookups.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar, cast
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from repository.tensor_names import GRAPHS
from service.config import setting

# Request latency: from well under a millisecond (one latent) to seconds (large streams).
# The graph label of the batchers' series: the encoder, the decoder, and a prior flow's sampler.
PRIOR_FLOW = "prior_flow"
SERVED_GRAPHS = (*GRAPHS, PRIOR_FLOW)
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
# Queue waits and batch compute are finer: tens of microseconds up to a second.
_STEP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_BATCH_BUCKETS = tuple(float(1 << i) for i in range(13))  # 1 .. 4096 items
# Per-image log-likelihoods in nats: 2.5-nat steps where an MNIST-sized model's digits fall (-130 to
# -60), so a shift of the median by a few nats shows; coarse out to the far tails of anomalies.
_SCORE_BUCKETS = (
    *(-10000.0, -5000.0, -2000.0, -1000.0, -750.0, -500.0, -400.0, -300.0, -250.0, -200.0, -175.0, -150.0),
    *(-130.0 + 2.5 * i for i in range(29)),
    *(-50.0, -40.0, -30.0, -20.0, -10.0, 0.0, 100.0, 1000.0),
)


class Value:
    """A counter or gauge child: one number."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value


class Distribution:
    """A histogram child: per-bucket counts (the last is +Inf) and the sum of observations."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # Bucket i holds observations <= bounds[i] (Prometheus' "le"), which is what bisect_left finds.
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


Child = TypeVar("Child", Value, Distribution)


class Family(Generic[Child]):
    """One metric name, its label names and a child per label-value combination."""

    def __init__(
        self, name: str, documentation: str, kind: str, labelnames: Sequence[str], new: Callable[[], Child]
    ) -> None:
        self.name, self.documentation, self.kind = name, documentation, kind
        self.labelnames = tuple(labelnames)
        self._new: Callable[[], Child] = new
        self.children: dict[tuple[str, ...], Child] = {}

    def labels(self, *values: object) -> Child:
        key = tuple(map(str, values))
        if len(key) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {key}")
        if key not in self.children:
            self.children[key] = self._new()
        return self.children[key]

    def collect(self) -> Metric:
        labels = list(self.labelnames)
        # One atomic copy: the loop thread may add a child meanwhile.
        children: list[tuple[tuple[str, ...], Value | Distribution]] = list(self.children.items())
        if self.kind == "histogram":
            histogram = HistogramMetricFamily(self.name, self.documentation, labels=labels)
            for key, child in children:
                distribution: Distribution = cast(Distribution, child)
                counts, running, buckets = list(distribution.counts), 0, []
                for bound, count in zip((*distribution.bounds, float("inf")), counts, strict=True):
                    running += count
                    buckets.append((_le(bound), float(running)))
                histogram.add_metric(list(key), buckets, distribution.sum)
            return histogram
        family = (CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily)(
            self.name.removesuffix("_total"), self.documentation, labels=labels
        )
        for key, child in children:
            family.add_metric(list(key), cast(Value, child).value)
        return family


def _le(bound: float) -> str:
    """A bucket bound as Prometheus' text format spells it (what prometheus_client's own histograms write)."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


class _Collector(Collector):
    def __init__(self, families: Sequence[Family[Value] | Family[Distribution]]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            yield family.collect()


def _counter(name: str, documentation: str, labelnames: Sequence[str]) -> Family[Value]:
    return Family(name, documentation, "counter", labelnames, Value)


def _gauge(name: str, documentation: str, labelnames: Sequence[str]) -> Family[Value]:
    return Family(name, documentation, "gauge", labelnames, Value)


def _histogram(
    name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]
) -> Family[Distribution]:
    return Family(name, documentation, "histogram", labelnames, lambda: Distribution(buckets))


class Metrics:
    """The service's series in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.requests = _counter(
            "vae_requests_total", "RPCs answered, by method and gRPC status code", ["method", "code"]
        )
        self.request_duration = _histogram(
            "vae_request_duration_seconds",
            "Time from receiving an RPC to answering it",
            ["method"],
            _LATENCY_BUCKETS,
        )
        self.queue_wait = _histogram(
            "vae_queue_wait_seconds",
            "Time a request's items waited for a batch (everything but compute)",
            ["graph"],
            _STEP_BUCKETS,
        )
        self.batch_size = _histogram(
            "vae_batch_size_items", "Items per executed batch", ["graph"], _BATCH_BUCKETS
        )
        self.inference_duration = _histogram(
            "vae_inference_duration_seconds", "onnxruntime time per executed batch", ["graph"], _STEP_BUCKETS
        )
        self.queue_depth = _gauge(
            "vae_queue_depth_items", "Items admitted and waiting for a batch", ["graph"]
        )
        self.in_flight_requests = _gauge("vae_in_flight_requests", "RPCs being handled now", [])
        self.in_flight = self.in_flight_requests.labels()
        self.items = _counter(
            "vae_items_total", "Items (images, latents, samples) served, by method", ["method"]
        )
        self.model_info = _gauge(
            "vae_model_info", "1 for each loaded model version", ["name", "version", "provider"]
        )
        self.deadline_expired = _counter(
            "vae_deadline_expired_total", "Requests dropped before compute: deadline passed", ["graph"]
        )
        self.model_load_failures = _counter(
            "vae_model_load_failures_total", "Model versions that failed to verify or load", ["name"]
        )
        self.model_files_changed = _counter(
            "vae_model_files_changed_total",
            "Loaded model versions whose files changed on disk, and that stopped answering",
            ["name", "version"],
        )
        self.score_log_likelihood = _histogram(
            "vae_score_log_likelihood_nats",
            "Score's log-likelihood of every scored image (input drift: compare with model.json)",
            ["model", "version"],
            _SCORE_BUCKETS,
        )
        self.score_reference = _gauge(
            "vae_score_reference_log_likelihood_nats",
            "Quantiles of Score's log-likelihood over the test set at export (model.json score_reference)",
            ["model", "version", "q", "k"],
        )
        # Every family defined above, in order: a new one cannot be left out of the scrape.
        self.registry.register(_Collector([v for v in vars(self).values() if isinstance(v, Family)]))
        # Every graph's series exist from the start, so dashboards and alerts see zeros, not gaps.
        for graph in SERVED_GRAPHS:
            for family in (self.queue_wait, self.batch_size, self.inference_duration):
                family.labels(graph)
            self.queue_depth.labels(graph)
            self.deadline_expired.labels(graph)

    def method(self, name: str) -> MethodMetrics:
        return MethodMetrics(self, name)

    def graph(self, name: str) -> GraphMetrics:
        return GraphMetrics(self, name)


class MethodMetrics:
    """The series of one RPC method, bound once."""

    __slots__ = ("_method", "_requests", "duration", "in_flight", "items", "ok")

    def __init__(self, metrics: Metrics, method: str) -> None:
        self._requests = metrics.requests
        self._method = method
        self.ok = metrics.requests.labels(method, "OK")
        self.duration = metrics.request_duration.labels(method)
        self.items = metrics.items.labels(method)
        self.in_flight = metrics.in_flight

    def finished(self, code: str, seconds: float, items: int = 0) -> None:
        """An RPC ends with status `code` after `seconds`, having served `items` (OK only)."""
        self.in_flight.value -= 1
        (self.ok if code == "OK" else self._requests.labels(self._method, code)).value += 1
        self.duration.observe(seconds)
        self.items.value += items


class GraphMetrics:
    """The batcher's report for one graph (service/batch_types.py's BatchObserver)."""

    __slots__ = ("_batch_size", "_depth", "_expired", "_inference", "_wait")

    def __init__(self, metrics: Metrics, graph: str) -> None:
        self._depth = metrics.queue_depth.labels(graph)
        self._batch_size = metrics.batch_size.labels(graph)
        self._inference = metrics.inference_duration.labels(graph)
        self._wait = metrics.queue_wait.labels(graph)
        self._expired = metrics.deadline_expired.labels(graph)

    def queued(self, items: int) -> None:
        # Deltas, not levels: every loaded version of a model has its own batcher per graph.
        self._depth.value += items

    def batch_ran(self, items: int, seconds: float) -> None:
        self._batch_size.observe(items)
        self._inference.observe(seconds)

    def request_waited(self, seconds: float) -> None:
        self._wait.observe(seconds)

    def request_expired(self) -> None:
        self._expired.value += 1


def serve_metrics(port: int, host: str, registry: CollectorRegistry) -> WSGIServer:
    """/metrics on host:port, in a thread; a taken port is a ValueError naming the setting to change."""
    try:
        server, _ = start_http_server(port, addr=host.strip("[]"), registry=registry)
    except OSError as exc:
        raise ValueError(
            f"cannot serve metrics on {host}:{port} ({exc.strerror}); "
            f"pick another {setting('metrics_port')}, or 0 for a free one"
        ) from None
    return server
