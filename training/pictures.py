"""PNG pictures of a trained run: prior samples, reconstructions, interpolation, 2-D latent maps."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from training import checkpoint as ckpt
from training.data import load_dataset
from training.model import VAE

# Ten well-separated label colours (Tableau 10), for the 2-D latent scatter.
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip


def tile(images: np.ndarray, columns: int, pad: int = 1) -> Image.Image:
    """(N, C, H, W) floats in [0, 1] -> one grid image, white gaps between tiles."""
    n, channels, height, width = images.shape
    rows = -(-n // columns)
    grid = np.ones((channels, rows * (height + pad) + pad, columns * (width + pad) + pad), np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        top, left = pad + r * (height + pad), pad + c * (width + pad)
        grid[:, top : top + height, left : left + width] = image
    pixels = (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)
    if channels == 1:
        return Image.fromarray(pixels[0], mode="L")
    return Image.fromarray(pixels.transpose(1, 2, 0), mode="RGB")


def pyplot() -> Any:
    """matplotlib's pyplot drawing to files only (no display on a server); imported when first drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _scaled(image: Image.Image, factor: int = 3) -> Image.Image:
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


@torch.no_grad()
def _decode(model: VAE, z: torch.Tensor, y: torch.Tensor | None = None) -> np.ndarray:
    return model.decode_mean(z, y).numpy()


def class_grid(model: VAE, z: torch.Tensor) -> np.ndarray:
    """Every latent of z decoded under every class: one row per class, one latent per column.

    A column shares its z, so what stays the same down a column is the style the latent holds.
    """
    classes = len(model.config.classes)
    rows = torch.arange(classes).repeat_interleave(len(z))
    return _decode(model, z.repeat(classes, 1), rows)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation (Shoemake 1985), which stays on the prior's typical shell."""
    cos = torch.clamp((a * b).sum() / (a.norm() * b.norm()), -1.0, 1.0)
    omega = torch.arccos(cos)
    if float(omega) < 1e-6:
        return a + t[:, None] * (b - a)
    return (torch.sin((1 - t) * omega)[:, None] * a + torch.sin(t * omega)[:, None] * b) / torch.sin(omega)


def latent_scatter(mu: np.ndarray, labels: np.ndarray, size: int = 600) -> Image.Image:
    """Encoded test set in a 2-D latent space, one colour per label."""
    canvas = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(canvas)
    low, high = np.percentile(mu, 0.5, axis=0), np.percentile(mu, 99.5, axis=0)
    scaled = (mu - low) / np.maximum(high - low, 1e-6)
    for (x, y), label in zip(scaled, labels, strict=True):
        if 0 <= x <= 1 and 0 <= y <= 1:
            px, py = 10 + x * (size - 20), 10 + (1 - y) * (size - 20)
            draw.ellipse((px - 1.5, py - 1.5, px + 1.5, py + 1.5), fill=PALETTE[int(label) % 10])
    return canvas


def write_pictures(
    run: Path, out: Path | None = None, *, data_dir: Path | None = None, seed: int = 0
) -> list[Path]:
    """Write samples.png, reconstructions.png, interpolation.png (+ 2-D maps) into out.

    A conditional model's samples.png is class_grid's: a row per class, a shared latent per column.
    Its reconstructions take each image's own label; its interpolation joins two images of one class.
    """
    state = ckpt.load(run)
    model = state.build_model()
    out = out or (run if run.is_dir() else run.parent) / "pictures"
    out.mkdir(parents=True, exist_ok=True)
    test = load_dataset(state.train_config.dataset, data_dir)
    x = torch.from_numpy(test.test_x[:2000]).float() / 255.0
    labels = torch.from_numpy(test.test_y[:2000]) if state.model_config.conditional else None
    generator = torch.Generator().manual_seed(seed)
    latent = state.model_config.latent_dim
    written = []

    written.append(out / "samples.png")
    if labels is None:
        with torch.no_grad():  # a VampPrior's components run the encoder
            z = model.sample_prior(64, generator)
        _scaled(tile(_decode(model, z), 8)).save(written[-1])
    else:
        columns = 10
        with torch.no_grad():
            z = model.prior_point(torch.randn((columns, latent), generator=generator))
        _scaled(tile(class_grid(model, z), columns)).save(written[-1])

    first = None if labels is None else labels[:16]
    with torch.no_grad():
        centre = model.posterior_point(*model.encode(x[:16], first))
    pairs = np.stack([x[:16].numpy(), _decode(model, centre, first)], 1).reshape(32, *x.shape[1:])
    written.append(out / "reconstructions.png")
    _scaled(tile(pairs, 8)).save(written[-1])  # each original sits left of its reconstruction

    pair, path_labels = x[:2], None
    steps = torch.linspace(0, 1, 10)
    if labels is not None:
        same_class = torch.nonzero(labels == labels[0]).flatten()[:2]
        pair, path_labels = x[same_class], labels[same_class[0]].repeat(len(steps))
    with torch.no_grad():
        ends = model.posterior_point(*model.encode(pair, None if path_labels is None else path_labels[:2]))
    rows = [
        pair[:1].numpy(),
        _decode(model, ends[0] + steps[:, None] * (ends[1] - ends[0]), path_labels),
        pair[1:2].numpy(),
        pair[:1].numpy(),
        _decode(model, slerp(ends[0], ends[1], steps), path_labels),
        pair[1:2].numpy(),
    ]
    written.append(out / "interpolation.png")  # top: linear, bottom: spherical
    _scaled(tile(np.concatenate(rows), 12)).save(written[-1])

    if latent == 2:
        with torch.no_grad():
            centres = model.posterior_point(*model.encode(x, labels))
        written.append(out / "latent_space.png")
        latent_scatter(centres.numpy(), test.test_y[:2000]).save(written[-1])
    if latent == 2 and labels is None:  # a conditional model's map would need one per class
        # Decode a grid of prior quantiles, as in Kingma & Welling 2013, figure 4.
        quantiles = torch.special.ndtri(torch.linspace(0.05, 0.95, 20))
        grid = torch.stack(torch.meshgrid(quantiles, quantiles.flip(0), indexing="xy"), -1).reshape(-1, 2)
        written.append(out / "manifold.png")
        with torch.no_grad():
            _scaled(tile(_decode(model, model.prior_point(grid)), 20), 2).save(written[-1])
    return written


def prior_samples(version: Path, n: int, temperature: float, seed: int) -> np.ndarray:
    """n mean images [n, C, H, W] of an exported unconditional version, drawn as the service draws them.

    Its own prior, seeded as `vae client sample --seed SEED` seeds, its decoder graph in onnxruntime:
    a picture of them is what that request returns.
    """
    from repository.manifest import read_manifest
    from repository.prior import load_prior
    from repository.runtime import Graph
    from repository.tensor_names import LATENTS, PROBS

    manifest = read_manifest(version)
    if manifest.classes:
        raise ValueError(f"{version} is conditional: its samples are class grids (`vae sample` on its run)")
    z = load_prior(version, manifest).sample(np.random.Generator(np.random.PCG64(seed)), n, temperature)
    probs: np.ndarray = Graph(version / manifest.graphs["decoder"].file).run({LATENTS: z}, (PROBS,))[PROBS]
    return probs


def prior_samples_side_by_side(
    versions: list[Path], temperatures: list[float], out: Path, *, n: int = 64, seed: int = 0
) -> Path:
    """One PNG: prior_samples of each exported version (rows) at each temperature (columns)."""
    from repository.manifest import read_manifest

    plt = pyplot()

    fig, axes = plt.subplots(
        len(versions),
        len(temperatures),
        figsize=(3.2 * len(temperatures), 3.4 * len(versions)),
        squeeze=False,
    )
    for row, version in zip(axes, versions, strict=True):
        manifest = read_manifest(version)
        prior = manifest.prior.trained_as if manifest.prior is not None else "normal"
        if manifest.prior_flow is not None:
            prior += f" + {manifest.prior_flow.layers}-layer flow"
        for ax, temperature in zip(row, temperatures, strict=True):
            images = prior_samples(version, n, temperature, seed)
            ax.imshow(tile(images, math.ceil(math.sqrt(n))), cmap="gray", vmin=0, vmax=255)
            ax.set_title(
                f"{manifest.name} v{manifest.version}, {prior} prior, T = {temperature:g}", fontsize=9
            )
            ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
