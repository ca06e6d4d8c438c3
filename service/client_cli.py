"""`vae client sample|encode|decode|reconstruct|interpolate`: call a running server from the shell."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.cli import add_tls_flags, tls_credentials
from service.config import read_token

if TYPE_CHECKING:
    import numpy as np

    from service.client import VaeClient
    from service.requests import ImageDType


@contextmanager
def _client(args: argparse.Namespace) -> Iterator[VaeClient]:
    """A client for --target; a failed call becomes a one-line error naming its status."""
    import grpc

    from repository.errors import CommandError
    from service.client import VaeClient

    token = read_token(args.token_file) if args.token_file else None
    try:
        with VaeClient(
            args.target, timeout=args.timeout, credentials=tls_credentials(args), token=token
        ) as client:
            yield client
    except grpc.RpcError as exc:
        raise CommandError(f"{exc.code().name}: {exc.details()}") from exc


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


def _sample(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.sample(
            args.n,
            seed=args.seed,
            temperature=args.temperature,
            output_dtype=_image_dtype(args),
            **_pick(args),
        )
    return _write(args, "sample", result.images, latents=result.latents)


def _encode(args: argparse.Namespace) -> int:
    from service.images import read_images

    with _client(args) as client:
        images = read_images(args.images, client.model_info(**_pick(args)).image_shape[0])
        result = client.encode(images, samples=args.samples, seed=args.seed, **_pick(args))
    return _write(args, "", None, mu=result.mu, logvar=result.logvar, z=result.z)


def _decode(args: argparse.Namespace) -> int:
    import numpy as np

    latents = np.load(args.latents)
    with _client(args) as client:
        result = client.decode(
            latents[None] if latents.ndim == 1 else latents, output_dtype=_image_dtype(args), **_pick(args)
        )
    return _write(args, "decoded", result.images)


def _reconstruct(args: argparse.Namespace) -> int:
    from service.images import read_images

    with _client(args) as client:
        images = read_images(args.images, client.model_info(**_pick(args)).image_shape[0])
        result = client.reconstruct(images, output_dtype=_image_dtype(args), **_pick(args))
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
            **_pick(args),
        )
    return _write(args, "step", result.images, latents=result.latents)


def register(commands: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--target", default="localhost:50051", help="HOST:PORT")
    common.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    common.add_argument("--model", default="", help="model name (default: the server's default)")
    common.add_argument("--version", type=int, default=0, help="model version (default: the newest)")
    common.add_argument("--out", type=Path, default=Path("out"), help="output directory")
    common.add_argument("--npy", action="store_true", help="write images as one .npy instead of PNGs")
    common.add_argument("--token-file", type=Path, help="file holding the server's bearer token")
    add_tls_flags(common)

    client = commands.add_parser("client", help="call a running server").add_subparsers(
        dest="rpc", required=True, metavar="RPC"
    )
    sample = client.add_parser("sample", parents=[common], help="images from the prior")
    sample.add_argument("--n", type=int, default=16)
    sample.add_argument("--seed", type=int, default=None)
    sample.add_argument("--temperature", type=float, default=None, help="scales the prior's std (default 1)")
    sample.set_defaults(handler=_sample)

    encode = client.add_parser("encode", parents=[common], help="images -> mu.npy, logvar.npy (z.npy)")
    encode.add_argument("images", type=Path, nargs="+", help="PNG files or .npy arrays")
    encode.add_argument("--samples", type=int, default=0, help="posterior samples per image")
    encode.add_argument("--seed", type=int, default=None)
    encode.set_defaults(handler=_encode)

    decode = client.add_parser("decode", parents=[common], help="latents (.npy, [n, D]) -> images")
    decode.add_argument("latents", type=Path)
    decode.set_defaults(handler=_decode)

    reconstruct = client.add_parser(
        "reconstruct", parents=[common], help="images -> reconstructions, error.npy"
    )
    reconstruct.add_argument("images", type=Path, nargs="+", help="PNG files or .npy arrays")
    reconstruct.set_defaults(handler=_reconstruct)

    interpolate = client.add_parser("interpolate", parents=[common], help="images between two endpoints")
    interpolate.add_argument("start", type=Path, help="PNG image, or .npy image [C, H, W] or latent [D]")
    interpolate.add_argument("end", type=Path)
    interpolate.add_argument("--steps", type=int, default=8)
    interpolate.add_argument("--method", choices=["linear", "spherical"], default="linear")
    interpolate.set_defaults(handler=_interpolate)
