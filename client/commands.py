"""What each `vae client` command does: read its inputs, make its call, write or print what came back.

Each prints the files it wrote (or what it was asked for) on stdout, and which model version answered
on stderr. Inputs and the --out directory are checked before the first call, so a mistake in them
costs the server nothing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wire.caller_flags import client_tls, client_token, quiet_grpc, rpc_error_line

if TYPE_CHECKING:
    import numpy as np

    from client.bulk import Report
    from client.clients import AsyncVaeClient, VaeClient
    from client.requests import ImageDType


@contextmanager
def _client(args: argparse.Namespace, *, out_file: bool = False) -> Iterator[VaeClient]:
    """A client for --target; a failed call becomes a one-line error naming its status.

    An --out that cannot be written to (a folder, or with `out_file` one file) is refused first,
    before the server does any work.
    """
    quiet_grpc()
    import grpc

    from client.clients import VaeClient
    from client.image_files import check_out
    from repository.errors import CommandError

    if "out" in args:
        check_out(args.out, file=out_file)
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
    from client.image_files import save_array, write_images

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


def _size(args: argparse.Namespace) -> tuple[int, int]:
    """--height and --width: both (a model of any size), or neither (its fixed size)."""
    if (args.height > 0) != (args.width > 0) or min(args.height, args.width) < 0:
        raise ValueError(
            f"--height {args.height} --width {args.width}: pass both, positive, for a model of any size, "
            "or neither for a model of one size (`vae client info` says which)"
        )
    return args.height, args.width


def sample(args: argparse.Namespace) -> int:
    size = _size(args)
    with _client(args) as client:
        result = client.sample(
            args.n,
            seed=args.seed,
            temperature=args.temperature,
            output_dtype=_image_dtype(args),
            labels=args.label,
            height=size[0],
            width=size[1],
            **_pick(args),
        )
    _answered(result.model)
    return _write(args, "sample", result.images, latents=result.latents)


def sample_stream(args: argparse.Namespace) -> int:
    import numpy as np

    from client.image_files import write_images

    latents: list[np.ndarray] = []
    written = 0
    size = _size(args)
    with _client(args) as client:
        chunks = client.sample_stream(
            args.n,
            seed=args.seed,
            temperature=args.temperature,
            output_dtype="uint8",
            labels=args.label,
            height=size[0],
            width=size[1],
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


def encode(args: argparse.Namespace) -> int:
    """One request per image size; --out FILE.npy holds the means of one size, a folder everything."""
    from client.image_files import model_channels, read_inputs, size_groups

    files = read_inputs(args.images)
    sizes = list(dict.fromkeys(file.size for file in files))
    to_file = args.out.suffix == ".npy"
    if to_file and (len(sizes) > 1 or args.samples):
        raise ValueError(
            f"--out {args.out} holds one array of mean latents, of images of one size and no samples; "
            f"these are {len(sizes)} sizes: pass --out DIR, or use `vae client encode-folder`"
            if len(sizes) > 1
            else f"--out {args.out} holds the mean latents only: pass --out DIR for z.npy"
        )
    with _client(args, out_file=to_file) as client:
        groups = size_groups(files, model_channels(client.model_info(**_pick(args))))
        options = {"samples": args.samples, "seed": args.seed, "labels": args.label, "scaled": args.scaled}
        options.update(_pick(args))
        results = {shape: client.encode(images, **options) for shape, images in groups.items()}
    first = next(iter(results.values()))
    _answered(first.model)
    if to_file:
        return _write_file(args.out, first.mu)
    # Several sizes: their latents differ in shape, so each size has its own files, named after it.
    for shape, result in results.items():
        suffix = "" if len(results) == 1 else "_" + "x".join(map(str, shape[1:]))
        arrays = {f"{name}{suffix}": getattr(result, name) for name in ("mu", "logvar", "z")}
        _write(args, "", None, **arrays)
    return 0


def _write_file(path: Path, array: np.ndarray) -> int:
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)
    print(path)
    return 0


def decode(args: argparse.Namespace) -> int:
    from client.image_files import read_latents

    latents = read_latents(args.latents)
    with _client(args) as client:
        result = client.decode(
            latents, output_dtype=_image_dtype(args), labels=args.label, scaled=args.scaled, **_pick(args)
        )
    _answered(result.model)
    return _write(args, "decoded", result.images)


def reconstruct(args: argparse.Namespace) -> int:
    from client.image_files import image_batch, model_channels, read_inputs

    files = read_inputs(args.images)
    with _client(args) as client:
        images = image_batch(files, model_channels(client.model_info(**_pick(args))))
        result = client.reconstruct(images, output_dtype=_image_dtype(args), labels=args.label, **_pick(args))
    _answered(result.model)
    return _write(args, "reconstruction", result.images, error=result.error)


def interpolate(args: argparse.Namespace) -> int:
    from client.image_files import model_channels, read_inputs

    files = read_inputs([args.start, args.end])
    with _client(args) as client:
        channels = model_channels(client.model_info(**_pick(args)))
        ends = [file.endpoint(channels) for file in files]
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


def score(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from client.image_files import model_channels, read_inputs

    files = read_inputs(args.images)
    with _client(args) as client:
        channels = model_channels(client.model_info(**_pick(args)))
        per_file = [file.images(channels) for file in files]
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


def list_models(args: argparse.Namespace) -> int:
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


def info(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from client.describe import describe

    with _client(args) as client:
        info = client.model_info(**_pick(args))
    _answered((info.name, info.version))
    print(json.dumps(dataclasses.asdict(info), indent=2) if args.json else "\n".join(describe(info)))
    return 0


def _run_job(args: argparse.Namespace, work: Callable[[AsyncVaeClient], Awaitable[Report]]) -> int:
    """`work` with an asyncio client for --target; prints its summary; exit 1 when any image failed."""
    quiet_grpc()
    import asyncio

    import grpc

    from client.bulk import summary
    from client.clients import AsyncVaeClient
    from repository.errors import CommandError

    tls = client_tls(args)
    credentials = None if tls is None else tls.credentials()

    async def run() -> Report:
        async with AsyncVaeClient(
            args.target, timeout=args.timeout, credentials=credentials, token=client_token(args)
        ) as client:
            return await work(client)

    try:
        report = asyncio.run(run())
    except grpc.RpcError as exc:  # the model cannot be asked for at all; per-request refusals are failures
        raise CommandError(rpc_error_line(exc, tls=tls is not None)) from exc
    print(summary(report, "encoded" if args.rpc == "encode-folder" else "decoded"), file=sys.stderr)
    return 1 if report.failures else 0


def _printed(path: Path) -> None:
    print(path, flush=True)  # as written: a long job shows its progress to scripts too


def encode_folder(args: argparse.Namespace) -> int:
    from client import bulk
    from client.image_files import check_out
    from client.store import IMAGE_SUFFIXES, list_sources

    job = bulk.Job(args.model, args.version, args.concurrency, args.batch, args.shard_size, args.scaled)
    sources = list_sources(args.source)
    if not sources:
        raise ValueError(f"{args.source}: no images in it ({', '.join(sorted(IMAGE_SUFFIXES))})")
    check_out(args.out)
    return _run_job(args, lambda client: bulk.encode_folder(client, sources, args.out, job, _printed))


def decode_store(args: argparse.Namespace) -> int:
    from client import bulk
    from client.image_files import check_out
    from client.store import LatentStore

    job = bulk.Job(args.model, args.version, args.concurrency, args.batch)
    store = LatentStore.read(args.store)
    check_out(args.out)
    if args.model and (args.model, args.version) != (store.model, store.version):
        print(f"decoding with {args.model}; {store.model}/{store.version} encoded the store", file=sys.stderr)
    return _run_job(args, lambda client: bulk.decode_store(client, store, args.out, job, _printed))
