"""The arguments of `vae client`; client/commands.py runs each command.

Its commands: sample|sample-stream|encode|decode|reconstruct|interpolate|score|list-models|info, and
the bulk jobs encode-folder|decode-store (client/bulk.py)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from client import commands as handlers
from wire.caller_flags import add_tls_flags, add_token_flag


def _label_list(text: str) -> list[int]:
    """--label: one class index for every item, or a comma list with one per item."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a class index or a comma list of them (7 or 1,4,7), got {text!r}"
        ) from None


def register(commands: Any) -> None:
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--target", default="localhost:50051", help="HOST:PORT")
    connection.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    add_token_flag(connection)
    add_tls_flags(connection)
    which = argparse.ArgumentParser(add_help=False, parents=[connection])
    which.add_argument("--model", default="", help="model name (default: the server's default)")
    which.add_argument("--version", type=int, default=0, help="model version (default: the newest)")
    # A conditional model's class per item; `vae client info` lists the classes.
    labelled = argparse.ArgumentParser(add_help=False)
    labelled.add_argument(
        "--label",
        type=_label_list,
        default=None,
        metavar="N[,N...]",
        help="conditional models: class index for every item, or a comma list, one per item",
    )
    common = argparse.ArgumentParser(add_help=False, parents=[which])
    common.add_argument("--out", type=Path, default=Path("out"), help="output directory")
    common.add_argument("--npy", action="store_true", help="write images as one .npy instead of PNGs")
    prior = argparse.ArgumentParser(add_help=False)
    prior.add_argument("--n", type=int, default=16, help="images")
    prior.add_argument("--seed", type=int, default=None, help="same seed, same images (default: random)")
    prior.add_argument("--temperature", type=float, default=None, help="scales the prior's std (default 1)")
    prior.add_argument("--height", type=int, default=0, help="image height, for a model of any size")
    prior.add_argument("--width", type=int, default=0, help="image width, for a model of any size")
    # A diffusion pipeline's latents: (z - shift_factor) * scaling_factor (`vae client info` shows both).
    scaled = argparse.ArgumentParser(add_help=False)
    scaled.add_argument(
        "--scaled", action="store_true", help="latents as a diffusion pipeline uses them (scaled and shifted)"
    )

    client = commands.add_parser(
        "client",
        help="call a running server",
        epilog="example:\n  vae client sample --target localhost:50051 --n 16 --seed 7 --out samples/",
    ).add_subparsers(dest="rpc", required=True, metavar="RPC")
    sample = client.add_parser(
        "sample",
        parents=[common, prior, labelled],
        help="images from the prior",
        epilog="examples:\n  vae client sample --n 16 --seed 7 --out samples/\n"
        "  vae client sample --model mnist-cvae --label 7 --n 16\n"
        "  vae client sample --model sd-vae --height 512 --width 768 --n 4",
    )
    sample.set_defaults(handler=handlers.sample)

    stream = client.add_parser(
        "sample-stream",
        parents=[which, prior, labelled],
        help="images from the prior, streamed: PNGs written as they arrive",
        epilog="example:\n  vae client sample-stream --n 10000 --seed 7 --out stream/",
    )
    stream.add_argument("--out", type=Path, default=Path("out"), help="output directory")
    stream.set_defaults(handler=handlers.sample_stream)

    encode = client.add_parser(
        "encode",
        parents=[common, labelled, scaled],
        help="images -> mu.npy, logvar.npy (z.npy); or --out FILE.npy: the mean latents alone",
        epilog="examples:\n  vae client encode samples/sample_0000.png samples/sample_0001.png --out codes/\n"
        "  vae client encode photo.png --model sd-vae --scaled --out latents.npy\n"
        "images of several sizes go in one request per size; into a folder, as mu_HxW.npy ...",
    )
    encode.add_argument("images", type=Path, nargs="+", help="image files (PNG, JPEG, ...) or .npy arrays")
    encode.add_argument("--samples", type=int, default=0, help="posterior samples per image")
    encode.add_argument("--seed", type=int, default=None, help="seed of the posterior samples")
    encode.set_defaults(handler=handlers.encode)

    decode = client.add_parser(
        "decode",
        parents=[common, labelled, scaled],
        help="latents (.npy, [n, ...]) -> images, a PNG each",
        epilog="examples:\n  vae client decode codes/mu.npy --out decoded/\n"
        "  vae client decode latents.npy --model sd-vae --scaled --out decoded/",
    )
    decode.add_argument("latents", type=Path, help=".npy of latents: [n, D], [n, C, h, w], or one [D]")
    decode.set_defaults(handler=handlers.decode)

    reconstruct = client.add_parser(
        "reconstruct",
        parents=[common, labelled],
        help="images -> reconstructions, error.npy",
        epilog="example:\n  vae client reconstruct samples/sample_0000.png --out reconstructed/",
    )
    reconstruct.add_argument("images", type=Path, nargs="+", help="PNG files or .npy arrays")
    reconstruct.set_defaults(handler=handlers.reconstruct)

    interpolate = client.add_parser(
        "interpolate",
        parents=[common],
        help="images between two endpoints",
        epilog="example:\n  vae client interpolate a.png b.png --steps 8 --method spherical --out path/",
    )
    interpolate.add_argument("start", type=Path, help="PNG image, or .npy image [C, H, W] or latent [D]")
    interpolate.add_argument("end", type=Path, help="as start")
    interpolate.add_argument("--steps", type=int, default=8, help="points on the path, at least 2")
    interpolate.add_argument(
        "--method", choices=["linear", "spherical"], default="linear", help="straight line or slerp"
    )
    interpolate.add_argument(
        "--label", type=int, default=None, metavar="N", help="conditional models: the class of the whole path"
    )
    interpolate.set_defaults(handler=handlers.interpolate)

    score = client.add_parser(
        "score",
        parents=[which, labelled],
        help="images -> log-likelihood, ELBO and reconstruction error per image (nats)",
        epilog="example:\n  vae client score digits/*.png --k 256 --seed 0 --json",
    )
    score.add_argument("images", type=Path, nargs="+", help="PNG files or .npy arrays")
    score.add_argument("--k", type=int, default=64, help="importance samples per image (1: the ELBO)")
    score.add_argument("--seed", type=int, default=None, help="seed of the samples (default: random)")
    score.add_argument("--json", action="store_true", help="print JSON instead of a table")
    score.set_defaults(handler=handlers.score)

    list_models = client.add_parser(
        "list-models",
        parents=[connection],
        help="every loaded model version, one a line",
        epilog="example:\n  vae client list-models --target localhost:50051",
    )
    list_models.set_defaults(handler=handlers.list_models)

    info = client.add_parser(
        "info",
        parents=[which],
        help="one model version's images, latent, scaling, prior, classes, provider and limits",
        epilog="example:\n  vae client info --model mnist --version 1",
    )
    info.add_argument("--json", action="store_true", help="print every ModelInfo field as JSON")
    info.set_defaults(handler=handlers.info)

    bulk = argparse.ArgumentParser(add_help=False, parents=[which])
    bulk.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    bulk.add_argument("--batch", type=int, default=16, help="images a request")
    folder = client.add_parser(
        "encode-folder",
        parents=[bulk, scaled],
        help="a folder or list of images -> a latent store: .npy shards and index.jsonl; resumable",
        epilog="example:\n  vae client encode-folder photos/ --model sd-vae --out store/ --concurrency 4\n"
        "run it again after an interruption: finished shards are kept, their images skipped.\n"
        "--scaled stores a diffusion pipeline's latents; store.json records it, and decode-store unscales\n"
        "exit 1 when any image failed (listed on stderr); running it again retries them",
    )
    folder.add_argument(
        "source", type=Path, help="folder (png, jpg, jpeg, webp, recursively) or a file listing images"
    )
    folder.add_argument("--out", type=Path, required=True, help="the store's folder, made or added to")
    folder.add_argument("--shard-size", type=int, default=1024, help="images a shard, at most")
    folder.set_defaults(handler=handlers.encode_folder)

    store = client.add_parser(
        "decode-store",
        parents=[bulk],
        help="a latent store -> a PNG per image, named after its source; resumable",
        epilog="example:\n  vae client decode-store store/ --out decoded/\n"
        "--model: the model that encoded the store unless given; PNGs already there are skipped;\n"
        "latents stored --scaled are decoded as such (store.json records it)",
    )
    store.add_argument("store", type=Path, help="a folder written by encode-folder")
    store.add_argument("--out", type=Path, required=True, help="output folder")
    store.set_defaults(handler=handlers.decode_store)
