"""The gRPC server: VaeService, grpc.health.v1 and reflection on one port, Prometheus on another.

Lifecycle: `create_server(config)` binds the port (a --workers process binds it once its models are
loaded); `start()` begins answering with health
NOT_SERVING; `load_models()` verifies, loads and warms every version, then flips health to SERVING;
`reload()` (SIGHUP, or every --reload-interval-seconds) loads versions that appeared since;
`stop()` flips health back, refuses new calls, lets admitted ones finish within the grace period,
and stops the batchers. `serve()` runs all of it until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from repository.errors import RepositoryError
from repository.placement import Placement, select_placement
from repository.runtime import available_providers
from service import security
from service.call_observer import Observer
from service.calls import SERVICE, Calls, Drain
from service.config import ServiceConfig, setting
from service.graph_sources import GraphSource, LocalGraphs
from service.limits import receive_limit
from service.loading import load_new_versions, load_repository
from service.metrics import Metrics, serve_metrics
from service.registry import Registry
from service.servicer import VaeServicer
from service.sizing import with_batch_limit
from service.version_watch import VersionWatch

if TYPE_CHECKING:
    from service.tracing import Tracing

log = logging.getLogger(__name__)

SERVICE_NAME = SERVICE.full_name
# A thread waiting for the GIL (a batch coming back from onnxruntime) waits up to the switch
# interval while the event loop thread keeps it busy; 5 ms by default is longer than a batch.
SWITCH_INTERVAL_S = 0.0005
# Drain: once admitted calls are done, keep refusing for as long as calls still arrive (at most
# this long), so that calls already on the wire get UNAVAILABLE and not the CANCELLED with which
# gRPC ends calls it received but had not handed to the servicer when the server stops.
DRAIN_LINGER_S = 1.0
DRAIN_QUIET_S = 0.2
# Then the port closes; answers still being written get this long (health Watch streams never end).
FLUSH_S = 0.5


# Standard variables that turn tracing on (with the SDK's own defaults for everything else).
_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def tracing_from(config: ServiceConfig, env: Mapping[str, str]) -> Tracing | None:
    """The server's tracing when --otlp-endpoint or an OTEL_EXPORTER_OTLP_* endpoint asks for it.

    OTEL_SDK_DISABLED=true and OTEL_TRACES_EXPORTER=none turn it off, as in every OpenTelemetry SDK.
    The SDK is imported only here, so a server without the `tracing` extra runs as long as it is off.
    """
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    if not (config.otlp_endpoint or any(env.get(name) for name in _ENDPOINT_VARIABLES)):
        return None
    from service.tracing import otlp_tracing

    return otlp_tracing(config.otlp_endpoint)


class VaeServer:
    """One server process's gRPC server, models, metrics endpoint and health."""

    def __init__(
        self,
        config: ServiceConfig,
        *,
        tracing: Tracing | None = None,
        placement: Placement | None = None,
        graphs: GraphSource | None = None,
        bind: bool = True,
    ) -> None:
        """`tracing`: spans go there (tests); by default, where config and OTEL_* variables say.

        `placement`: where the graphs run, when the caller has chosen it; by default config.device's.
        `graphs`: where they are opened: sessions of this process on `placement` unless given (a
        --device-executor worker runs them in the executor, service/executor_client.py).
        `bind`: take the gRPC port now; else listen() takes it. grpc listens as soon as it binds, so a
        --workers process, which shares its port, binds only once its models are loaded.
        """
        self.placement = placement or select_placement(
            config.device, available_providers(), tf32=config.cuda_tf32
        )
        # An auto batch limit follows the device, before anything reads it.
        config = with_batch_limit(config, self.placement.provider)
        self.config = config
        self.graphs = graphs or LocalGraphs(config, self.placement)
        self.tracing = tracing if tracing is not None else tracing_from(config, os.environ)
        self.metrics = Metrics()
        self.registry = Registry(config.model)
        self.watch = VersionWatch()
        # grpc-stubs 1.53 predates grpc_health's asyncio servicer.
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.receive_limit = receive_limit(config)
        self.grpc = grpc.aio.server(
            interceptors=security.interceptors(config, self.metrics),
            options=[
                ("grpc.max_receive_message_length", self.receive_limit),
                ("grpc.max_send_message_length", config.max_send_message_bytes),
                # Two servers must not share a port by accident; --workers share it on purpose.
                ("grpc.so_reuseport", int(config.supervised)),
            ],
        )
        self.drain = Drain()
        self.servicer = VaeServicer(self.registry, config, self.metrics)
        calls = Calls(
            self.metrics,
            self.drain,
            timing_trailers=config.timing_trailers,
            max_deadline_s=config.max_deadline_seconds,
            observer=Observer.for_config(config, self.tracing),
        )
        # Registered (not generic) handlers: grpc finds them without a Python lookup per call.
        # grpc-stubs 1.53 predates add_registered_method_handlers.
        self.grpc.add_registered_method_handlers(  # type: ignore[attr-defined]
            SERVICE_NAME, self.servicer.method_handlers(calls)
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc
        )
        self.port = 0
        if bind:
            self._bind()
        self.metrics_port = 0
        self._http: WSGIServer | None = None
        self._stopping = False
        self._loaded = False
        self._loading = asyncio.Lock()  # one look at the repository at a time
        self._tasks: set[asyncio.Task[None]] = set()  # reloads and polling, kept until done

    def _bind(self) -> None:
        config = self.config
        address = f"{config.host}:{config.port}"
        credentials = security.server_credentials(config)
        try:
            if credentials is None:
                self.port = self.grpc.add_insecure_port(address)
            else:
                self.port = self.grpc.add_secure_port(address, credentials)
        except RuntimeError:  # grpc's "Failed to bind", whose reason goes to its debug log only
            self.port = 0
        if not self.port:
            # grpc does not say which: a taken port, a foreign address, or (TLS) an unusable certificate.
            fix = f"pick another {setting('port')}, or check {setting('host')}"
            if credentials is not None:
                fix += f", {setting('tls_cert')} and {setting('tls_key')} (valid PEM, a matching pair)"
            raise ValueError(f"cannot listen on {address} (the port may be in use); {fix}")

    async def start(self, *, listen: bool = True) -> None:
        """Answer from now on: health NOT_SERVING, RPCs UNAVAILABLE until load_models() is done.

        listen=False opens only the metrics port; listen() opens the gRPC port later.
        """
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self._http = serve_metrics(self.config.metrics_port, self.config.host, self.metrics.registry)
        self.metrics_port = self._http.server_port
        if listen:
            await self.listen()

    async def listen(self) -> None:
        """Answer on the gRPC port: from now on the kernel hands it connections."""
        if not self.port:
            self._bind()
        await self.grpc.start()
        log.info(
            "gRPC on port %d, metrics on port %d; requests up to %d bytes, answers up to %d%s",
            self.port,
            self.metrics_port,
            self.receive_limit,
            self.config.max_send_message_bytes,
            "" if self._loaded else "; loading models",
        )

    async def load_models(self) -> None:
        """Verify, load and warm every version in the repository, then report SERVING."""
        async with self._loading:
            await load_repository(
                self.registry, self.watch, self.config, self.graphs, self.metrics, self.tracing
            )
            self._loaded = True
        if not self._stopping:
            await self._set_health(health_pb2.HealthCheckResponse.SERVING)
            log.info(
                "serving %s",
                ", ".join(f"{m.manifest.name}/{m.manifest.version}" for m in self.registry.models()),
            )

    async def reload(self) -> None:
        """Load, warm and switch to versions that appeared in the repository; the old ones keep serving."""
        if not self._loaded or self._stopping:
            return  # the first load is still under way, or the server is going away
        async with self._loading:
            try:
                loaded = await load_new_versions(
                    self.registry, self.watch, self.config, self.graphs, self.metrics, self.tracing
                )
            except RepositoryError as exc:
                log.error("reload failed; still serving what was loaded: %s", exc)
                return
        if loaded:
            log.info("reload: %s", ", ".join(f"{m.manifest.name}/{m.manifest.version}" for m in loaded))

    def _spawn(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.config.reload_interval_seconds)
            await self.reload()

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING at once, refuse new calls, finish admitted ones (at most `grace` seconds)."""
        deadline = time.monotonic() + (self.config.grace_seconds if grace is None else grace)
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await self.health.enter_graceful_shutdown()
        self.drain.draining = True
        await self._drain(deadline)
        await self.grpc.stop(max(0.0, min(FLUSH_S, deadline - time.monotonic())))
        await asyncio.gather(*(model.close() for model in self.registry.models()))
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self.tracing is not None:  # the spans still buffered go out before the process ends
            await asyncio.to_thread(self.tracing.shutdown)
        log.info("stopped")

    async def _drain(self, deadline: float) -> None:
        """Until the deadline: wait for admitted calls, then linger while calls still arrive."""
        while self.drain.active and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        linger = min(deadline, time.monotonic() + DRAIN_LINGER_S)
        while time.monotonic() < linger and time.perf_counter() - self.drain.last_arrival < DRAIN_QUIET_S:
            await asyncio.sleep(0.01)

    async def serve(self, on_serving: Callable[[VaeServer], None] | None = None) -> None:
        """start, load_models, and run until SIGTERM or SIGINT; then stop gracefully.

        With `on_serving` (a --workers process, which then tells its supervisor its metrics port),
        the gRPC port opens only once the models are loaded: the kernel spreads a shared port's
        connections over the processes listening on it, and must not hand one to a worker that
        would answer UNAVAILABLE while it loads (a replacement joining, or any worker at start).
        """
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        # Installed at once: SIGHUP's default action would end the process.
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload()))
        await self.start(listen=on_serving is None)
        loading = asyncio.ensure_future(self.load_models())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait((loading, stopped), return_when=asyncio.FIRST_COMPLETED)
            if loading.done():
                loading.result()  # a model that failed to load ends the process here
                if on_serving is not None:
                    await self.listen()
                    on_serving(self)
                if self.config.reload_interval_seconds:
                    self._spawn(self._poll())
                await stopped
            log.info("signal received; draining for up to %.1f s", self.config.grace_seconds)
        finally:
            loading.cancel()
            stopped.cancel()
            await self.stop()

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        # "" is the whole server, which is what `vae health` and load balancers ask about.
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)


def create_server(
    config: ServiceConfig,
    *,
    tracing: Tracing | None = None,
    placement: Placement | None = None,
    graphs: GraphSource | None = None,
    bind: bool = True,
) -> tuple[VaeServer, int]:
    """A server bound to config.port (0 picks a free one), and that port (0: not bound); call in the loop."""
    server = VaeServer(config, tracing=tracing, placement=placement, graphs=graphs, bind=bind)
    return server, server.port
