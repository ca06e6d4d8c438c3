"""Model and training configuration, and the TOML recipes that set them."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Architecture = Literal["conv", "mlp"]
Likelihood = Literal["bernoulli", "gaussian"]
PriorKind = Literal["normal", "mixture", "vamp"]


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Everything needed to rebuild a VAE; stored inside every checkpoint."""

    architecture: Architecture = "conv"
    image_shape: tuple[int, int, int] = (1, 28, 28)
    latent_dim: int = 32
    # conv: channels at half and quarter resolution, then the dense hidden width; mlp: hidden sizes.
    widths: tuple[int, ...] = (32, 64, 512)
    likelihood: Likelihood = "bernoulli"
    # Gaussian likelihood only: learn one log-std per pixel, or keep it fixed at this value.
    gaussian_learned_scale: bool = True
    gaussian_log_scale: float = -2.0
    # Class names of a conditional VAE (label i is classes[i]); empty: unconditional.
    classes: tuple[str, ...] = ()
    # p(z): N(0, I); a mixture of prior_components learned Gaussians; or the VampPrior, a uniform
    # mixture of the posteriors at prior_components learned pseudo-inputs (Tomczak & Welling 2018).
    prior: PriorKind = "normal"
    prior_components: int = 0
    # Normalizing flows (training/flows.py), 0 layers: none. On the prior, p(z) = p_base(f(z)) |det f'|
    # over the prior above; on the posterior, z = g(z0; mu, logvar) for z0 ~ N(mu, exp(logvar)).
    prior_flow_layers: int = 0
    posterior_flow_layers: int = 0
    flow_hidden: int = 128

    @property
    def conditional(self) -> bool:
        return bool(self.classes)

    def __post_init__(self) -> None:
        if self.architecture not in ("conv", "mlp"):
            raise ValueError(f"architecture must be 'conv' or 'mlp', got {self.architecture!r}")
        if self.likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {self.likelihood!r}")
        if not 2 <= self.latent_dim <= 128:
            raise ValueError(f"latent_dim must be in 2..128, got {self.latent_dim}")
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ValueError(f"image_shape must be (C, H, W) with positive sizes, got {self.image_shape}")
        _, height, width = self.image_shape
        if self.architecture == "conv":
            if height % 4 or width % 4:
                raise ValueError(f"the conv model needs H and W divisible by 4, got {height}x{width}")
            if len(self.widths) != 3:
                raise ValueError(f"the conv model needs 3 widths (half, quarter, hidden), got {self.widths}")
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"widths must be positive, got {self.widths}")
        if self.classes and self.architecture != "conv":
            raise ValueError("a conditional model (classes) needs architecture = 'conv'")
        distinct = set(self.classes)
        if self.classes and (len(distinct) != len(self.classes) or len(distinct) < 2 or "" in distinct):
            raise ValueError(f"classes must be two or more distinct, non-empty names: {list(self.classes)}")
        self._check_prior()
        if min(self.prior_flow_layers, self.posterior_flow_layers) < 0 or self.flow_hidden < 1:
            raise ValueError(
                "prior_flow_layers and posterior_flow_layers must be 0 (none) or more, flow_hidden at least 1"
            )

    @property
    def flows(self) -> bool:
        return bool(self.prior_flow_layers or self.posterior_flow_layers)

    @property
    def analytic_kl(self) -> bool:
        """KL(q(z|x) || p(z)) in closed form: a Gaussian posterior against N(0, I), no flow."""
        return self.prior == "normal" and not self.flows

    def _check_prior(self) -> None:
        if self.prior not in ("normal", "mixture", "vamp"):
            raise ValueError(f"prior must be 'normal', 'mixture' or 'vamp', got {self.prior!r}")
        if self.prior == "normal":
            if self.prior_components != 0:
                raise ValueError(
                    f"prior_components is {self.prior_components} but the normal prior has none; "
                    "set prior = 'mixture' or 'vamp', or prior_components = 0"
                )
            return
        if self.prior_components < 1:
            raise ValueError(
                f"prior = {self.prior!r} needs prior_components >= 1, got {self.prior_components}"
            )
        if self.classes:
            raise ValueError(
                f"prior = {self.prior!r} needs an unconditional model: a learned prior of a conditional "
                "model would have to depend on the label; remove classes or use prior = 'normal'"
            )


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How a model is trained; stored inside every checkpoint next to the model config."""

    dataset: str = "mnist"  # "mnist" or a path to IDX files, an .npy/.npz array, or an image folder
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    lr_min: float = 1e-5
    beta: float = 1.0
    kl_warmup_epochs: int = 0
    free_bits: float = 0.0  # nats per latent dimension, 0 disables
    # "elbo" is the VAE bound; "iwae" trains on the importance-weighted bound with iw_samples.
    objective: Literal["elbo", "iwae"] = "elbo"
    iw_samples: int = 1
    # "dynamic" draws a fresh binarization every time an image is seen; "none" trains on grey levels.
    binarize: Literal["dynamic", "none"] = "dynamic"
    # "mean" averages the loss over the batch; "sum" reproduces pytorch/examples (summed BCE + KL).
    reduction: Literal["mean", "sum"] = "mean"
    grad_clip: float = 0.0
    # "bfloat16" runs the encoder's and decoder's networks under autocast (1.8x faster a step on the
    # 2 AVX-512 cores of docs/results.md); the draws, flows, densities and the bound stay float32, and
    # so do the weights, the validation and everything evaluated or exported.
    precision: Literal["float32", "bfloat16"] = "float32"
    seed: int = 0
    train_subset: int = 0  # 0 = all training images
    val_subset: int = 0
    # "train+val" also trains on the validation images (MNIST: 60,000 in all, the protocol of Burda et
    # al. 2015); validation figures then describe images it trained on, so best.pt is the last epoch.
    train_on: Literal["train", "train+val"] = "train"
    snapshot_every: int = 0  # also keep epoch-NNN.pt every N epochs, for NLL-against-time curves; 0 = off
    # A run (directory or .pt) whose weights start this one, to fine-tune it; "" starts from scratch.
    # The optimizer starts afresh; train_seconds goes on from that run's, so it counts the whole model.
    init: str = ""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs, batch_size and lr must be positive")
        if self.snapshot_every < 0:
            raise ValueError("snapshot_every must be 0 (off) or a number of epochs")
        if self.objective == "iwae" and self.iw_samples < 2:
            raise ValueError("objective 'iwae' needs iw_samples >= 2")
        if self.train_on not in ("train", "train+val"):
            raise ValueError(f"train_on must be 'train' or 'train+val', got {self.train_on!r}")
        if self.precision not in ("float32", "bfloat16"):
            raise ValueError(f"precision must be 'float32' or 'bfloat16', got {self.precision!r}")
        if self.objective == "elbo" and self.iw_samples != 1:
            raise ValueError("objective 'elbo' uses one sample; set objective = 'iwae' for iw_samples > 1")


def trains_on_binary(model: ModelConfig, train: TrainConfig) -> bool:
    """Whether the model sees binarized images (so evaluation must binarize too)."""
    return model.likelihood == "bernoulli" and train.binarize == "dynamic"


@dataclass(frozen=True, kw_only=True)
class Recipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _build(cls: type[Any], values: dict[str, Any], section: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in [{section}]; known keys: {sorted(known)}")
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**fixed)


def load_recipe(path: str | Path) -> Recipe:
    """Read a TOML recipe with optional [model] and [train] tables."""
    with open(path, "rb") as handle:
        data = tomllib.load(handle)
    extra = sorted(set(data) - {"model", "train"})
    if extra:
        raise ValueError(f"{path}: unknown table(s) {extra}; a recipe has [model] and [train]")
    return Recipe(
        model=_build(ModelConfig, data.get("model", {}), "model"),
        train=_build(TrainConfig, data.get("train", {}), "train"),
    )


def to_dict(config: ModelConfig | TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def model_config_from_dict(values: dict[str, Any]) -> ModelConfig:
    return _build(ModelConfig, values, "model")  # type: ignore[no-any-return]


def train_config_from_dict(values: dict[str, Any]) -> TrainConfig:
    return _build(TrainConfig, values, "train")  # type: ignore[no-any-return]
