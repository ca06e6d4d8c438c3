"""Real servers on loopback for tests, on ports they pick themselves.

Two ways to run one: `RunningServer`, a VaeServer on its own event-loop thread in the test's
process (fast, and the test can read its metrics registry), and `spawn_server` / `serving`, a
`vae serve` child process (for signals, exit codes, memory and anything else a process owns).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import threading
import urllib.request
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from helpers import VAE, wait_until
from service.config import ServiceConfig
from service.server import VaeServer, create_server

T = TypeVar("T")
# --- in this process ------------------------------------------------------------------------------


class RunningServer:
    """A VaeServer on its own event loop thread; tests talk to it over loopback like any client."""

    def __init__(self, config: ServiceConfig, *, load: bool = True, tracing: Any = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-server", daemon=True)
        self._thread.start()
        self.server: VaeServer = self.call(self._start(config, tracing))
        self.target = f"127.0.0.1:{self.server.port}"
        self.metrics_url = f"http://127.0.0.1:{self.server.metrics_port}/metrics"
        if load:
            self.call(self.server.load_models())

    @staticmethod
    async def _start(config: ServiceConfig, tracing: Any) -> VaeServer:
        server, _ = create_server(config, tracing=tracing)
        await server.start()
        return server

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def metric(self, series: str, **labels: str) -> float:
        value = self.server.metrics.registry.get_sample_value(series, labels)
        return 0.0 if value is None else value

    def stop(self) -> None:
        self.call(self.server.stop(grace=1.0))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()


def config_for(repo: Path, **options: Any) -> ServiceConfig:
    """Loopback, port 0, the tiny model and small limits; `options` override any ServiceConfig field."""
    settings: dict[str, Any] = {
        "repo": repo,
        "model": "tiny",
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": 0,
        "max_batch_items": 8,
        "max_request_items": 64,
        "max_queue_items": 256,
        **options,
    }
    return ServiceConfig(**settings)


# --- `vae serve` child processes ------------------------------------------------------------------

# The server binds port 0 and logs the ports it got: no race with other processes for a free port.
# With --workers, each worker logs its own ports too ("worker N: ..."): the supervisor's line counts.
_PORTS = re.compile(r"^(?!worker \d+: ).*gRPC on port (\d+), metrics on port (\d+)")
START_TIMEOUT_S = 120.0  # generous: a long evaluation may be running niced on the same two cores
SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass
class ServerProcess:
    """One `vae serve` child process and what it printed."""

    process: subprocess.Popen[str]
    log: list[str] = field(default_factory=list)
    port: int = 0
    metrics_port: int = 0
    _ports_known: threading.Event = field(default_factory=threading.Event)
    _reader: threading.Thread | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line.rstrip("\n"))
            if not self._ports_known.is_set() and (match := _PORTS.search(line)):
                self.port, self.metrics_port = int(match[1]), int(match[2])
                self._ports_known.set()
        self._ports_known.set()  # the process ended: stop anyone waiting for ports
        self.process.stderr.close()

    def log_text(self) -> str:
        return "\n".join(self.log)

    def health(self, channel: grpc.Channel, timeout: float = 5.0) -> int:
        """The whole server's grpc.health.v1 status (raises grpc.RpcError when unreachable)."""
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout).status

    def wait_serving(
        self, credentials: grpc.ChannelCredentials | None = None, timeout: float = START_TIMEOUT_S
    ) -> None:
        """Block until health reports SERVING; fail with the server's log if it exits or takes too long."""
        if not self._ports_known.wait(timeout) or not self.port:
            raise AssertionError(f"server did not start (exit {self.process.poll()}):\n{self.log_text()}")
        channel = (
            grpc.secure_channel(self.target, credentials)
            if credentials
            else grpc.insecure_channel(self.target)
        )

        def serving() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                return self.health(channel, timeout=2.0) == SERVING
            except grpc.RpcError:
                return False

        with channel:
            wait_until(serving, timeout, "health SERVING", interval=0.05)

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample of /metrics, keyed by (sample name, labels)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def metric(self, series: str, /, **labels: str) -> float:
        """One sample's value; 0 when the series does not exist yet (counters start there)."""
        return self.metrics().get((series, frozenset(labels.items())), 0.0)

    def rss_bytes(self) -> int:
        """Resident memory of the server process, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no VmRSS for pid {self.pid}")

    def send(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """The exit status, once the process has exited and its log is read to the end."""
        status = self.process.wait(timeout=timeout)
        if self._reader is not None:
            self._reader.join(timeout=10)
        return status

    def kill(self) -> None:
        """SIGKILL: the replica vanishes without draining."""
        self.process.kill()
        self.wait(timeout=30)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.wait(timeout=30)


def spawn_server(
    repo: Path, *args: str, model: str = "tiny", env: dict[str, str] | None = None
) -> ServerProcess:
    """`vae serve` on 127.0.0.1 with free gRPC and metrics ports; returns once the ports are known."""
    command = [
        *VAE, "serve",
        "--repo", str(repo), "--model", model,
        "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0", "--device", "cpu",
        *args,
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    server = ServerProcess(process)
    server._reader = threading.Thread(target=server._read_log, name=f"log-{process.pid}", daemon=True)
    server._reader.start()
    return server


@contextmanager
def serving(
    repo: Path,
    *args: str,
    credentials: grpc.ChannelCredentials | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[ServerProcess]:
    """A started, SERVING server for the `with` block; stopped (SIGTERM, then SIGKILL) afterwards."""
    server = spawn_server(repo, *args, env=env)
    try:
        server.wait_serving(credentials)
        yield server
    finally:
        server.stop()
