"""Shared test setup: folder-based markers, an isolated HOME, and a tiny exported model repository."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads only in the tests that export
    from training.config import PriorKind
    from training.model import VAE

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
TINY_PRIOR_COMPONENTS = 3
# The tiny mixture's components sit TINY_MIXTURE_SPREAD apart on the first axes, with unit variances
# and unequal weights softmax([0, 1, 2]), so that tests can tell both components and proportions apart.
TINY_MIXTURE_SPREAD = 12.0
TINY_FLOW_NAME = "tiny-flow"
TINY_FLOW_LAYERS = 3
TINY_FLOW_SCALE = 0.3  # of the flow's random weights: a clear move, well conditioned


def tiny_model(
    seed: int = 0,
    *,
    classes: tuple[str, ...] = (),
    prior: PriorKind = "normal",
    prior_components: int = 0,
    prior_flow_layers: int = 0,
) -> VAE:
    """A seeded, untrained tiny conv VAE (1x28x28, latent 8, Bernoulli), as export_tiny_version exports it.

    A prior flow gets random weights (a new one is the identity), so that it visibly moves the prior.
    """
    import torch

    from training.config import ModelConfig
    from training.model import VAE
    from training.priors import MixturePrior

    config = ModelConfig(
        architecture="conv",
        image_shape=(1, 28, 28),
        latent_dim=8,
        widths=(8, 16, 32),
        classes=classes,
        prior=prior,
        prior_components=prior_components,
        prior_flow_layers=prior_flow_layers,
        flow_hidden=16,
    )
    with torch.random.fork_rng():  # seed the weights without moving the RNG of other tests
        torch.manual_seed(seed)
        model = VAE(config)
        if model.prior_flow is not None:
            with torch.no_grad():
                for parameter in model.prior_flow.parameters():
                    parameter.copy_(TINY_FLOW_SCALE * torch.randn(parameter.shape))
    if isinstance(model.prior, MixturePrior):
        with torch.no_grad():
            model.prior.means.copy_(TINY_MIXTURE_SPREAD * torch.eye(prior_components, config.latent_dim))
            model.prior.logvars.zero_()
            model.prior.logits.copy_(torch.arange(prior_components, dtype=torch.float32))
    return model


def export_tiny_version(
    repo: Path,
    version: int,
    seed: int = 0,
    *,
    fp16: bool = False,
    classes: tuple[str, ...] = (),
    prior: PriorKind = "normal",
    prior_components: int = 0,
    prior_flow_layers: int = 0,
) -> Path:
    """Export tiny_model(seed, ...) as repo/tiny/VERSION.

    Goes through a real checkpoint and the real `vae export` path. Different seeds give different
    weights, so a new version visibly changes the outputs (hot-reload tests). With classes, the VAE is
    conditional on them and goes to repo/tiny-cvae/VERSION; with a learned prior ("mixture" or
    "vamp", prior_components of them), to repo/tiny-PRIOR/VERSION; with a prior flow, to
    repo/tiny-flow/VERSION. Returns the version dir.
    """
    import tempfile

    from export.onnx_export import export_run
    from training import checkpoint as ckpt
    from training.config import TrainConfig

    model = tiny_model(
        seed,
        classes=classes,
        prior=prior,
        prior_components=prior_components,
        prior_flow_layers=prior_flow_layers,
    )
    config = model.config
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
        name = TINY_CVAE_NAME if classes else TINY_MODEL_NAME if prior == "normal" else f"tiny-{prior}"
        if prior_flow_layers:
            name = TINY_FLOW_NAME
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
def tiny_model_builder() -> Callable[..., VAE]:
    """tiny_model, for tests that compare an exported version with the PyTorch model behind it."""
    return tiny_model


@pytest.fixture(scope="session")
def tiny_cvae_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding tiny-cvae/1, conditional on TINY_CVAE_CLASSES; copy it to change it."""
    repo = tmp_path_factory.mktemp("cvae_repo")
    export_tiny_version(repo, 1, seed=0, classes=TINY_CVAE_CLASSES)
    return repo


@pytest.fixture(scope="session")
def tiny_mixture_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding tiny-mixture/1: tiny_model's mixture prior; copy it to change it."""
    repo = tmp_path_factory.mktemp("mixture_repo")
    export_tiny_version(repo, 1, seed=0, prior="mixture", prior_components=TINY_PRIOR_COMPONENTS)
    return repo


@pytest.fixture(scope="session")
def tiny_vamp_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding tiny-vamp/1: a VampPrior at TINY_PRIOR_COMPONENTS pseudo-inputs."""
    repo = tmp_path_factory.mktemp("vamp_repo")
    export_tiny_version(repo, 1, seed=0, prior="vamp", prior_components=TINY_PRIOR_COMPONENTS)
    return repo


@pytest.fixture(scope="session")
def tiny_flow_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository holding tiny-flow/1: tiny-mixture's prior moved by a random TINY_FLOW_LAYERS-layer flow"""
    repo = tmp_path_factory.mktemp("flow_repo")
    export_tiny_version(
        repo,
        1,
        seed=0,
        prior="mixture",
        prior_components=TINY_PRIOR_COMPONENTS,
        prior_flow_layers=TINY_FLOW_LAYERS,
    )
    return repo
