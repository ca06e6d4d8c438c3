"""Hot reload: new versions are loaded, warmed and switched to under load; broken ones are refused."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import wait_until
from helpers.load import Tally, closed_loop
from helpers.servers import ServerProcess, serving

from client.clients import AsyncVaeClient, VaeClient

pytestmark = pytest.mark.slow

POLL_S = 0.5
WORKERS = 4
LATENTS = np.random.default_rng(0).standard_normal((4, 8), dtype=np.float32)


@dataclass(frozen=True)
class Staged:
    """Versions exported ahead of time, published into a live repository by an atomic rename."""

    root: Path

    def publish(self, repo: Path, version: int) -> None:
        # Copy beside the live directory, then rename: the server never sees a half-written version.
        partial = repo / "tiny" / f".incoming-{version}"
        shutil.copytree(self.root / str(version), partial)
        os.rename(partial, repo / "tiny" / str(version))


def _rewrite_hash(version: Path, graph: str) -> None:
    """Make model.json vouch for the graph file as it is now (the fault lies elsewhere)."""
    manifest = json.loads((version / "model.json").read_text())
    data = (version / manifest["graphs"][graph]["file"]).read_bytes()
    manifest["graphs"][graph]["sha256"] = hashlib.sha256(data).hexdigest()
    (version / "model.json").write_text(json.dumps(manifest, indent=2))


def _renumbered(source: Path, target: Path, version: int) -> Path:
    """A copy of an exported version under another number: manifest, graph metadata and hashes agree.

    Cheaper than exporting again (torch), which matters on a busy two-core machine.
    """
    import onnx

    shutil.copytree(source, target)
    manifest = json.loads((target / "model.json").read_text())
    manifest["version"] = version
    (target / "model.json").write_text(json.dumps(manifest, indent=2))
    for graph in ("encoder", "decoder"):
        path = target / manifest["graphs"][graph]["file"]
        model = onnx.load(path)
        for entry in model.metadata_props:
            if entry.key == "vae.version":
                entry.value = str(version)
        onnx.save(model, path)
        _rewrite_hash(target, graph)
    return target


@pytest.fixture(scope="module")
def staged(tiny_model_exporter: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Staged:
    """tiny/2 (new weights) and three broken versions, each with exactly one fault."""
    root = tmp_path_factory.mktemp("staged")
    exported = tiny_model_exporter(root / "export", 2, seed=2)
    shutil.copytree(exported, root / "2")
    # 3: a file changed after export, so its sha256 no longer matches model.json.
    decoder = _renumbered(exported, root / "3", 3) / "decoder.onnx"
    decoder.write_bytes(decoder.read_bytes()[:-1] + bytes([decoder.read_bytes()[-1] ^ 0xFF]))
    # 4: hashes match, but the encoder is not an ONNX graph at all.
    (_renumbered(exported, root / "4", 4) / "encoder.onnx").write_bytes(b"this is not an onnx graph")
    _rewrite_hash(root / "4", "encoder")
    # 5: the decoder of another export (same number): encoder and decoder carry different pairing ids.
    other = _renumbered(tiny_model_exporter(root / "other", 2, seed=5), root / "other5", 5)
    shutil.copy(other / "decoder.onnx", _renumbered(exported, root / "5", 5) / "decoder.onnx")
    _rewrite_hash(root / "5", "decoder")
    return Staged(root)


@pytest.fixture
def repo(tiny_model_repo: Path, tmp_path: Path) -> Path:
    shutil.copytree(tiny_model_repo, tmp_path / "repo")
    return tmp_path / "repo"


def _decode(target: str, version: int = 0) -> tuple[int, np.ndarray]:
    with VaeClient(target) as client:
        result = client.decode(LATENTS, version=version)
    return result.model[1], result.images


async def _under_load(target: str, scenario: Callable[[], None]) -> tuple[Tally, Counter[int]]:
    """Run the blocking `scenario` in a thread while unpinned Decodes go on; count who answered."""
    tally, versions, done = Tally(), Counter[int](), asyncio.Event()
    async with AsyncVaeClient(target) as client:

        async def call() -> None:
            versions[(await client.decode(LATENTS)).model[1]] += 1

        traffic = asyncio.ensure_future(closed_loop(call, workers=WORKERS, until=done.is_set, tally=tally))
        try:
            await asyncio.to_thread(scenario)
        finally:
            done.set()
            await traffic
    return tally, versions


def test_new_version_is_picked_up_under_load_and_broken_ones_are_refused(repo: Path, staged: Staged) -> None:
    with serving(repo, "--reload-interval-seconds", str(POLL_S)) as server:
        _, v1_images = _decode(server.target)
        switch: dict[str, float] = {}

        def scenario() -> None:
            staged.publish(repo, 2)
            switch["seconds"] = wait_until(lambda: _decode(server.target)[0] == 2, 60, "version 2 to answer")
            for broken in (3, 4, 5):
                staged.publish(repo, broken)
            wait_until(lambda: _failures(server) == 3, 60, "three refused versions")
            time.sleep(4 * POLL_S)  # more polls: refused versions are not retried while unchanged

        tally, versions = asyncio.run(_under_load(server.target, scenario))
        failures = _failures(server)
        pinned_version, pinned_images = _decode(server.target, version=1)
        latest_version, latest_images = _decode(server.target)
        log = server.log_text()

    print(
        f"\nhot reload: {tally.summary()}; answered by version {dict(versions)}; switched "
        f"{switch['seconds']:.2f} s after publishing; load failures {failures}"
    )
    assert tally.failed() == 0, tally.outcomes
    assert versions[1] > 0 and versions[2] > 0  # the switch happened while the load ran
    assert "loaded tiny/2" in log
    assert (pinned_version, latest_version) == (1, 2)  # broken 3, 4 and 5 never became the default
    np.testing.assert_array_equal(pinned_images, v1_images)  # a pinned request still gets version 1
    assert not np.allclose(latest_images, v1_images)  # version 2 has other weights
    assert failures == 3
    for version, reason in ((3, "sha256"), (4, "encoder"), (5, "pairing")):
        refusals = [line for line in log.splitlines() if f"model tiny version {version} refused" in line]
        assert len(refusals) == 1, log
        assert reason in refusals[0]


def test_sighup_reloads_on_demand(repo: Path, staged: Staged) -> None:
    with serving(repo) as server:  # no polling: only the signal reloads
        staged.publish(repo, 2)
        time.sleep(1.0)
        assert _decode(server.target)[0] == 1  # nobody looked yet

        def scenario() -> None:
            server.send(signal.SIGHUP)
            wait_until(lambda: _decode(server.target)[0] == 2, 60, "version 2 after SIGHUP")

        tally, versions = asyncio.run(_under_load(server.target, scenario))
        assert server.process.poll() is None  # SIGHUP reloads; it does not end the process
    print(f"\nSIGHUP reload: {tally.summary()}; answered by version {dict(versions)}")
    assert tally.failed() == 0, tally.outcomes
    assert versions[2] > 0


def _failures(server: ServerProcess) -> float:
    return server.metric("vae_model_load_failures_total", name="tiny")
