"""The training loop: Adam, KL warm-up, cosine decay, best-by-validation, resume, and DDP.

Every epoch reseeds from (seed, epoch, rank), so a resumed run continues exactly as an
uninterrupted one would. Under torchrun each rank trains on its own shard; rank 0 logs and saves.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training import checkpoint as ckpt
from training.config import ModelConfig, TrainConfig, to_dict, trains_on_binary
from training.data import EVAL_BINARIZATION_SEED, load_dataset, model_inputs
from training.losses import elbo_loss, iwae_loss
from training.model import VAE, count_parameters

VALIDATION_SEED = EVAL_BINARIZATION_SEED + 1
# What RunLogger appends to, in the run directory.
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistributedContext()
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    context = DistributedContext(dist.get_rank(), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    # Ranks share the machine's cores; oversubscribing threads slows every rank down.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    return context


def learning_rate(config: TrainConfig, progress: float) -> float:
    """progress in [0, 1] over the whole run."""
    if config.lr_schedule == "constant":
        return config.lr
    return config.lr_min + 0.5 * (config.lr - config.lr_min) * (1.0 + math.cos(math.pi * progress))


def kl_weight(config: TrainConfig, epoch_progress: float) -> float:
    """Linear warm-up of the KL weight to beta over kl_warmup_epochs (Bowman et al. 2016)."""
    if config.kl_warmup_epochs <= 0:
        return config.beta
    return config.beta * min(1.0, epoch_progress / config.kl_warmup_epochs)


def class_labels(labels: np.ndarray, model_config: ModelConfig) -> torch.Tensor:
    """A split's labels as class indices for a conditional model; refuses unlabelled or unknown ones."""
    classes = len(model_config.classes)
    bad = (labels < 0) | (labels >= classes)
    if bad.any():
        raise ValueError(
            f"a conditional model needs every image labelled 0..{classes - 1}; "
            f"{int(bad.sum())} of {len(labels)} are not (first: {int(labels[bad][0])})"
        )
    return torch.from_numpy(labels.astype(np.int64))


def to_unit_float(batch_uint8: torch.Tensor) -> torch.Tensor:
    return batch_uint8.float().div_(255.0)


@torch.no_grad()
def validation_nelbo(
    model: VAE,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    batch_size: int = 1000,
    iw_samples: int = 1,
) -> float:
    """Mean negative bound on fixed inputs with fixed noise (comparable per epoch).

    The single-sample ELBO, or with iw_samples > 1 the importance-weighted bound an iwae run trains on.
    """
    model.eval()
    state = torch.get_rng_state()
    torch.manual_seed(VALIDATION_SEED)
    total = 0.0
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size]
        y = None if labels is None else labels[start : start + batch_size]
        terms = elbo_loss(model, x, y=y) if iw_samples == 1 else iwae_loss(model, x, iw_samples, y=y)
        total += float(terms.nelbo) * len(x)
    torch.set_rng_state(state)
    model.train()
    return total / len(images)


class RunLogger:
    """JSONL metrics and TensorBoard scalars, written by rank 0 only."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / METRICS
        self.tensorboard: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(run_dir / TENSORBOARD))
        except ImportError:  # tensorboard is in the train extra; a bare torch install still trains
            self.tensorboard = None

    def log(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                    self.tensorboard.add_scalar(key, value, record["epoch"])
            self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def train(
    model_config: ModelConfig,
    config: TrainConfig,
    run_dir: Path,
    *,
    data_dir: Path | None = None,
    device_name: str = "auto",
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Train into run_dir (best.pt, last.pt, metrics.jsonl, tensorboard/); returns run_dir."""
    device = pick_device(device_name)
    dist_ctx = init_distributed(device)
    if device.type == "cuda":
        device = torch.device("cuda", dist_ctx.local_rank)
        torch.cuda.set_device(device)
    splits = load_dataset(config.dataset, data_dir)
    if splits.image_shape != model_config.image_shape:
        raise ValueError(
            f"the dataset's images are {splits.image_shape} but the model expects "
            f"{model_config.image_shape}; set [model] image_shape = {list(splits.image_shape)}"
        )
    train_x, train_y = (
        splits.train_x[: config.train_subset or None],
        splits.train_y[: config.train_subset or None],
    )
    val_x, val_y = splits.val_x[: config.val_subset or None], splits.val_y[: config.val_subset or None]
    if config.train_on == "train+val":
        train_x, train_y = np.concatenate([train_x, val_x]), np.concatenate([train_y, val_y])
    train_images = torch.from_numpy(train_x).to(device)
    binarized = trains_on_binary(model_config, config)
    val_images = torch.from_numpy(model_inputs(val_x, binarized, VALIDATION_SEED)).to(device)
    train_labels = val_labels = None
    if model_config.conditional:
        train_labels = class_labels(train_y, model_config).to(device)
        val_labels = class_labels(val_y, model_config).to(device)

    torch.manual_seed(config.seed)
    model = VAE(model_config)
    start_epoch, step, best, elapsed = 0, 0, math.inf, 0.0
    if config.init:
        weights, elapsed = ckpt.initial_weights(Path(config.init), model_config, model.state_dict())
        model.load_state_dict(weights)
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume and (run_dir / ckpt.LAST).exists():
        state = ckpt.load(run_dir / ckpt.LAST)
        if state.model_config != model_config:
            raise ValueError(f"{run_dir} was trained with a different model config; resume needs the same")
        model.load_state_dict(state.model_state)
        if state.optimizer_state is not None:
            optimizer.load_state_dict(state.optimizer_state)
        start_epoch, step, best, elapsed = state.epoch, state.step, state.best_val_nelbo, state.train_seconds

    net: nn.Module = model
    if dist_ctx.world_size > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    logger = RunLogger(run_dir) if dist_ctx.is_main else None
    if dist_ctx.is_main:
        (run_dir / "config.json").write_text(
            json.dumps({"model": to_dict(model_config), "train": to_dict(config)}, indent=2) + "\n"
        )
        print(f"{count_parameters(model):,} parameters, {len(train_images):,} training images on {device}")

    n_train = len(train_images)
    per_rank = n_train // dist_ctx.world_size
    steps_per_epoch = max(1, math.ceil(per_rank / config.batch_size))
    total_steps = steps_per_epoch * config.epochs

    for epoch in range(start_epoch, config.epochs):
        epoch_start = time.perf_counter()
        seed = config.seed * 1_000_003 + epoch
        torch.manual_seed(seed * 97 + dist_ctx.rank)  # noise: differs per rank, fixed per epoch
        order = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))
        shard = order[dist_ctx.rank : per_rank * dist_ctx.world_size : dist_ctx.world_size].to(device)
        model.train()
        sums = {"loss": 0.0, "nelbo": 0.0, "recon": 0.0, "kl": 0.0}
        batches = range(steps_per_epoch)
        bar = None
        if progress and dist_ctx.is_main:
            from tqdm import tqdm

            bar = tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, dynamic_ncols=True)
        for batch_index in bar if bar is not None else batches:
            index = shard[batch_index * config.batch_size : (batch_index + 1) * config.batch_size]
            x = to_unit_float(train_images[index])
            y = None if train_labels is None else train_labels[index]
            if binarized:
                x = torch.bernoulli(x)
            lr = learning_rate(config, step / total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bfloat16"):
                if config.objective == "iwae":
                    terms = iwae_loss(model, x, config.iw_samples, net, y)
                else:
                    weight = kl_weight(config, epoch + batch_index / steps_per_epoch)
                    terms = elbo_loss(
                        model,
                        x,
                        net,
                        y=y,
                        beta=weight,
                        free_bits=config.free_bits,
                        sum_over_batch=config.reduction == "sum",
                    )
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(terms.loss)
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            step += 1
            for key in sums:
                sums[key] += float(getattr(terms, key).detach())
            if bar is not None and batch_index % 20 == 0:
                bar.set_postfix(nelbo=f"{sums['nelbo'] / (batch_index + 1):.2f}")
        if bar is not None:
            bar.close()
        elapsed += time.perf_counter() - epoch_start

        if logger is not None:
            val_nelbo = validation_nelbo(model, val_images, val_labels)
            # The best checkpoint is the best on the bound training optimises: the ELBO of an ELBO run
            # worsens while an IWAE fine-tune improves the likelihood.
            val = val_nelbo
            bound: dict[str, float] = {}
            if config.objective == "iwae":
                val = validation_nelbo(model, val_images, val_labels, iw_samples=config.iw_samples)
                bound = {"val_iw_nelbo": val}
            record = {
                "epoch": epoch + 1,
                "step": step,
                "lr": lr,
                **{f"train_{k}": v / steps_per_epoch for k, v in sums.items()},
                "val_nelbo": val_nelbo,
                **bound,
                "epoch_seconds": time.perf_counter() - epoch_start,
                "train_seconds": elapsed,
            }
            if config.reduction == "sum":  # a summed loss is per batch; report it per image
                record["train_loss"] /= config.batch_size
            logger.log(record)
            trained_on = "-elbo" if config.objective == "elbo" else f"-iw bound (k={config.iw_samples})"
            print(
                f"epoch {epoch + 1}/{config.epochs}  train {trained_on} {record['train_nelbo']:.2f}  "
                f"val -elbo {val_nelbo:.2f}"
                + (f"  val {trained_on} {val:.2f}" if bound else "")
                + f"  {record['epoch_seconds']:.1f}s",
                flush=True,
            )
            state = ckpt.Checkpoint(
                model_config,
                config,
                epoch + 1,
                step,
                model.state_dict(),
                optimizer.state_dict(),
                min(best, val),
                elapsed,
            )
            if val < best or config.train_on == "train+val":
                best = val
                ckpt.save(run_dir / ckpt.BEST, state)
            ckpt.save(run_dir / ckpt.LAST, state)
            if config.snapshot_every and (epoch + 1) % config.snapshot_every == 0:
                ckpt.save(run_dir / ckpt.snapshot_name(epoch + 1), state)
    if logger is not None:
        logger.close()
    if dist_ctx.world_size > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return run_dir
