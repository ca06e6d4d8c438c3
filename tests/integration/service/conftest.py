"""Fixtures for the service tests: real servers on port 0 with real ONNX models (see helpers.servers)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.servers import RunningServer, config_for


@pytest.fixture(scope="session")
def start_server() -> Iterator[Callable[..., RunningServer]]:
    """start_server(repo, load=True, **config) -> a running server, stopped at the end of the session."""
    servers: list[RunningServer] = []

    def start(repo: Path, *, load: bool = True, **options: Any) -> RunningServer:
        server = RunningServer(config_for(repo, **options), load=load)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def server(tiny_model_repo: Path, start_server: Callable[..., RunningServer]) -> RunningServer:
    """The shared server: tiny/1, batches of at most 8 items, no batching delay."""
    return start_server(tiny_model_repo)


@pytest.fixture(scope="session")
def versioned_repo(
    tiny_model_repo: Path, tmp_path_factory: pytest.TempPathFactory, tiny_model_exporter: Callable[..., Path]
) -> Path:
    """tiny/1, tiny/2 (other weights) and tiny/3: a copy of 2 with a tampered decoder, failing verify."""
    repo = tmp_path_factory.mktemp("versioned") / "models"
    shutil.copytree(tiny_model_repo, repo)
    # One more export only: each costs seconds of torch on a busy machine.
    shutil.copytree(tiny_model_exporter(repo, 2, seed=1), repo / "tiny" / "3")
    with open(repo / "tiny" / "3" / "decoder.onnx", "ab") as handle:
        handle.write(b"tampered")
    return repo


@pytest.fixture(scope="session")
def shapes_server(
    tmp_path_factory: pytest.TempPathFactory, start_server: Callable[..., RunningServer]
) -> RunningServer:
    """flux/1, grey/1 (the default) and wide/1 of helpers.autoencoders.shapes_repo, imported once."""
    from helpers.autoencoders import shapes_repo  # torch and diffusers: only for the tests that ask

    return start_server(shapes_repo(tmp_path_factory.mktemp("shapes")), model="grey")
