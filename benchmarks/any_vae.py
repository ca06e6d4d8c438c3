"""Stable Diffusion's VAE served here: images/s of Encode and Decode in-process and through `vae serve`.

    python -m benchmarks.any_vae --device cpu                           # SD 1.x, 256 and 512 px
    python -m benchmarks.any_vae --sections memory --sizes 256 512 768  # peak RSS of one image
    python -m benchmarks.any_vae --config tiny --sizes 64 --images 2    # seconds: the smoke test's

The model is diffusers' AutoencoderKL built from a published config with random weights (speed and
memory do not depend on the weights), saved as save_pretrained writes it and imported once with
`vae import diffusers` into WORK/repo; later runs reuse that version while its config matches.
Building needs the diffusers extra; measuring an imported version needs only the serving one.

- inprocess: repository.runtime.Graph with the server's session settings (one intra-op thread),
  batch 1: one untimed run, then `--images` runs back to back; images/s = images / their seconds.
- service: `vae serve` on loopback and one VaeClient, the same arrays, batch 1 per call, from each
  of `--callers` concurrent callers in turn; an untimed call first (a new size's first batch is not
  warmed). `ratio` is the service's images/s over in-process's.
- memory: one image per graph and size in a fresh process: its peak RSS, and the peak over the
  process with the graph loaded, which is what one image of that size costs on top.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import conditions
from repository.manifest import Manifest, read_manifest
from repository.placement import select_placement
from repository.runtime import Graph, available_providers
from repository.tensor_names import DECODED_IMAGE, IMAGES, LATENTS, LOGVAR, MU
from service.config import ServiceConfig

_SD_BLOCKS = {"down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4}
CONFIGS: dict[str, dict[str, Any]] = {
    # Stable Diffusion 1.x's VAE as published (vae/config.json of stable-diffusion-v1-5, sd-vae-ft-mse).
    "sd1": {
        **_SD_BLOCKS,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 512,
        "scaling_factor": 0.18215,
    },
    # The same shape (factor 8, 4 latent channels) with tiny channels: the smoke test's.
    "tiny": {
        **_SD_BLOCKS,
        "block_out_channels": [8, 16, 16, 16],
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 4,
        "sample_size": 64,
        "scaling_factor": 0.18215,
    },
}
SECTIONS = ("inprocess", "service", "memory")
ROLES = ("encode", "decode")
# What each graph is asked for: the service never copies back more.
OUTPUTS = {"encode": (MU, LOGVAR), "decode": (DECODED_IMAGE,)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.any_vae", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (auto: what onnxruntime offers)")
    parser.add_argument("--config", choices=list(CONFIGS), default="sd1", help="the AutoencoderKL measured")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="square image sides")
    parser.add_argument("--images", type=int, default=3, help="timed images per cell")
    parser.add_argument("--callers", type=int, nargs="+", default=[1, 4], help="concurrent callers")
    parser.add_argument(
        "--max-batch-items", type=int, default=4, help="vae serve's --max-batch-items (docs/any-vae.md)"
    )
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=["inprocess", "service"])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vae-any-vae-bench")
    parser.add_argument("--out", type=Path, help="also write the figures to OUT/any-vae.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    document = measure(args, sys.argv[1:] if argv is None else argv)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "any-vae.json").write_text(json.dumps(document, indent=2) + "\n")
    return 0


def measure(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Every section asked for, printed as it ends; the figures as one JSON-ready document."""
    version = prepare(args.config, args.work)
    manifest = read_manifest(version)
    document: dict[str, Any] = {
        "started": conditions.now(),
        "command": shlex.join(["python", "-m", "benchmarks.any_vae", *argv]),
        "machine": conditions.machine(),
        "config": args.config,
        "version": str(version),
        "max_batch_items": args.max_batch_items,
    }
    if "inprocess" in args.sections or "service" in args.sections:
        document["inprocess"] = inprocess(version, manifest, args.device, args.sizes, args.images)
        _print("in-process, batch 1", document["inprocess"])
    if "service" in args.sections:
        document["service"] = service(version, manifest, args, document["inprocess"])
        _print(
            f"through vae serve (ready after {document['service']['started_s']:.1f} s)",
            document["service"]["cells"],
        )
    if "memory" in args.sections:
        document["memory"] = [
            peak_rss(version, role, size, args.device) for role in ROLES for size in args.sizes
        ]
        for cell in document["memory"]:
            print(f"  {cell['role']} {cell['size']}x{cell['size']}: peak RSS {cell['peak_mib']:,.0f} MiB, "
                  f"{cell['image_mib']:,.0f} MiB over the loaded graph", flush=True)  # fmt: skip
    return document


def prepare(config: str, work: Path) -> Path:
    """WORK/repo/NAME/1 holding CONFIGS[config]: reused when there, else built, saved and imported."""
    name = f"{config}-vae"
    version = work / "repo" / name / "1"
    if (version / "model.json").is_file():
        source = read_manifest(version).source or {}
        if all(source.get("config", {}).get(key) == value for key, value in CONFIGS[config].items()):
            return version
        raise ValueError(f"{version} holds another config; delete {work} or pass another --work")
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    folder = work / "folder"
    vae: Any = AutoencoderKL(**CONFIGS[config])  # type: ignore[no-untyped-call]
    vae.save_pretrained(folder)
    command = [
        sys.executable,
        "-m",
        "vae_cli",
        "import",
        "diffusers",
        str(folder),
        "--repo",
        str(work / "repo"),
    ]
    started = time.monotonic()
    subprocess.run([*command, "--name", name, "--version", "1"], check=True)
    print(f"imported {config} as {version} in {time.monotonic() - started:.0f} s", flush=True)
    return version


def inputs(manifest: Manifest, role: str, size: int, seed: int = 0) -> np.ndarray:
    """One image uniform in the model's range, or one latent from N(0, I) of that image's size."""
    rng = np.random.default_rng(seed)
    if role == "encode":
        low, high = manifest.value_range
        return rng.uniform(low, high, (1, manifest.image.channels, size, size)).astype(np.float32)
    return rng.standard_normal((1, *manifest.latent_shape((size, size))), dtype=np.float32)


def open_graph(version: Path, manifest: Manifest, role: str, device: str) -> Graph:
    """The graph with the session settings `vae serve` uses by default."""
    config = ServiceConfig()
    return Graph(
        version / manifest.graphs["encoder" if role == "encode" else "decoder"].file,
        intra_op_threads=config.intra_op_threads,
        inter_op_threads=config.inter_op_threads,
        spinning=config.spinning,
        placement=select_placement(device, available_providers()),
    )


def inprocess(
    version: Path, manifest: Manifest, device: str, sizes: list[int], images: int
) -> list[dict[str, Any]]:
    cells = []
    for role in ROLES:
        graph = open_graph(version, manifest, role, device)
        for size in sizes:
            feeds = {IMAGES if role == "encode" else LATENTS: inputs(manifest, role, size)}
            seconds = _timed(partial(graph.run, feeds, OUTPUTS[role]), images, callers=1)
            cells.append(_cell(role, size, images, seconds))
    return cells


def service(
    version: Path, manifest: Manifest, args: argparse.Namespace, baseline: list[dict[str, Any]]
) -> dict[str, Any]:
    """Every role and size from each number of callers, through one `vae serve` and one VaeClient.

    `started_s`: from starting the process to serving, the warm-up at --max-batch-items included.
    """
    # Imported here: the in-process and memory sections run where grpc's client side is not wanted.
    from benchmarks import systems
    from client.clients import VaeClient

    name = version.parent.name
    flags = ["--device", args.device, "--max-batch-items", str(args.max_batch_items)]
    with tempfile.TemporaryDirectory(prefix="vae-any-vae-") as logs:
        server = systems.start_service("serve", version.parent.parent, name, Path(logs) / "serve.log", flags)
        print(f"vae serve {' '.join(flags)}: serving after {server.started_s:.1f} s", flush=True)
        cells = []
        try:
            with VaeClient(server.target, timeout=None) as client:
                calls: dict[str, Callable[[np.ndarray], object]] = {
                    "encode": lambda x: client.encode(x, model=name).mu,
                    "decode": lambda z: client.decode(z, model=name).images,
                }
                for role in ROLES:
                    for size in args.sizes:
                        data = inputs(manifest, role, size)
                        for callers in args.callers:
                            seconds = _timed(partial(calls[role], data), args.images, callers)
                            cell = _cell(role, size, args.images, seconds, callers=callers)
                            (alone,) = (c for c in baseline if (c["role"], c["size"]) == (role, size))
                            cell["ratio"] = cell["images_per_s"] / alone["images_per_s"]
                            cells.append(cell)
        finally:
            server.stop()
    return {"started_s": server.started_s, "cells": cells}


def _timed(run: Callable[[], object], images: int, callers: int) -> float:
    """Seconds for `images` runs from `callers` threads at once, after one untimed run."""
    run()
    with ThreadPoolExecutor(callers) as pool:
        started = time.perf_counter()
        list(pool.map(lambda _: run(), range(images)))
        return time.perf_counter() - started


def _cell(role: str, size: int, images: int, seconds: float, callers: int = 1) -> dict[str, Any]:
    return {
        "role": role,
        "size": size,
        "callers": callers,
        "images": images,
        "images_per_s": images / seconds,
    }


def _print(title: str, cells: list[dict[str, Any]]) -> None:
    print(title, flush=True)
    for cell in cells:
        ratio = f", {cell['ratio']:.2f}x in-process" if "ratio" in cell else ""
        print(f"  {cell['role']} {cell['size']}x{cell['size']}, {cell['callers']} caller(s): "
              f"{cell['images_per_s']:.3f} images/s{ratio}", flush=True)  # fmt: skip


def peak_rss(version: Path, role: str, size: int, device: str = "cpu") -> dict[str, Any]:
    """One image through one graph in a fresh process: peak RSS, and that peak over the loaded graph's."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        loaded, peak = pool.submit(_one_image, version, role, size, device).result()
    return {"role": role, "size": size, "peak_mib": peak, "image_mib": peak - loaded}


def _one_image(version: Path, role: str, size: int, device: str) -> tuple[float, float]:
    """(MiB of peak RSS with the graph loaded and run on a tiny input, MiB of peak RSS after one image)."""
    manifest = read_manifest(version)
    graph = open_graph(version, manifest, role, device)
    key = IMAGES if role == "encode" else LATENTS
    # The smallest size first, so that the baseline holds onnxruntime's fixed costs of a run too.
    graph.run({key: inputs(manifest, role, manifest.divisibility)}, OUTPUTS[role])
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    graph.run({key: inputs(manifest, role, size)}, OUTPUTS[role])
    return loaded, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    raise SystemExit(main())
