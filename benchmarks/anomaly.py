"""The out-of-distribution study of docs/anomaly.md: MNIST test digits against non-digit inputs made here.

    python -m benchmarks.anomaly --version-dir models/mnist/1 --out docs

Scores every image in process with the arithmetic Score serves (repository/scoring.py), reports the
AUROC of the log-likelihood, the ELBO and the reconstruction error for each kind of input, draws their
ROC curves (OUT/anomaly-roc.png, OUT/anomaly.json), then times Score through a real server against
the same arithmetic in process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from benchmarks.inprocess import load_graphs
from client.clients import VaeClient
from repository.manifest import read_manifest
from repository.prior import load_prior
from repository.scoring import Scorer, decode_all, draws, likelihood_of
from repository.tensor_names import IMAGES, LATENTS, LOGVAR, MU, PROBS
from service.config import ServiceConfig
from service.latents import reconstruction_error
from service.server import VaeServer, create_server
from training.data import EVAL_BINARIZATION_SEED, load_dataset, model_inputs

K, SEED, IMAGES_PER_KIND = 64, 0, 1000
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _rendered(rng: np.random.Generator, n: int, draw: Callable[[ImageDraw.ImageDraw], None]) -> np.ndarray:
    images = []
    for _ in range(n):
        canvas = Image.new("L", (28, 28), 0)
        draw(ImageDraw.Draw(canvas))
        images.append(np.asarray(canvas, np.float32)[None] / 255.0)
    return (np.stack(images) >= 0.5).astype(np.float32)


def _letters(rng: np.random.Generator, n: int) -> np.ndarray:
    def letter(pen: ImageDraw.ImageDraw) -> None:
        font = ImageFont.load_default(size=int(rng.integers(16, 25)))  # Pillow's bundled font: no download
        xy = (int(rng.integers(4, 10)), int(rng.integers(0, 5)))
        pen.text(
            xy, str(rng.choice(list(LETTERS))), fill=255, font=font, stroke_width=int(rng.integers(0, 2))
        )

    return _rendered(rng, n, letter)


def _shapes(rng: np.random.Generator, n: int) -> np.ndarray:
    def shape(pen: ImageDraw.ImageDraw) -> None:
        x0, y0 = rng.integers(2, 12, 2)
        x1, y1 = x0 + rng.integers(8, 15), y0 + rng.integers(8, 15)
        box = (int(x0), int(y0), int(x1), int(y1))
        width = int(rng.integers(1, 3))
        kind = rng.integers(0, 3)
        if kind == 0:
            pen.rectangle(box, outline=255, width=width)
        elif kind == 1:
            pen.ellipse(box, outline=255, width=width)
        else:
            pen.line(box, fill=255, width=width)

    return _rendered(rng, n, shape)


def inputs(digits: np.ndarray, others: np.ndarray, seed: int = SEED) -> dict[str, np.ndarray]:
    """The in-distribution digits and each kind of non-digit input, [n, 1, 28, 28] binary float32.

    Every kind is made from `others` (digits not among `digits`) or drawn here: nothing is downloaded.
    """
    rng = np.random.default_rng(seed)
    n = len(others)
    density = float(others.mean())  # noise with the digits' share of lit pixels
    flat = others.reshape(n, -1)
    return {
        "MNIST digits": digits,
        "uniform noise": (rng.random(others.shape) < density).astype(np.float32),
        "inverted digits": 1.0 - others,
        "pixel-shuffled digits": np.stack([row[rng.permutation(row.size)] for row in flat]).reshape(
            others.shape
        ),
        "digits rotated 180°": others[:, :, ::-1, ::-1].copy(),
        "letters (Pillow)": _letters(rng, n),
        "thin shapes (Pillow)": _shapes(rng, n),
    }


class InProcess:
    """A version's graphs in this process, scoring as the service does (one onnxruntime thread each)."""

    def __init__(self, version_dir: Path) -> None:
        self.manifest = read_manifest(version_dir)
        self.prior = load_prior(version_dir, self.manifest)
        graphs = load_graphs(version_dir)
        self.encoder, self.decoder = graphs["encoder"], graphs["decoder"]

    def score(self, images: np.ndarray, k: int, seed: int) -> dict[str, np.ndarray]:
        """Log-likelihood, ELBO and reconstruction error per image, as Score computes them."""
        eps = draws(np.random.Generator(np.random.PCG64(seed)), k, self.manifest.latent_dim)
        encoded = self.encoder.run({IMAGES: images}, (MU, LOGVAR))
        scorer = Scorer(likelihood_of(self.manifest), self.prior, images, encoded[MU], encoded[LOGVAR], eps)
        scores = decode_all(self.decoder, scorer)
        reconstruction = self.decoder.run({LATENTS: encoded[MU]}, (PROBS,))[PROBS]
        error = reconstruction_error(images, reconstruction)
        return {"log_likelihood": scores.log_likelihood, "elbo": scores.elbo, "reconstruction_error": error}


def auroc(inlier: np.ndarray, outlier: np.ndarray) -> float:
    """P(an outlier scores higher than an inlier), ties counted half: the area under the ROC curve."""
    higher = (outlier[:, None] > inlier[None, :]).mean()
    tied = (outlier[:, None] == inlier[None, :]).mean()
    return float(higher + tied / 2)


# Larger means more anomalous: minus the likelihoods, the error as it is.
ANOMALY = {"log_likelihood": -1.0, "elbo": -1.0, "reconstruction_error": 1.0}


def roc_points(inlier: np.ndarray, outlier: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    thresholds = np.unique(np.concatenate([inlier, outlier]))[::-1]
    fpr = np.array([0.0, *((inlier >= t).mean() for t in thresholds)])
    tpr = np.array([0.0, *((outlier >= t).mean() for t in thresholds)])
    return fpr, tpr


def plot(results: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 5), sharey=True)
    digits = results["MNIST digits"]
    for axis, (statistic, sign) in zip(axes, ANOMALY.items(), strict=True):
        for kind, values in results.items():
            if kind == "MNIST digits":
                continue
            fpr, tpr = roc_points(sign * digits[statistic], sign * values[statistic])
            area = auroc(sign * digits[statistic], sign * values[statistic])
            axis.plot(fpr, tpr, label=f"{kind} ({area:.3f})")
        axis.plot([0, 1], [0, 1], color="grey", linestyle=":")
        axis.set_title(statistic.replace("_", " "))
        axis.set_xlabel("false positive rate (digits flagged)")
        axis.legend(loc="lower right", fontsize=8)
    axes[0].set_ylabel("true positive rate (non-digits flagged)")
    figure.suptitle(
        f"MNIST digits vs non-digit inputs, models/mnist/1, Score with k = {K} (AUROC in brackets)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=90)


def _serve(version_dir: Path) -> tuple[VaeServer, asyncio.AbstractEventLoop]:
    """The service in this process, on its own event-loop thread, on a free loopback port."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    config = ServiceConfig(
        repo=version_dir.parent.parent,
        model=version_dir.parent.name,
        host="127.0.0.1",
        port=0,
        metrics_port=0,
    )

    async def start() -> VaeServer:
        server, _ = create_server(config)
        await server.start()
        await server.load_models()
        return server

    return asyncio.run_coroutine_threadsafe(start(), loop).result(300), loop


def _rate(run: Callable[[], object], seconds: float) -> float:
    """Calls per second of `run`, back to back for `seconds` after one warm-up call."""
    run()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run()
        done += 1
    return done / (time.perf_counter() - started)


def throughput(
    version_dir: Path, local: InProcess, digits: np.ndarray, seconds: float
) -> list[dict[str, object]]:
    """Decoder items per second of Score (k items per image) over gRPC and in process, one after another."""
    server, loop = _serve(version_dir)
    rows: list[dict[str, object]] = []
    try:
        with VaeClient(f"127.0.0.1:{server.port}", timeout=600) as client:
            for k, batch in ((1, 256), (64, 64)):
                images = digits[:batch]
                remote = _rate(partial(client.score, images, samples=k, seed=SEED), seconds)
                inside = _rate(partial(local.score, images, k, SEED), seconds)
                for where, rate in (("Score over gRPC", remote), ("in-process onnxruntime", inside)):
                    rows.append(
                        {
                            "k": k,
                            "where": where,
                            "items_per_s": rate * batch * k,
                            "images_per_s": rate * batch,
                        }
                    )
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(1.0), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version-dir", type=Path, default=Path("models/mnist/1"))
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--seconds", type=float, default=10.0, help="per throughput measurement")
    args = parser.parse_args()
    test = model_inputs(load_dataset("mnist").test_x[: 2 * IMAGES_PER_KIND], True, EVAL_BINARIZATION_SEED)
    started = time.perf_counter()
    kinds = inputs(test[:IMAGES_PER_KIND], test[IMAGES_PER_KIND:])
    local = InProcess(args.version_dir)
    results = {kind: local.score(images, K, SEED) for kind, images in kinds.items()}
    digits = results["MNIST digits"]
    median = float(np.median(digits["log_likelihood"]))
    report: dict[str, object] = {"k": K, "seed": SEED, "images_per_kind": IMAGES_PER_KIND, "kinds": {}}
    for kind, values in results.items():
        entry = {
            "mean_log_likelihood": float(values["log_likelihood"].mean()),
            "mean_elbo": float(values["elbo"].mean()),
            "mean_reconstruction_error": float(values["reconstruction_error"].mean()),
            "share_above_digit_median": float((values["log_likelihood"] > median).mean()),
            "lit_pixels": float(kinds[kind].mean()),
        }
        if kind != "MNIST digits":
            entry |= {f"auroc_{s}": auroc(sign * digits[s], sign * values[s]) for s, sign in ANOMALY.items()}
        report["kinds"][kind] = entry  # type: ignore[index]
    report["study_seconds"] = time.perf_counter() - started
    plot(results, args.out / "anomaly-roc.png")
    report["throughput"] = throughput(args.version_dir, local, test, args.seconds)
    (args.out / "anomaly.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
