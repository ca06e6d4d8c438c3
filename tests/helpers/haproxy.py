"""Debian's haproxy on loopback, balancing gRPC (HTTP/2 on both sides) round-robin over replicas."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from benchmarks.systems import free_port
from helpers import wait_until

# gRPC needs HTTP/2 end to end: `proto h2` on the bind line and on every server line. A replica
# that stops accepting connections fails its TCP check within `inter` and is taken out; a request
# whose connection attempt fails is sent to another replica (retries + redispatch). A request that
# was already on a replica when it died is answered 502 here, which gRPC clients see as
# UNAVAILABLE: the client's retry policy (client/rpcs.py, wire/channel.py) sends it again.
TEMPLATE = """\
global
    maxconn 4096
    log stderr format raw local0 info

defaults
    mode http
    log global
    option httplog
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    retries 3
    option redispatch 1

frontend grpc
    bind 127.0.0.1:{port} proto h2
    default_backend replicas

backend replicas
    balance roundrobin
    default-server proto h2 check inter 200ms fall 1 rise 2
{servers}
"""


def config(port: int, replicas: Sequence[int]) -> str:
    servers = "\n".join(f"    server replica{i} 127.0.0.1:{p}" for i, p in enumerate(replicas))
    return TEMPLATE.format(port=port, servers=servers)


def _accepting(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


@contextmanager
def haproxy(directory: Path, replicas: Sequence[int]) -> Iterator[tuple[str, list[str]]]:
    """haproxy in front of `replicas` (ports): yields its target and its log lines (one per request)."""
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    port = free_port()  # haproxy cannot report a port it picked itself
    path = directory / "haproxy.cfg"
    path.write_text(config(port, replicas))
    check = subprocess.run([binary, "-c", "-f", str(path)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    # -db: stay in the foreground, so the test owns the process and its log.
    process = subprocess.Popen([binary, "-db", "-f", str(path)], stderr=subprocess.PIPE, text=True)
    log: list[str] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            log.append(line.rstrip("\n"))
        process.stderr.close()

    reader = threading.Thread(target=read, name="haproxy-log", daemon=True)
    reader.start()
    try:
        wait_until(lambda: _accepting(port) or process.poll() is not None, 30, "haproxy to listen")
        assert process.poll() is None, "\n".join(log)
        yield f"127.0.0.1:{port}", log
    finally:
        process.terminate()
        process.wait(timeout=30)
        reader.join(timeout=10)
