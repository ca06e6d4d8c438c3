"""`vae serve --workers N`: N server processes on one port (SO_REUSEPORT), one metrics endpoint.

A Python process's gRPC front end is bound by one core, so a many-core host needs several. The
supervisor reserves the port, starts N workers (each a whole VaeServer with its own batchers and
onnxruntime sessions, sharing the GPU if there is one; the kernel spreads connections over them),
and serves /metrics as the sum of every worker's series: vae_requests_total counts every call
once, and vae_model_info{version} counts the workers that have that version loaded.
Signals go to every worker: SIGTERM/SIGINT drain each, SIGHUP reloads each. A worker that dies on
its own takes the others down, so that the orchestrator sees one failed process and restarts it.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from service.config import ServiceConfig, setting
from service.metrics import serve_metrics

log = logging.getLogger(__name__)

START_TIMEOUT_S = 300.0  # loading and warming every version can take minutes on a busy host
SCRAPE_TIMEOUT_S = 5.0


def reserve_port(host: str, port: int, name: str = "port") -> socket.socket:
    """Bind (not listen) host:port with SO_REUSEPORT, so the workers can share it and nobody else takes it.

    A port that is taken is a ValueError naming the setting `name` (a ServiceConfig field) to change.
    """
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    reserved = socket.socket(family, socket.SOCK_STREAM)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        reserved.bind((bare, port))
    except OSError as exc:
        reserved.close()
        raise ValueError(
            f"cannot listen on {host}:{port} ({exc.strerror}); pick another {setting(name)}"
        ) from None
    return reserved


def _worker(config: ServiceConfig, index: int, ready: Connection) -> None:
    """One worker process: a VaeServer on the shared port, its metrics on a private loopback port."""
    from service import event_loop, logs
    from service.server import VaeServer, create_server

    logs.configure(config, worker=index)

    def started(server: VaeServer) -> None:
        ready.send(server.metrics_port)
        ready.close()

    async def run() -> None:
        server, _ = create_server(config)
        await server.serve(on_started=started)

    event_loop.run(run(), config.event_loop)


class _SumOfWorkers(Collector):
    """Every worker's series, summed by name and labels, at each scrape."""

    def __init__(self, metrics_ports: list[int]) -> None:
        self._urls = [f"http://127.0.0.1:{port}/metrics" for port in metrics_ports]

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        totals: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        for url in self._urls:
            try:
                with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
                    text = response.read().decode()
            except OSError as exc:  # a worker that is stopping: the others still count
                log.warning("metrics of a worker not read (%s): %s", url, exc)
                continue
            for family in text_string_to_metric_families(text):
                families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                samples = totals.setdefault(family.name, {})
                for sample in family.samples:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    samples[key] = samples.get(key, 0.0) + sample.value
        for name, metric in families.items():
            for (sample_name, labels), value in totals[name].items():
                metric.add_sample(sample_name, dict(labels), value)
            yield metric


def serve_workers(config: ServiceConfig) -> int:
    """Run config.workers server processes until SIGTERM or SIGINT; the exit status of the whole."""
    reserved = reserve_port(config.host, config.port)
    port = reserved.getsockname()[1]
    worker_config = dataclasses.replace(config, port=port, metrics_port=0)
    context = multiprocessing.get_context("spawn")  # no forked copies of grpc's threads
    workers: list[BaseProcess] = []
    metrics_ports: list[int] = []
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    # Until every worker runs, a SIGHUP would end the supervisor; after, it goes to the workers.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        for index in range(config.workers):
            receive, send = context.Pipe(duplex=False)
            process = context.Process(
                target=_worker, args=(worker_config, index, send), name=f"vae-worker-{index}", daemon=False
            )
            process.start()
            send.close()
            workers.append(process)
            if not receive.poll(START_TIMEOUT_S):
                raise RuntimeError(
                    f"worker {index} did not start within {START_TIMEOUT_S:.0f} s; see its log"
                )
            metrics_ports.append(receive.recv())
            log.info("worker %d (pid %d): metrics on 127.0.0.1:%d", index, process.pid, metrics_ports[-1])
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_SumOfWorkers(metrics_ports))
        http = serve_metrics(config.metrics_port, config.host, registry)
        log.info("gRPC on port %d, metrics on port %d; %d workers", port, http.server_port, len(workers))
        signal.signal(signal.SIGHUP, lambda *_: _signal_all(workers, signal.SIGHUP))
        while not stop.wait(0.2):
            if dead := [w for w in workers if not w.is_alive()]:
                log.error("worker %s exited with %s; stopping the others", dead[0].name, dead[0].exitcode)
                return 1
        log.info("signal received; every worker drains for up to %.1f s", config.grace_seconds)
        return 0
    except (RuntimeError, EOFError) as exc:
        log.error("%s", exc)
        return 1
    finally:
        _stop_all(workers, config.grace_seconds)
        reserved.close()


def _signal_all(workers: list[BaseProcess], signum: int) -> None:
    for worker in workers:
        if worker.is_alive() and worker.pid is not None:
            os.kill(worker.pid, signum)


def _stop_all(workers: list[BaseProcess], grace_seconds: float) -> None:
    """SIGTERM every worker, wait for their drains, then kill what is left."""
    _signal_all(workers, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds + 5
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            log.error("%s did not stop in time; killing it", worker.name)
            worker.kill()
            worker.join()
