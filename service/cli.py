"""`vae serve`, `vae client sample|encode|decode|reconstruct|interpolate` and `vae health`."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.config import ServiceConfig, env_var, flag, read_token

if TYPE_CHECKING:
    import grpc
    import numpy as np

    from service.client import VaeClient


# --- vae serve ------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    import logging

    from repository.errors import CommandError, RepositoryError
    from service import event_loop
    from service.server import create_server

    config = ServiceConfig.load(vars(args), os.environ)
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    async def run() -> None:
        server, _ = create_server(config)
        await server.serve()

    try:
        event_loop.run(run(), config.event_loop)
    except RepositoryError as exc:
        raise CommandError(str(exc)) from exc
    return 0


def config_from_flags(flags: Sequence[str], env: Mapping[str, str]) -> ServiceConfig:
    """The configuration `vae serve FLAGS` would run with, given environment `env`."""
    parser = argparse.ArgumentParser(prog="vae serve")
    _add_config_flags(parser)
    return ServiceConfig.load(vars(parser.parse_args(list(flags))), env)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ServiceConfig field; None means "not given", so VAE_* and defaults still apply."""
    for spec in dataclasses.fields(ServiceConfig):
        kind = type(spec.default)
        help = f"{spec.metadata['help']} [{env_var(spec.name)}; default {spec.default}]"
        if kind is bool:
            parser.add_argument(
                flag(spec.name), action=argparse.BooleanOptionalAction, default=None, help=help
            )
        else:
            parser.add_argument(
                flag(spec.name), type=kind, default=None, metavar=spec.name.upper(), help=help
            )


# --- vae health -----------------------------------------------------------------------------------


def _health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    credentials = _credentials(args)
    channel = (
        grpc.secure_channel(args.target, credentials) if credentials else grpc.insecure_channel(args.target)
    )
    with channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            print(f"{args.target}: {exc.code().name}: {exc.details()}")
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{args.target}: {status}")
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


def _add_tls_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls", action="store_true", help="TLS, trusting the system's CA certificates")
    parser.add_argument("--tls-ca", type=Path, help="PEM CA certificates to trust instead (implies --tls)")
    parser.add_argument(
        "--tls-cert", type=Path, help="PEM client certificate, for mutual TLS (implies --tls)"
    )
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")


def _credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """TLS credentials from --tls/--tls-ca/--tls-cert/--tls-key; None for plaintext."""
    import grpc

    if not (args.tls or args.tls_ca or args.tls_cert):
        return None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    return grpc.ssl_channel_credentials(
        root_certificates=args.tls_ca.read_bytes() if args.tls_ca else None,
        private_key=args.tls_key.read_bytes() if args.tls_key else None,
        certificate_chain=args.tls_cert.read_bytes() if args.tls_cert else None,
    )


# --- vae client -----------------------------------------------------------------------------------


@contextmanager
def _client(args: argparse.Namespace) -> Iterator[VaeClient]:
    """A client for --target; a failed call becomes a one-line error naming its status."""
    import grpc

    from repository.errors import CommandError
    from service.client import VaeClient

    token = read_token(args.token_file) if args.token_file else None
    try:
        with VaeClient(
            args.target, timeout=args.timeout, credentials=_credentials(args), token=token
        ) as client:
            yield client
    except grpc.RpcError as exc:
        raise CommandError(f"{exc.code().name}: {exc.details()}") from exc


def _read_images(paths: list[Path], channels: int) -> np.ndarray:
    """PNG files (one image each) or .npy files ([C, H, W] or [n, C, H, W]) -> one [n, C, H, W] array."""
    import numpy as np
    from PIL import Image

    modes = {1: "L", 3: "RGB", 4: "RGBA"}
    arrays = []
    for path in paths:
        if path.suffix == ".npy":
            array = np.load(path)
            arrays.append(array[None] if array.ndim == 3 else array)
        elif channels not in modes:
            raise ValueError(f"{path}: the model takes {channels} channels; pass images as .npy")
        else:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert(modes[channels]))
            arrays.append((pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1))[None])
    return np.concatenate(arrays)


def _write_images(images: np.ndarray, out: Path, prefix: str, as_npy: bool) -> list[Path]:
    """[n, C, H, W] uint8 or float32 in [0, 1] -> OUT/PREFIX_0000.png ... (or OUT/PREFIX.npy)."""
    import numpy as np
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    if as_npy:
        np.save(out / f"{prefix}.npy", images)
        return [out / f"{prefix}.npy"]
    pixels = images if images.dtype == np.uint8 else (np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8)
    paths = []
    for i, image in enumerate(pixels):
        path = out / f"{prefix}_{i:04d}.png"
        channels = image.shape[0]
        Image.fromarray(image[0] if channels == 1 else image.transpose(1, 2, 0)).save(path)
        paths.append(path)
    return paths


def _save(out: Path, name: str, array: np.ndarray) -> Path:
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    np.save(out / f"{name}.npy", array)
    return out / f"{name}.npy"


def _print(paths: list[Path]) -> None:
    for path in paths:
        print(path)


def _image_dtype(args: argparse.Namespace) -> Any:
    # PNGs hold 8-bit pixels anyway: ask the server for uint8 and move a quarter of the bytes.
    return "float32" if args.npy else "uint8"


def _client_sample(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.sample(
            args.n,
            seed=args.seed,
            temperature=args.temperature,
            output_dtype=_image_dtype(args),
            **_pick(args),
        )
    _print(
        [
            *_write_images(result.images, args.out, "sample", args.npy),
            _save(args.out, "latents", result.latents),
        ]
    )
    return 0


def _client_encode(args: argparse.Namespace) -> int:
    with _client(args) as client:
        images = _read_images(args.images, client.model_info(**_pick(args)).image_shape[0])
        result = client.encode(images, samples=args.samples, seed=args.seed, **_pick(args))
    paths = [_save(args.out, "mu", result.mu), _save(args.out, "logvar", result.logvar)]
    if result.z is not None:
        paths.append(_save(args.out, "z", result.z))
    _print(paths)
    return 0


def _client_decode(args: argparse.Namespace) -> int:
    import numpy as np

    latents = np.load(args.latents)
    with _client(args) as client:
        result = client.decode(
            latents[None] if latents.ndim == 1 else latents, output_dtype=_image_dtype(args), **_pick(args)
        )
    _print(_write_images(result.images, args.out, "decoded", args.npy))
    return 0


def _client_reconstruct(args: argparse.Namespace) -> int:
    with _client(args) as client:
        images = _read_images(args.images, client.model_info(**_pick(args)).image_shape[0])
        result = client.reconstruct(images, output_dtype=_image_dtype(args), **_pick(args))
    _print(
        [
            *_write_images(result.images, args.out, "reconstruction", args.npy),
            _save(args.out, "error", result.error),
        ]
    )
    return 0


def _endpoint(path: Path, channels: int) -> np.ndarray:
    """A .npy of rank 1 is a latent [D]; anything else is one image [C, H, W]."""
    import numpy as np

    if path.suffix == ".npy":
        array: np.ndarray = np.load(path)
        if array.ndim == 1:
            return array
    image: np.ndarray = _read_images([path], channels)[0]
    return image


def _client_interpolate(args: argparse.Namespace) -> int:
    with _client(args) as client:
        channels = client.model_info(**_pick(args)).image_shape[0]
        ends = [_endpoint(path, channels) for path in (args.start, args.end)]
        result = client.interpolate(
            ends[0],
            ends[1],
            steps=args.steps,
            method=args.method,
            output_dtype=_image_dtype(args),
            **_pick(args),
        )
    _print(
        [
            *_write_images(result.images, args.out, "step", args.npy),
            _save(args.out, "latents", result.latents),
        ]
    )
    return 0


def _pick(args: argparse.Namespace) -> dict[str, Any]:
    return {"model": args.model, "version": args.version}


# --- registration ---------------------------------------------------------------------------------


def register(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve a model repository over gRPC",
        description="Precedence: flags, then VAE_* environment variables, then defaults.",
    )
    _add_config_flags(serve)
    serve.set_defaults(handler=_serve)

    health = commands.add_parser("health", help="exit 0 iff the server reports SERVING")
    health.add_argument("--target", default="localhost:50051", help="HOST:PORT")
    health.add_argument("--timeout", type=float, default=2.0, help="seconds")
    health.add_argument("--service", default="", help="service name ('' = the whole server)")
    _add_tls_flags(health)
    health.set_defaults(handler=_health)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--target", default="localhost:50051", help="HOST:PORT")
    common.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    common.add_argument("--model", default="", help="model name (default: the server's default)")
    common.add_argument("--version", type=int, default=0, help="model version (default: the newest)")
    common.add_argument("--out", type=Path, default=Path("out"), help="output directory")
    common.add_argument("--npy", action="store_true", help="write images as one .npy instead of PNGs")
    common.add_argument("--token-file", type=Path, help="file holding the server's bearer token")
    _add_tls_flags(common)

    client = commands.add_parser("client", help="call a running server").add_subparsers(
        dest="rpc", required=True, metavar="RPC"
    )
    sample = client.add_parser("sample", parents=[common], help="images from the prior")
    sample.add_argument("--n", type=int, default=16)
    sample.add_argument("--seed", type=int, default=None)
    sample.add_argument("--temperature", type=float, default=None, help="scales the prior's std (default 1)")
    sample.set_defaults(handler=_client_sample)

    encode = client.add_parser("encode", parents=[common], help="images -> mu.npy, logvar.npy (z.npy)")
    encode.add_argument("images", type=Path, nargs="+", help="PNG files or .npy arrays")
    encode.add_argument("--samples", type=int, default=0, help="posterior samples per image")
    encode.add_argument("--seed", type=int, default=None)
    encode.set_defaults(handler=_client_encode)

    decode = client.add_parser("decode", parents=[common], help="latents (.npy, [n, D]) -> images")
    decode.add_argument("latents", type=Path)
    decode.set_defaults(handler=_client_decode)

    reconstruct = client.add_parser(
        "reconstruct", parents=[common], help="images -> reconstructions, error.npy"
    )
    reconstruct.add_argument("images", type=Path, nargs="+", help="PNG files or .npy arrays")
    reconstruct.set_defaults(handler=_client_reconstruct)

    interpolate = client.add_parser("interpolate", parents=[common], help="images between two endpoints")
    interpolate.add_argument("start", type=Path, help="PNG image, or .npy image [C, H, W] or latent [D]")
    interpolate.add_argument("end", type=Path)
    interpolate.add_argument("--steps", type=int, default=8)
    interpolate.add_argument("--method", choices=["linear", "spherical"], default="linear")
    interpolate.set_defaults(handler=_client_interpolate)
