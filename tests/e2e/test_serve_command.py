"""`vae serve` configured through VAE_* variables, as the images run it: start, serve, drain."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

from helpers import VAE, vae

from client.clients import VaeClient


def test_serve_starts_serves_and_drains_on_sigterm(tiny_model_repo: Path) -> None:
    env = {**os.environ, "VAE_REPO": str(tiny_model_repo), "VAE_MODEL": "tiny", "VAE_GRACE_SECONDS": "5"}
    command = [
        *VAE,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--max-batch-items",
        "4",
    ]
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) as process:
        assert process.stderr is not None
        try:
            port = None
            started = []
            for line in process.stderr:
                started.append(line)
                if match := re.search(r"gRPC on port (\d+)", line):
                    port = int(match.group(1))
                if "serving tiny/1" in line:
                    break
            assert port, "the server never said which port it took"
            # One line per graph: where it runs, its precision, the batcher's limits as warm-up found them.
            for role in ("encoder", "decoder"):
                (line,) = [line for line in started if f"tiny/1 {role}: " in line]
                assert f"{role}.onnx on CPUExecutionProvider, float32; batches of at most 4 items, " in line
                limits = re.search(r"started at once from (\d+) \(the knee\), (\S+) µs per item", line)
                assert limits, line
                assert int(limits[1]) in (1, 2, 4) and float(limits[2]) > 0
            target = f"127.0.0.1:{port}"
            assert vae("health", "--target", target).returncode == 0
            with VaeClient(target) as client:
                assert client.model_info().max_batch_items == 4  # the flag reached the server
                assert client.sample(2, seed=0).images.shape == (2, 1, 28, 28)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
            rest = process.stderr.read()
            assert "draining for up to 5.0 s" in rest and "stopped" in rest
        finally:
            if process.poll() is None:
                process.kill()


def test_serve_sizes_batches_and_workers_for_the_cpu_by_default(tiny_model_repo: Path) -> None:
    env = {**os.environ, "VAE_REPO": str(tiny_model_repo), "VAE_MODEL": "tiny", "VAE_WORKERS": "auto"}
    command = [*VAE, "serve", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0", "--device", "cpu"]
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) as process:
        assert process.stderr is not None
        try:
            lines = []
            for line in process.stderr:
                lines.append(line)
                if "serving tiny/1" in line:
                    break
            text = "".join(lines)
            assert "workers auto: 1 on CPUExecutionProvider" in text
            assert "max batch items auto: 256 on CPUExecutionProvider" in text
            assert (
                "tiny/1 decoder: decoder.onnx on CPUExecutionProvider, float32; batches of at most 256 items"
                in text
            )
            port = int(re.findall(r"gRPC on port (\d+)", text)[0])
            with VaeClient(f"127.0.0.1:{port}") as client:
                assert client.model_info().max_batch_items == 256
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
