"""Shared test setup: folder-based markers, an isolated HOME, and a tiny exported model repository."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
KINDS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        kind = Path(item.fspath).relative_to(TESTS).parts[0]
        if kind in KINDS:
            item.add_marker(getattr(pytest.mark, kind))


@pytest.fixture(autouse=True, scope="session")
def _isolated_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """onnxruntime and others write caches under $HOME; keep tests off the real one."""
    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("HOME", str(home))
    mp.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    yield
    mp.undo()


# --- a tiny exported model, for export and service tests -----------------------------------------

TINY_MODEL_NAME = "tiny"
TINY_CVAE_NAME = "tiny-cvae"
TINY_CVAE_CLASSES = ("a", "b", "c")


def export_tiny_version(
    repo: Path, version: int, seed: int = 0, *, fp16: bool = False, classes: tuple[str, ...] = ()
) -> Path:
    """Export a seeded, untrained tiny conv VAE (1x28x28, latent 8, Bernoulli) as repo/tiny/VERSION.

    Goes through a real checkpoint and the real `vae export` path. Different seeds give different
    weights, so a new version visibly changes the outputs (hot-reload tests). With classes, the VAE is
    conditional on them and goes to repo/tiny-cvae/VERSION. Returns the version dir.
    """
    import tempfile

    import torch

    from export.onnx_export import export_run
    from training import checkpoint as ckpt
    from training.config import ModelConfig, TrainConfig
    from training.model import VAE

    config = ModelConfig(
        architecture="conv", image_shape=(1, 28, 28), latent_dim=8, widths=(8, 16, 32), classes=classes
    )
    with torch.random.fork_rng():  # seed the weights without moving the RNG of other tests
        torch.manual_seed(seed)
        model = VAE(config)
    with tempfile.TemporaryDirectory() as run:
        checkpoint = ckpt.Checkpoint(
            model_config=config,
            train_config=TrainConfig(epochs=1, seed=seed),
            epoch=0,
            step=0,
            model_state=model.state_dict(),
            optimizer_state=None,
            best_val_nelbo=float("inf"),
            train_seconds=0.0,
        )
        ckpt.save(Path(run) / ckpt.LAST, checkpoint)
        name = TINY_CVAE_NAME if classes else TINY_MODEL_NAME
        return export_run(Path(run), repo, name, version=version, fp16=fp16)


@pytest.fixture(scope="session")
def tiny_model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding tiny/1 (see export_tiny_version).

    Shared by the whole session: copy it (shutil.copytree) before adding versions or changing files.
    """
    repo = tmp_path_factory.mktemp("model_repo")
    export_tiny_version(repo, 1, seed=0)
    return repo


@pytest.fixture(scope="session")
def tiny_model_exporter() -> Callable[..., Path]:
    """export_tiny_version, for tests that add versions: exporter(repo, version, seed) -> version dir."""
    return export_tiny_version


@pytest.fixture(scope="session")
def tiny_cvae_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding tiny-cvae/1, conditional on TINY_CVAE_CLASSES; copy it to change it."""
    repo = tmp_path_factory.mktemp("cvae_repo")
    export_tiny_version(repo, 1, seed=0, classes=TINY_CVAE_CLASSES)
    return repo
