"""Test-set evaluation as the literature reports it: -ELBO, IW-NLL, active units, KL per dim.

The importance-weighted NLL follows Burda et al. 2015 (k samples, log-sum-exp in bounded memory).
It evaluates either a run's checkpoint in PyTorch or an exported model version's ONNX graphs in
onnxruntime: the latter measures exactly what the service serves, and is faster on CPU.
"""

from __future__ import annotations

import ctypes
import json
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

from repository.manifest import read_manifest
from repository.prior import FlowPrior, GaussianMixture, load_prior
from repository.tensor_names import BASE_LATENTS, IMAGES, LATENTS, LOG_DET, LOGITS, LOGVAR, MU, feeds
from training import checkpoint as ckpt
from training.config import (
    ModelConfig,
    TrainConfig,
    model_config_from_dict,
    train_config_from_dict,
    trains_on_binary,
)
from training.data import EVAL_BINARIZATION_SEED, load_dataset, model_inputs
from training.eval_tasks import FinishedTasks, images_per_pass, images_per_task, progress_path
from training.losses import gaussian_kl, log_likelihood
from training.model import VAE, gaussian_draws, repeat_labels
from training.priors import Components, log_prior
from training.train import class_labels, pick_device

EVAL_NOISE_SEED = 12345
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2015: Cov_x(E_q[u]) above 1e-2


class ExportedModel:
    """An exported version's encoder and decoder graphs behind the VAE's encode/decode interface.

    Only Bernoulli models: their decoder graph exports the logits the likelihood needs. A learned
    prior is the mixture in the version's prior file, and a prior flow its density graph, as the
    service reads them.
    """

    def __init__(self, version_dir: Path, config: ModelConfig, threads: int) -> None:
        from repository.runtime import Graph  # the one module that imports onnxruntime

        if config.likelihood != "bernoulli":
            raise ValueError(
                "evaluating exported graphs needs a Bernoulli model (its decoder exports logits)"
            )
        self.config = config
        _keep_large_blocks_out_of_the_heap()
        self.encoder = Graph(version_dir / "encoder.onnx", intra_op_threads=threads)
        self.decoder = Graph(version_dir / "decoder.onnx", intra_op_threads=threads)
        prior = load_prior(
            version_dir, read_manifest(version_dir), lambda path, _: Graph(path, intra_op_threads=threads)
        )
        self._flow = prior if isinstance(prior, FlowPrior) else None
        if isinstance(prior, FlowPrior):
            prior = prior.base
        self._components: Components | None = None
        if isinstance(prior, GaussianMixture):
            self._components = (
                torch.from_numpy(prior.means),
                torch.from_numpy(prior.logvars),
                torch.from_numpy(prior.log_weights),
            )

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.encoder.run(feeds(IMAGES, x.contiguous().numpy(), _numpy(y)), (MU, LOGVAR))
        return torch.from_numpy(out[MU]), torch.from_numpy(out[LOGVAR])

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        out = self.decoder.run(feeds(LATENTS, z.contiguous().numpy(), _numpy(y)), (LOGITS,))
        return torch.from_numpy(out[LOGITS])

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        if self._flow is None:
            return log_prior(z, self._components)
        # The base's log p(u) in torch (log_mixture's matrix products), the flow's move in its graph.
        flowed = self._flow.density.run({LATENTS: z.reshape(-1, z.shape[-1]).contiguous().numpy()})
        u = torch.from_numpy(flowed[BASE_LATENTS]).reshape(z.shape)
        return log_prior(u, self._components) + torch.from_numpy(flowed[LOG_DET]).reshape(z.shape[:-1])

    def draw_posterior(
        self, mu: torch.Tensor, logvar: torch.Tensor, samples: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return gaussian_draws(mu, logvar, samples)


def _numpy(y: torch.Tensor | None) -> Any:
    return None if y is None else y.contiguous().numpy()


Evaluable = VAE | ExportedModel


def _keep_large_blocks_out_of_the_heap() -> None:
    """Fix glibc's mmap threshold at 1 MiB for this process, where glibc is the C library.

    glibc raises the threshold each time a large block is freed, so torch's 16 MB tensors (5000
    decodes x 784 pixels) come to share the heap with onnxruntime's many small allocations, and the
    fragmented heap only grows: 3.3 MB per image, 24 GB by the end of a 10k-image k=5000 evaluation.
    With the threshold fixed they are mapped and unmapped whole (0.2 MB per image; docs/results.md).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # another C library: nothing measured there
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)


def negative_elbo(model: Evaluable, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Single-sample reconstruction term plus the KL, one value per image (y: labels, if any).

    The KL is analytic under N(0, I); under a learned prior, the estimate log q(z|x) - log p(z) at the
    same z that was decoded (training/losses.py's ELBO).
    """
    mu, logvar = model.encode(x, y)
    draws, log_q = model.draw_posterior(mu, logvar, 1)
    z = draws[0]
    decoded = model.decode(z, y)
    kl = gaussian_kl(mu, logvar).sum(1) if model.config.analytic_kl else log_q[0] - model.log_prior(z)
    return -log_likelihood(model, decoded, x) + kl


@torch.no_grad()
def importance_weighted_nll(
    model: Evaluable, x: torch.Tensor, k: int, batch_decodes: int = 5000, y: torch.Tensor | None = None
) -> torch.Tensor:
    """-log p(x) (-log p(x | y) for a conditional model) with k importance samples, one value per image.

    Samples are drawn in chunks and folded into a running log-sum-exp, so memory is bounded by
    batch_decodes decoder evaluations whatever k is.
    """
    mu, logvar = model.encode(x, y)
    images = x.shape[0]
    chunk = max(1, batch_decodes // images)
    running = torch.full((images,), -math.inf, device=x.device, dtype=x.dtype)
    done = 0
    while done < k:
        s = min(chunk, k - done)
        z, log_q = model.draw_posterior(mu, logvar, s)  # (s, B, D), (s, B)
        decoded = model.decode(z.reshape(s * images, -1), repeat_labels(y, s))
        x_rep = x.expand(s, *x.shape).reshape(s * images, *x.shape[1:])
        log_px_z = log_likelihood(model, decoded, x_rep).reshape(s, images)
        log_w = log_px_z + model.log_prior(z) - log_q
        running = torch.logaddexp(running, torch.logsumexp(log_w, 0))
        done += s
    return -(running - math.log(k))


def evaluate_run(
    run: Path,
    *,
    k: int = 5000,
    subset: int = 0,
    first_image: int = 0,
    data_dir: Path | None = None,
    device_name: str = "auto",
    batch_decodes: int = 5000,
    progress: bool = True,
    out: Path | None = None,
    threads: int = 0,
    workers: int = 1,
) -> dict[str, Any]:
    """Evaluate a run's best checkpoint, or an exported version (a folder with model.json).

    The IW-NLL runs over tasks of images, each with noise seeded by its first image, so the
    figures do not depend on `workers`, the processes that share the `threads`. Writes the
    report to `out`, by default RUN/eval.json (never to an exported version's folder: its manifest's
    hashes describe it), and each task to OUT.partial, which an interrupted run resumes from.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    total_threads = threads or torch.get_num_threads()
    model, model_config, train_config, provenance = _load(run, device_name, total_threads)
    if out is None:
        if isinstance(model, ExportedModel):
            raise ValueError("evaluating an exported version needs --out FILE for the report")
        out = (run if run.is_dir() else run.parent) / "eval.json"
    device = torch.device("cpu") if isinstance(model, ExportedModel) else pick_device(device_name)
    if workers > 1 and device.type != "cpu":
        raise ValueError(f"workers split the CPU's threads; evaluate on {device} with workers = 1")
    splits = load_dataset(train_config.dataset, data_dir)
    test_uint8 = splits.test_x[first_image:][: subset or None]

    binarized = trains_on_binary(model_config, train_config)
    x_all = torch.from_numpy(model_inputs(test_uint8, binarized, EVAL_BINARIZATION_SEED)).to(device)
    y_all = None
    if model_config.conditional:
        y_all = class_labels(splits.test_y[first_image:][: subset or None], model_config).to(device)
    torch.manual_seed(EVAL_NOISE_SEED)
    started = time.perf_counter()

    layers = (model_config.prior_flow_layers, model_config.posterior_flow_layers)
    flows = f"{layers[0]} prior and {layers[1]} posterior flow layers"
    elbo_sum, mus, kl_sum = 0.0, [], torch.zeros(model_config.latent_dim, device=device)
    with torch.no_grad():
        for start in range(0, len(x_all), 1000):
            x = x_all[start : start + 1000]
            y = None if y_all is None else y_all[start : start + 1000]
            elbo_sum += float(negative_elbo(model, x, y).sum())
            mu, logvar = model.encode(x, y)
            mus.append(mu)
            kl_sum += gaussian_kl(mu, logvar).sum(0)
    mu_all = torch.cat(mus)
    unit_variance = mu_all.var(0)
    # KL(q || p) per dimension exists only for a factorised prior: N(0, I), not a mixture or a flow.
    kl_per_dim: list[float] | str = [round(float(v), 4) for v in kl_sum / len(x_all)]
    if not model_config.analytic_kl:
        kl_per_dim = f"not reported: the KL is not analytic under the {model_config.prior} prior" + (
            f" with {flows}" if model_config.flows else ""
        )

    task_images = images_per_task(k, batch_decodes)
    evaluation = {"model": str(run.resolve()), **provenance, "k": k, "images": [first_image, len(x_all)]}
    evaluation |= {"task_images": task_images, "batch_decodes": batch_decodes, "noise_seed": EVAL_NOISE_SEED}
    finished = FinishedTasks(progress_path(out), evaluation, announce=progress)
    pending = finished.pending(range(0, len(x_all), task_images))
    bar = None
    if progress:
        from tqdm import tqdm

        resumed = sum(map(len, finished.values.values()))
        bar = tqdm(total=len(x_all), initial=resumed, desc=f"IW-NLL k={k}", unit="img", dynamic_ncols=True)

    def done(start: int, nll_part: torch.Tensor) -> None:
        finished.add(start, nll_part, finished.earlier_seconds + time.perf_counter() - started)
        if bar is not None:
            bar.update(len(nll_part))
            bar.set_postfix(nll=f"{float(torch.cat(list(finished.values.values())).mean()):.2f}")

    def task(start: int) -> tuple[torch.Tensor, torch.Tensor | None, int, int, int]:
        end = start + task_images
        y = None if y_all is None else y_all[start:end]
        return x_all[start:end], y, k, batch_decodes, EVAL_NOISE_SEED + first_image + start

    try:
        if workers == 1:
            for start in pending:
                done(start, _task_nll(model, *task(start)))
        else:
            # Processes of one thread each: on CPU they outpace one process of as many threads.
            context = multiprocessing.get_context("spawn")  # torch's threads do not survive a fork
            per_worker = max(1, total_threads // workers)
            with ProcessPoolExecutor(workers, context, _start_worker, (run, device_name, per_worker)) as pool:
                futures = {pool.submit(_worker_task, *task(start)): start for start in pending}
                for future in as_completed(futures):
                    done(futures[future], future.result())
    except BaseException:
        finished.close(done=False)
        raise
    if bar is not None:
        bar.close()
    nll = torch.cat([finished.values[start] for start in sorted(finished.values)]).double()

    report = {
        "test_images": len(x_all),
        "first_test_image": first_image,
        "test_binarization": (
            f"fixed Bernoulli draw, seed {EVAL_BINARIZATION_SEED}" if binarized else "none (grey levels)"
        ),
        "negative_elbo": elbo_sum / len(x_all),
        "iw_nll": float(nll.mean()),
        "iw_nll_stderr": float(nll.std() / math.sqrt(len(nll))) if len(nll) > 1 else 0.0,
        "iw_k": k,
        "conditioned_on": "the true label" if y_all is not None else None,
        "active_units": int((unit_variance > ACTIVE_UNIT_THRESHOLD).sum()),
        "latent_dim": model_config.latent_dim,
        "prior": model_config.prior + (f", {flows}" if model_config.flows else ""),
        "kl_per_dim": kl_per_dim,
        **provenance,
        "eval_seconds": finished.earlier_seconds + time.perf_counter() - started,
        "workers": workers,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    finished.close(done=True)
    return report


def _task_nll(
    model: Evaluable, x: torch.Tensor, y: torch.Tensor | None, k: int, batch_decodes: int, seed: int
) -> torch.Tensor:
    """IW-NLL of one task's images, in passes of as many images as batch_decodes decodes allow."""
    torch.manual_seed(seed)
    per_pass = images_per_pass(k, batch_decodes)
    values = []
    for start in range(0, len(x), per_pass):
        y_pass = None if y is None else y[start : start + per_pass]
        values.append(importance_weighted_nll(model, x[start : start + per_pass], k, batch_decodes, y_pass))
    return torch.cat(values)


_worker_model: Evaluable | None = None


def _start_worker(run: Path, device_name: str, threads: int) -> None:
    global _worker_model
    torch.set_num_threads(threads)
    _worker_model = _load(run, device_name, threads)[0]


def _worker_task(
    x: torch.Tensor, y: torch.Tensor | None, k: int, batch_decodes: int, seed: int
) -> torch.Tensor:
    assert _worker_model is not None, "the pool's initializer loads the model"
    return _task_nll(_worker_model, x, y, k, batch_decodes, seed)


def _load(
    path: Path, device_name: str, threads: int
) -> tuple[Evaluable, ModelConfig, TrainConfig, dict[str, Any]]:
    manifest_path = path / "model.json"
    if manifest_path.exists():
        training = json.loads(manifest_path.read_text())["training"]
        model_config = model_config_from_dict(training["model"])
        provenance = {
            "checkpoint_epoch": training["epochs"],
            "train_seconds": training["train_seconds"],
            "engine": f"onnxruntime ({path})",
        } | _averaged(training.get("averaged_epochs", []))
        return (
            ExportedModel(path, model_config, threads),
            model_config,
            train_config_from_dict(training["train"]),
            provenance,
        )
    state = ckpt.load(path)
    device = pick_device(device_name)
    provenance = {
        "checkpoint_epoch": state.epoch,
        "train_seconds": state.train_seconds,
        "engine": f"torch ({device})",
    } | _averaged(list(state.averaged_epochs))
    return state.build_model().to(device), state.model_config, state.train_config, provenance


def _averaged(epochs: list[int]) -> dict[str, list[int]]:
    """The report names the snapshots of an averaged model (`vae average`); others say nothing."""
    return {"averaged_epochs": epochs} if epochs else {}
