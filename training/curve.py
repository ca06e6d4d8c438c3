"""NLL against training time: the IW-NLL of a run's epoch snapshots, beside its validation -ELBO.

A run trained with `snapshot_every = N` keeps epoch-NNN.pt every N epochs. Each is evaluated the way
`vae eval` evaluates (same test binarization and noise), on a test subset at a small k, so the curve
costs minutes; the final model's k = 5000 figure is `vae eval`'s job. The curve says whether more
epochs would still pay.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.checkpoint import SNAPSHOT_GLOB
from training.evaluate import evaluate_run
from training.pictures import pyplot
from training.train import METRICS

CURVE_JSON = "curve.json"
CURVE_PNG = "curve.png"


def nll_curve(
    run: Path,
    *,
    k: int,
    subset: int,
    data_dir: Path | None = None,
    device_name: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate every snapshot in RUN; write RUN/curve.json and RUN/curve.png; return the curve."""
    snapshots = sorted(run.glob(SNAPSHOT_GLOB))
    if not snapshots:
        raise FileNotFoundError(
            f"no {SNAPSHOT_GLOB} snapshots in {run}; train with `--set train.snapshot_every=N`"
        )
    points = []
    for snapshot in snapshots:
        report = evaluate_run(
            snapshot,
            k=k,
            subset=subset,
            data_dir=data_dir,
            device_name=device_name,
            progress=progress,
            out=run / f"{snapshot.stem}-eval.json",
        )
        points.append(
            {
                "epoch": report["checkpoint_epoch"],
                "train_seconds": report["train_seconds"],
                "iw_nll": report["iw_nll"],
                "iw_nll_stderr": report["iw_nll_stderr"],
                "negative_elbo": report["negative_elbo"],
            }
        )
    curve = {
        "run": str(run),
        "iw_k": k,
        "test_images": report["test_images"],
        "snapshots": points,
        "validation": _validation_curve(run / METRICS),
    }
    (run / CURVE_JSON).write_text(json.dumps(curve, indent=2) + "\n")
    draw_curve(curve, run / CURVE_PNG)
    return curve


def _validation_curve(metrics: Path) -> list[dict[str, float]]:
    if not metrics.is_file():
        return []
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [
        {"epoch": r["epoch"], "train_seconds": r["train_seconds"], "val_nelbo": r["val_nelbo"]} for r in rows
    ]


def draw_curve(curve: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    validation = curve["validation"]
    if validation:
        ax.plot(
            [v["train_seconds"] / 60 for v in validation],
            [v["val_nelbo"] for v in validation],
            "-",
            color="C7",
            label="validation -ELBO (every epoch)",
        )
    snapshots = curve["snapshots"]
    ax.errorbar(
        [s["train_seconds"] / 60 for s in snapshots],
        [s["iw_nll"] for s in snapshots],
        yerr=[s["iw_nll_stderr"] for s in snapshots],
        fmt="o-",
        color="C0",
        capsize=3,
        label=f"test IW-NLL, k={curve['iw_k']}, {curve['test_images']} images",
    )
    for s in snapshots:
        ax.annotate(
            f"{s['epoch']}",
            (s["train_seconds"] / 60, s["iw_nll"]),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=8,
        )
    lowest = min(s["iw_nll"] for s in snapshots)
    ax.set(
        xlabel="training time (minutes)",
        ylabel="nats per image",
        title=f"{curve['run']}: NLL against training time (labels: epochs)",
        ylim=(lowest - 3, lowest + 25),
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
