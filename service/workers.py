"""`vae serve --workers N`: N server processes on one port (SO_REUSEPORT), one metrics endpoint.

A Python process's gRPC front end is bound by one core, so a many-core host needs several. The
supervisor reserves the port, starts N workers (each a whole VaeServer with its own batchers and
onnxruntime sessions, sharing the GPU if there is one; the kernel spreads connections over them),
and serves /metrics as the sum of every worker's series: vae_requests_total counts every call
once, and vae_model_info{version} counts the workers that have that version loaded.
Signals go to every worker: SIGTERM/SIGINT drain each, SIGHUP reloads each.
With --device-executor the supervisor first starts the device executor (service/executor.py), which
holds the sessions; its metrics join the sums, and it stops after the workers' drains.

A worker that dies on its own (a crash, an out-of-memory kill, a CUDA error) is replaced while the
others keep serving, as gunicorn and Triton do; what it had counted stays in the sums. Only a crash
loop, more than --worker-restarts deaths within --worker-restart-window-seconds, ends the supervisor
(exit 1), so that the orchestrator sees one failed process. Workers die with their supervisor
(Linux's parent-death signal): none is left holding the port.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

from prometheus_client import CollectorRegistry

from service.config import ServiceConfig, setting
from service.metrics import serve_metrics
from service.shared_arrays import run_directory
from service.worker_metrics import SumOfWorkers

log = logging.getLogger(__name__)

START_TIMEOUT_S = 300.0  # loading and warming every version can take minutes on a busy host
# How often the supervisor reads every worker's counters: a worker that dies loses from the sums
# at most what it counted since the last read (the calls it was answering then failed anyway).
SNAPSHOT_INTERVAL_S = 1.0
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
EXECUTOR_PREFIX = "vae-executor-"  # then the supervisor's pid: a dead one's directory is removed
EXECUTOR_INDEX = -1  # the device executor's place among the workers whose metrics are summed


def reserve_port(host: str, port: int, name: str = "port") -> socket.socket:
    """Bind (not listen) host:port with SO_REUSEPORT, so the workers can share it and nobody else takes it.

    SO_REUSEPORT alone would also join a port that another server of the same user holds with it
    (the kernel would split clients between two deployments), so the port is first bound without
    it: that bind fails if anyone holds the port at all. A port that is taken is a ValueError naming
    the setting `name` (a ServiceConfig field) to change.
    """
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as exclusive:
            exclusive.bind((bare, port))
            port = exclusive.getsockname()[1]
        reserved = socket.socket(family, socket.SOCK_STREAM)
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            reserved.bind((bare, port))
        except OSError:
            reserved.close()
            raise
    except OSError as exc:
        raise ValueError(
            f"cannot listen on {host}:{port} ({exc.strerror}); pick another {setting(name)}"
        ) from None
    return reserved


def _die_with(supervisor: int, signum: int = signal.SIGTERM) -> None:
    """`signum` (SIGTERM: a drain) for this process when its supervisor dies, so no orphan serves on."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signum)
    except (OSError, AttributeError):  # not Linux: the supervisor's own stop is all there is
        log.warning("workers cannot follow their supervisor's death on this system")
        return
    if os.getppid() != supervisor:  # it died before prctl took effect
        os.kill(os.getpid(), signum)


def _worker(
    config: ServiceConfig, index: int, executor: Path | None, ready: Connection, supervisor: int
) -> None:
    """One worker process: a VaeServer on the shared port, its metrics on a private loopback port.

    `executor`: the device executor's directory, where its graphs run; else the worker's own sessions.
    """
    _die_with(supervisor)
    from service import event_loop, logs
    from service.executor_client import ExecutorGraphs
    from service.server import VaeServer, create_server

    logs.configure(config, worker=index)

    def serving(server: VaeServer) -> None:
        ready.send(server.metrics_port)
        ready.close()

    async def run() -> None:
        graphs = None if executor is None else ExecutorGraphs(executor)
        server, _ = create_server(config, bind=False, graphs=graphs)
        await server.serve(on_serving=serving)

    event_loop.run(run(), config.event_loop)


def _executor(config: ServiceConfig, directory: Path, ready: Connection, supervisor: int) -> None:
    """The device executor's process (service/executor.py): on the device config.device names.

    It ignores SIGTERM (the workers' drains need it), so its supervisor's death kills it.
    """
    _die_with(supervisor, signal.SIGKILL)
    from repository.placement import select_placement
    from repository.runtime import available_providers
    from service import logs
    from service.executor import serve_executor

    logs.configure(config)
    placement = select_placement(config.device, available_providers(), tf32=config.cuda_tf32)
    serve_executor(config, placement, directory, ready)


def remove_stale_directories(parent: Path) -> None:
    """The executor directories of supervisors that died without removing theirs (kill -9)."""
    for directory in parent.glob(f"{EXECUTOR_PREFIX}*-*"):
        pid = directory.name.removeprefix(EXECUTOR_PREFIX).partition("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(directory, ignore_errors=True)


def _spawn(target: Callable[..., None], name: str, *args: object) -> tuple[BaseProcess, Connection]:
    """A process running target(*args, ready, our pid), and the `ready` pipe's end it reports on.

    Spawned, not forked: no forked copies of grpc's threads.
    """
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=target, args=(*args, send, os.getpid()), name=name, daemon=False)
    process.start()
    send.close()
    return process, receive


def start_executor(config: ServiceConfig, directory: Path) -> tuple[BaseProcess, int]:
    """Start the device executor for `config` in `directory` (socket, segments); it dies with this process.

    (Its process, its metrics port) once it listens; RuntimeError or EOFError if it fails to start.
    """
    process, receive = _spawn(_executor, "vae-executor", config, directory)
    if not receive.poll(START_TIMEOUT_S):
        process.kill()
        raise RuntimeError(f"the device executor did not start within {START_TIMEOUT_S:.0f} s")
    metrics_port: int = receive.recv()  # EOFError if it failed: its log says why
    return process, metrics_port


@dataclasses.dataclass
class _Slot:
    """Worker `index`: its process, and the pipe that brings its metrics port once it serves."""

    index: int
    process: BaseProcess
    ready: Connection | None
    started: float


class _Supervisor:
    """Starts, watches and replaces the workers; counts their deaths to tell a crash loop."""

    def __init__(self, config: ServiceConfig, port: int, metrics: SumOfWorkers) -> None:
        self._config = dataclasses.replace(config, port=port, metrics_port=0)
        self._metrics = metrics
        self._deaths: deque[float] = deque()
        self.slots: list[_Slot] = []
        self.executor: BaseProcess | None = None
        self._directory: Path | None = None  # the executor's socket and every shared-memory segment

    def launch_executor(self) -> None:
        """The device executor, before any worker: the workers open their graphs in it."""
        remove_stale_directories(run_directory())
        self._directory = Path(
            tempfile.mkdtemp(prefix=f"{EXECUTOR_PREFIX}{os.getpid()}-", dir=run_directory())
        )
        self.executor, metrics_port = start_executor(self._config, self._directory)
        self._metrics.add(EXECUTOR_INDEX, metrics_port)
        log.info("device executor (pid %d): metrics on 127.0.0.1:%d", self.executor.pid, metrics_port)

    def start(self, index: int) -> _Slot:
        process, receive = _spawn(_worker, f"vae-worker-{index}", self._config, index, self._directory)
        return _Slot(index, process, receive, time.monotonic())

    def start_all(self) -> None:
        """Start every worker, one after another (they load the same files); any failure is fatal."""
        for index in range(self._config.workers):
            slot = self.start(index)
            self.slots.append(slot)
            assert slot.ready is not None
            if not slot.ready.poll(START_TIMEOUT_S):
                raise RuntimeError(
                    f"worker {index} did not start within {START_TIMEOUT_S:.0f} s; see its log"
                )
            self._serving(slot)

    def _serving(self, slot: _Slot) -> None:
        assert slot.ready is not None
        metrics_port: int = slot.ready.recv()
        slot.ready.close()
        slot.ready = None
        self._metrics.add(slot.index, metrics_port)
        log.info("worker %d (pid %d): metrics on 127.0.0.1:%d", slot.index, slot.process.pid, metrics_port)

    def watch(self) -> None:
        """Replace dead workers, note replacements that came up; RuntimeError on a crash loop.

        The device executor's death is a RuntimeError too: every worker's batches ran there.
        """
        if self.executor is not None and not self.executor.is_alive():
            raise RuntimeError(
                f"the device executor exited with {self.executor.exitcode}; stopping every worker "
                "(their batches ran there)"
            )
        for position, slot in enumerate(self.slots):
            if slot.process.is_alive() and slot.ready is not None:
                if slot.ready.poll(0):
                    self._serving(slot)
                    continue
                if time.monotonic() - slot.started < START_TIMEOUT_S:
                    continue
                log.error("worker %d did not start within %.0f s; killing it", slot.index, START_TIMEOUT_S)
                slot.process.kill()
                slot.process.join()
            if slot.process.is_alive():
                continue
            self._metrics.retire(slot.index)
            if self._directory is not None:  # its input segments, which nobody will write again
                for segment in self._directory.glob(f"in-{slot.process.pid}-*"):
                    segment.unlink(missing_ok=True)
            now = time.monotonic()
            self._deaths.append(now)
            window, limit = self._config.worker_restart_window_seconds, self._config.worker_restarts
            while self._deaths[0] < now - window:
                self._deaths.popleft()
            if len(self._deaths) > limit:
                raise RuntimeError(
                    f"worker {slot.index} exited with {slot.process.exitcode}: {len(self._deaths)} worker "
                    f"deaths within {window:g} s, more than {setting('worker_restarts')} allows "
                    f"({limit}); stopping every worker (a crash loop: see the workers' log above)"
                )
            log.error(
                "worker %d (pid %s) exited with %s; replacing it (%d of at most %d deaths within %g s)",
                slot.index,
                slot.process.pid,
                slot.process.exitcode,
                len(self._deaths),
                limit,
                window,
            )
            self.slots[position] = self.start(slot.index)

    def signal_all(self, signum: int) -> None:
        for slot in self.slots:
            if slot.process.is_alive() and slot.process.pid is not None:
                os.kill(slot.process.pid, signum)

    def stop_all(self, grace_seconds: float) -> None:
        """SIGTERM every worker, wait for their drains, then kill what is left."""
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds + 5
        for slot in self.slots:
            slot.process.join(max(0.0, deadline - time.monotonic()))
            if slot.process.is_alive():
                log.error("%s did not stop in time; killing it", slot.process.name)
                slot.process.kill()
                slot.process.join()
        if self.executor is not None:  # it ignores SIGTERM: nothing of it needs a drain
            self.executor.kill()
            self.executor.join()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)


def serve_workers(config: ServiceConfig) -> int:
    """Run config.workers server processes until SIGTERM or SIGINT; the exit status of the whole."""
    reserved = reserve_port(config.host, config.port)
    port = reserved.getsockname()[1]
    metrics = SumOfWorkers()
    supervisor = _Supervisor(config, port, metrics)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    # Until every worker runs, a SIGHUP would end the supervisor; after, it goes to the workers.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        if config.device_executor:
            supervisor.launch_executor()
        supervisor.start_all()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(metrics)
        http = serve_metrics(config.metrics_port, config.host, registry)
        log.info("gRPC on port %d, metrics on port %d; %d workers", port, http.server_port, config.workers)
        signal.signal(signal.SIGHUP, lambda *_: supervisor.signal_all(signal.SIGHUP))
        snapshot = time.monotonic()
        while not stop.wait(0.2):
            supervisor.watch()
            if time.monotonic() - snapshot >= SNAPSHOT_INTERVAL_S:
                metrics.refresh()
                snapshot = time.monotonic()
        log.info("signal received; every worker drains for up to %.1f s", config.grace_seconds)
        return 0
    except (RuntimeError, EOFError) as exc:
        log.error("%s", exc)
        return 1
    finally:
        supervisor.stop_all(config.grace_seconds)
        reserved.close()
