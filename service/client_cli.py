"""`vae client sample|sample-stream|encode|decode|reconstruct|interpolate|score|list-models|info`.

Each command prints the files it wrote (or what it was asked for) on stdout, and which model version
answered on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.cli import add_tls_flags, add_token_flag, client_tls, client_token, quiet_grpc, rpc_error_line

if TYPE_CHECKING:
    import numpy as np

    from service.client import VaeClient
    from service.requests import ImageDType


@contextmanager
def _client(args: argparse.Namespace) -> Iterator[VaeClient]:
    """A client for --target; a failed call becomes a one-line error naming its status."""
    quiet_grpc()
    import grpc

    from repository.errors import CommandError
    from service.client import VaeClient

    tls = client_tls(args)
    credentials = None if tls is None else tls.credentials()
    try:
        with VaeClient(
            args.target, timeout=args.timeout, credentials=credentials, token=client_token(args)
        ) as client:
            yield client
    except grpc.RpcError as exc:
        raise CommandError(rpc_error_line(exc, tls=tls is not None)) from exc


def _answered(model: tuple[str, int]) -> None:
    # stderr: stdout stays the list of files written, for scripts.
    print(f"{model[0]}/{model[1]} answered", file=sys.stderr)


def _write(
    args: argparse.Namespace, prefix: str, images: np.ndarray | None, **arrays: np.ndarray | None
) -> int:
    """Images as OUT/PREFIX_*.png (or OUT/PREFIX.npy) and each array as OUT/NAME.npy; prints the paths."""
    from service.images import save_array, write_images

    paths = [] if images is None else write_images(images, args.out, prefix, args.npy)
    paths += [save_array(args.out, name, array) for name, array in arrays.items() if array is not None]
    for path in paths:
        print(path)
    return 0


def _image_dtype(args: argparse.Namespace) -> ImageDType:
    # PNGs hold 8-bit pixels anyway: ask the server for uint8 and move a quarter of the bytes.
    return "float32" if args.npy else "uint8"


def _pick(args: argparse.Namespace) -> dict[str, Any]:
    return {"model": args.model, "version": args.version}


def _label_list(text: str) -> list[int]:
    """--label: one class index for every item, or a comma list with one per item."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a class index or a comma list of them (7 or 1,4,7), got {text!r}"
        ) from None


def _sample(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.sample(
            args.n,
            seed=args.seed,
            temperature=args.temperature,
            output_dtype=_image_dtype(args),
            labels=args.label,
            **_pick(args),
        )
    _answered(result.model)
    return _write(args, "sample", result.images, latents=result.latents)


def _sample_stream(args: argparse.Namespace) -> int:
    import numpy as np

    from service.images import write_images

    latents: list[np.ndarray] = []
    written = 0
    with _client(args) as client:
        chunks = client.sample_stream(
            args.n,
            seed=args.seed,
            temperature=args.temperature,
            output_dtype="uint8",
            labels=args.label,
            **_pick(args),
        )
        for chunk in chunks:
            if not written:
                _answered(chunk.model)
            for path in write_images(chunk.images, args.out, "sample", False, first=written):
                print(path, flush=True)  # as it arrives: a long stream shows its progress
            written += len(chunk.images)
            latents.append(chunk.latents)
    return _write(args, "", None, latents=np.concatenate(latents))


def _encode(args: argparse.Namespace) -> int:
    from service.images import read_images

    with _client(args) as client:
        images = read_images(args.images, client.model_info(**_pick(args)).image_shape[0])
        result = client.encode(images, samples=args.samples, seed=args.seed, labels=args.label, **_pick(args))
    _answered(result.model)
    return _write(args, "", None, mu=result.mu, logvar=result.logvar, z=result.z)


def _decode(args: argparse.Namespace) -> int:
    from service.images import read_latents

    latents = read_latents(args.latents)
    with _client(args) as client:
        result = client.decode(latents, output_dtype=_image_dtype(args), labels=args.label, **_pick(args))
    _answered(result.model)
    return _write(args, "decoded", result.images)


def _reconstruct(args: argparse.Namespace) -> int:
    from service.images import read_images

    with _client(args) as client:
        images = read_images(args.images, client.model_info(**_pick(args)).image_shape[0])
        result = client.reconstruct(images, output_dtype=_image_dtype(args), labels=args.label, **_pick(args))
    _answered(result.model)
    return _write(args, "reconstruction", result.images, error=result.error)


def _interpolate(args: argparse.Namespace) -> int:
    from service.images import read_endpoint

    with _client(args) as client:
        channels = client.model_info(**_pick(args)).image_shape[0]
        ends = [read_endpoint(path, channels) for path in (args.start, args.end)]
        result = client.interpolate(
            ends[0],
            ends[1],
            steps=args.steps,
            method=args.method,
            output_dtype=_image_dtype(args),
            label=args.label,
            **_pick(args),
        )
    _answered(result.model)
    return _write(args, "step", result.images, latents=result.latents)


def _score(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from service.images import read_images

    with _client(args) as client:
        channels = client.model_info(**_pick(args)).image_shape[0]
        per_file = [read_images([path], channels) for path in args.images]
        # A .npy may hold several images: name each by its file and index.
        names = [
            str(path) if len(images) == 1 else f"{path}[{i}]"
            for path, images in zip(args.images, per_file, strict=True)
            for i in range(len(images))
        ]
        result = client.score(
            np.concatenate(per_file), samples=args.k, seed=args.seed, labels=args.label, **_pick(args)
        )
    _answered(result.model)
    rows = [
        {"file": name, "log_likelihood": float(ll), "elbo": float(elbo), "kl": float(kl), "error": float(err)}
        for name, ll, elbo, kl, err in zip(
            names, result.log_likelihood, result.elbo, result.kl, result.reconstruction_error, strict=True
        )
    ]
    if args.json:
        print(
            json.dumps(
                {"model": list(result.model), "k": args.k, "seed": args.seed, "images": rows}, indent=2
            )
        )
        return 0
    width = max(len("file"), *map(len, names))
    print(f"{'file':<{width}}  {'log-likelihood':>14}  {'ELBO':>10}  {'error':>8}")
    for row in rows:
        numbers = f"{row['log_likelihood']:>14.2f}  {row['elbo']:>10.2f}  {row['error']:>8.4f}"
        print(f"{row['file']:<{width}}  {numbers}")
    return 0


def _list_models(args: argparse.Namespace) -> int:
    with _client(args) as client:
        models = client.list_models()
    for info in models:
        shape = "x".join(map(str, info.image_shape))
        default = "  (default)" if info.is_default else ""
        classes = f", {len(info.classes)} classes" if info.classes else ""
        print(
            f"{info.name}/{info.version}{default}  latent_dim {info.latent_dim}, images {shape}, "
            f"{info.likelihood}, {info.provider}{classes}"
        )
    return 0


def _info(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    with _client(args) as client:
        info = client.model_info(**_pick(args))
    _answered((info.name, info.version))
    print(json.dumps(dataclasses.asdict(info), indent=2))
    return 0


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
        "  vae client sample --model mnist-cvae --label 7 --n 16",
    )
    sample.set_defaults(handler=_sample)

    stream = client.add_parser(
        "sample-stream",
        parents=[which, prior, labelled],
        help="images from the prior, streamed: PNGs written as they arrive",
        epilog="example:\n  vae client sample-stream --n 10000 --seed 7 --out stream/",
    )
    stream.add_argument("--out", type=Path, default=Path("out"), help="output directory")
    stream.set_defaults(handler=_sample_stream)

    encode = client.add_parser(
        "encode",
        parents=[common, labelled],
        help="images -> mu.npy, logvar.npy (z.npy)",
        epilog="example:\n  vae client encode samples/sample_0000.png samples/sample_0001.png --out codes/",
    )
    encode.add_argument("images", type=Path, nargs="+", help="PNG files or .npy arrays")
    encode.add_argument("--samples", type=int, default=0, help="posterior samples per image")
    encode.add_argument("--seed", type=int, default=None, help="seed of the posterior samples")
    encode.set_defaults(handler=_encode)

    decode = client.add_parser(
        "decode",
        parents=[common, labelled],
        help="latents (.npy, [n, D]) -> images",
        epilog="example:\n  vae client decode codes/mu.npy --out decoded/",
    )
    decode.add_argument("latents", type=Path, help=".npy of latents, [n, D] or [D]")
    decode.set_defaults(handler=_decode)

    reconstruct = client.add_parser(
        "reconstruct",
        parents=[common, labelled],
        help="images -> reconstructions, error.npy",
        epilog="example:\n  vae client reconstruct samples/sample_0000.png --out reconstructed/",
    )
    reconstruct.add_argument("images", type=Path, nargs="+", help="PNG files or .npy arrays")
    reconstruct.set_defaults(handler=_reconstruct)

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
    interpolate.set_defaults(handler=_interpolate)

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
    score.set_defaults(handler=_score)

    list_models = client.add_parser(
        "list-models",
        parents=[connection],
        help="every loaded model version, one a line",
        epilog="example:\n  vae client list-models --target localhost:50051",
    )
    list_models.set_defaults(handler=_list_models)

    info = client.add_parser(
        "info",
        parents=[which],
        help="one model version's shapes, classes, provider and limits, as JSON",
        epilog="example:\n  vae client info --model mnist --version 1",
    )
    info.set_defaults(handler=_info)
