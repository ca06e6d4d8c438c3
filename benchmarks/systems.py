"""The servers under test as child processes on loopback: our service, Triton, the echo server, baselines.

Each is started from a command line, waited for until it reports ready, and stopped with SIGTERM
(SIGKILL after a grace period). Cold start is the time from starting the process to that readiness.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks import processes

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
TRITON_PYTHON = REPO_ROOT / ".venv-triton" / "bin" / "python"
TRITON_SCRIPT = REPO_ROOT / "benchmarks" / "triton_server.py"
READY_POLL_S = 0.01


def free_port() -> int:
    """A port nothing listens on now, for servers that cannot report one they picked themselves."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    """A running server process and how to reach it."""

    name: str
    process: subprocess.Popen[bytes]
    target: str  # gRPC HOST:PORT
    metrics_url: str | None
    log: Path
    started_s: float  # seconds from process start to ready

    def cpu_seconds(self) -> float:
        """User + system CPU of the server's process and its descendants (Triton's tritonserver) so far."""
        return sum(processes.cpu_seconds(pid) for pid in processes.process_tree(self.process.pid))

    def pin(self, cpus: Set[int]) -> None:
        """Run the server's whole process tree on `cpus` only (all of them again to undo)."""
        processes.pin(processes.process_tree(self.process.pid), cpus)

    def stop(self, grace: float = 15.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(
    name: str,
    command: Sequence[str],
    ready: Callable[[], bool],
    *,
    target: str,
    metrics_url: str | None,
    log: Path,
    timeout: float = 120.0,
) -> Server:
    """Start `command` and poll `ready()` until true; raises with the log's tail if it never is."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        began = time.monotonic()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    server = Server(name, process, target, metrics_url, log, 0.0)
    try:
        while not ready():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail(log)}")
            if time.monotonic() - began > timeout:
                raise RuntimeError(f"{name} not ready after {timeout:.0f} s:\n{tail(log)}")
            time.sleep(READY_POLL_S)
    except BaseException:
        server.stop()
        raise
    server.started_s = time.monotonic() - began
    return server


def tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


# --- readiness ------------------------------------------------------------------------------------


# Each check opens a new channel: a refused connection fails at once, where a reused channel would
# wait out its reconnect backoff (1 s and more) and add it to the measured cold start.


def grpc_serving(target: str) -> Callable[[], bool]:
    """True once grpc.health.v1 says SERVING for the whole server (what `vae health` checks)."""

    def ready() -> bool:
        with grpc.insecure_channel(target) as channel:
            try:
                response = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=0.5
                )
            except grpc.RpcError:
                return False
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    return ready


def grpc_connects(target: str) -> Callable[[], bool]:
    def ready() -> bool:
        with grpc.insecure_channel(target) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=0.1)
            except grpc.FutureTimeoutError:
                return False
        return True

    return ready


def http_ok(*urls: str) -> Callable[[], bool]:
    """True once every URL answers 200 (Triton's /v2/models/NAME/ready)."""

    def ready() -> bool:
        for url in urls:
            try:
                with urllib.request.urlopen(url, timeout=0.5) as response:
                    if response.status != 200:
                        return False
            except OSError:  # refused, reset, timed out (URLError is an OSError too)
                return False
        return True

    return ready


# --- the systems ----------------------------------------------------------------------------------


def start_service(name: str, repo: Path, model: str, log: Path, extra: Sequence[str] = ()) -> Server:
    """`vae serve` with its defaults, on loopback, plus `extra` flags (e.g. --max-batch-items 1)."""
    port, metrics_port = free_port(), free_port()
    target = f"{HOST}:{port}"
    command = [
        sys.executable, "-m", "vae_cli", "serve", "--repo", str(repo), "--model", model,
        "--host", HOST, "--port", str(port), "--metrics-port", str(metrics_port), *extra,
    ]  # fmt: skip
    return start(
        name,
        command,
        grpc_serving(target),
        target=target,
        metrics_url=f"http://{HOST}:{metrics_port}/metrics",
        log=log,
    )


def start_triton(version_dir: Path, log: Path, max_batch: int, max_delay_us: int) -> Server:
    if not TRITON_PYTHON.exists():
        raise FileNotFoundError(
            f"{TRITON_PYTHON} is missing; `make bench` creates it (see docs/benchmarks.md)"
        )
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    command = [
        str(TRITON_PYTHON), str(TRITON_SCRIPT), "serve", str(version_dir), "--host", HOST,
        "--grpc-port", str(grpc_port), "--http-port", str(http_port), "--metrics-port", str(metrics_port),
        "--max-batch", str(max_batch), "--max-delay-us", str(max_delay_us),
    ]  # fmt: skip
    base = f"http://{HOST}:{http_port}/v2/models"
    return start(
        "triton",
        command,
        http_ok(f"{base}/encoder/ready", f"{base}/decoder/ready"),
        target=f"{HOST}:{grpc_port}",
        metrics_url=None,
        log=log,
    )


def triton_request(version_dir: Path, graph: str, items: int) -> bytes:
    """A serialized ModelInferRequest, made by tritonclient in Triton's environment."""
    command = [str(TRITON_PYTHON), str(TRITON_SCRIPT), "request", str(version_dir), "--graph", graph]
    return subprocess.run([*command, "--items", str(items)], check=True, capture_output=True).stdout


def start_echo(reply_sizes: Sequence[int], log: Path, event_loop: str) -> Server:
    reply = ["--reply-bytes", *map(str, reply_sizes)]
    return _start_bare("echo", ["benchmarks.echo", *reply], log, event_loop)


def start_baseline(name: str, version_dir: Path, log: Path, event_loop: str, *, batching: bool) -> Server:
    """A minimal vae.v1 server (benchmarks/baselines.py), with its micro-batcher or without."""
    command = ["benchmarks.baselines", "--version-dir", str(version_dir)]
    return _start_bare(name, [*command, *([] if batching else ["--no-batching"])], log, event_loop)


def _start_bare(name: str, module_and_args: Sequence[str], log: Path, event_loop: str) -> Server:
    """`python -m MODULE ARGS` for a bare grpc.aio server (no health service, no metrics)."""
    port = free_port()
    target = f"{HOST}:{port}"
    command = [
        sys.executable, "-m", *module_and_args,
        "--host", HOST, "--port", str(port), "--event-loop", event_loop,
    ]  # fmt: skip
    return start(name, command, grpc_connects(target), target=target, metrics_url=None, log=log)
