"""Test-set evaluation as the literature reports it: -ELBO, IW-NLL, active units, KL per dim.

The importance-weighted NLL follows Burda et al. 2015 (k samples, log-sum-exp in bounded memory).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from training import checkpoint as ckpt
from training.config import trains_on_binary
from training.data import EVAL_BINARIZATION_SEED, load_dataset, model_inputs
from training.losses import elbo_loss, gaussian_kl, log_likelihood, log_normal, log_standard_normal
from training.model import VAE
from training.train import pick_device

EVAL_NOISE_SEED = 12345
ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2015: Cov_x(E_q[u]) above 1e-2


@torch.no_grad()
def importance_weighted_nll(model: VAE, x: torch.Tensor, k: int, batch_decodes: int = 5000) -> torch.Tensor:
    """-log p(x) estimated with k importance samples per image, one value per image.

    Samples are drawn in chunks and folded into a running log-sum-exp, so memory is bounded by
    batch_decodes decoder evaluations whatever k is.
    """
    mu, logvar = model.encode(x)
    std = torch.exp(0.5 * logvar)
    images = x.shape[0]
    chunk = max(1, batch_decodes // images)
    running = torch.full((images,), -math.inf, device=x.device, dtype=x.dtype)
    done = 0
    while done < k:
        s = min(chunk, k - done)
        z = mu + torch.randn((s, *mu.shape), device=x.device, dtype=x.dtype) * std  # (s, B, D)
        decoded = model.decode(z.reshape(s * images, -1))
        x_rep = x.expand(s, *x.shape).reshape(s * images, *x.shape[1:])
        log_px_z = log_likelihood(model, decoded, x_rep).reshape(s, images)
        log_w = log_px_z + log_standard_normal(z) - log_normal(z, mu, logvar)
        running = torch.logaddexp(running, torch.logsumexp(log_w, 0))
        done += s
    return -(running - math.log(k))


def evaluate_run(
    run: Path,
    *,
    k: int = 5000,
    subset: int = 0,
    data_dir: Path | None = None,
    device_name: str = "auto",
    batch_decodes: int = 5000,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate RUN's best checkpoint on the test set and write RUN/eval.json."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    device = pick_device(device_name)
    state = ckpt.load(run)
    model = state.build_model().to(device)
    splits = load_dataset(state.train_config.dataset, data_dir)
    test_uint8 = splits.test_x[: subset or None]

    binarized = trains_on_binary(state.model_config, state.train_config)
    x_all = torch.from_numpy(model_inputs(test_uint8, binarized, EVAL_BINARIZATION_SEED)).to(device)
    torch.manual_seed(EVAL_NOISE_SEED)
    started = time.perf_counter()

    elbo_sum, mus, kl_sum = 0.0, [], torch.zeros(state.model_config.latent_dim, device=device)
    with torch.no_grad():
        for start in range(0, len(x_all), 1000):
            x = x_all[start : start + 1000]
            elbo_sum += float(elbo_loss(model, x).nelbo) * len(x)
            mu, logvar = model.encode(x)
            mus.append(mu)
            kl_sum += gaussian_kl(mu, logvar).sum(0)
    mu_all = torch.cat(mus)
    unit_variance = mu_all.var(0)
    kl_per_dim = kl_sum / len(x_all)

    images_per_pass = max(1, min(100, batch_decodes // k))
    nll_values = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(x_all), desc=f"IW-NLL k={k}", unit="img", dynamic_ncols=True)
    for start in range(0, len(x_all), images_per_pass):
        x = x_all[start : start + images_per_pass]
        nll_values.append(importance_weighted_nll(model, x, k, batch_decodes))
        if bar is not None:
            bar.update(len(x))
            done = torch.cat(nll_values)
            bar.set_postfix(nll=f"{float(done.mean()):.2f}")
    if bar is not None:
        bar.close()
    nll = torch.cat(nll_values).double()

    report = {
        "test_images": len(x_all),
        "test_binarization": (
            f"fixed Bernoulli draw, seed {EVAL_BINARIZATION_SEED}" if binarized else "none (grey levels)"
        ),
        "negative_elbo": elbo_sum / len(x_all),
        "iw_nll": float(nll.mean()),
        "iw_nll_stderr": float(nll.std() / math.sqrt(len(nll))) if len(nll) > 1 else 0.0,
        "iw_k": k,
        "active_units": int((unit_variance > ACTIVE_UNIT_THRESHOLD).sum()),
        "latent_dim": state.model_config.latent_dim,
        "kl_per_dim": [round(float(v), 4) for v in kl_per_dim],
        "checkpoint_epoch": state.epoch,
        "train_seconds": state.train_seconds,
        "eval_seconds": time.perf_counter() - started,
        "device": str(device),
    }
    run_dir = run if run.is_dir() else run.parent
    (run_dir / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
