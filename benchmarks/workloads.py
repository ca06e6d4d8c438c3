"""Requests for vae.v1.VaeService, built once with the Python clients' own builders, and checked once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks import Rpc
from benchmarks.load import Workload, call_once
from client import requests
from client.clients import VaeClient
from client.results import ModelInfo
from vae.v1 import vae_pb2 as pb
from wire.channel import ClientTls

_SERVICE = pb.DESCRIPTOR.services_by_name["VaeService"]
_RESPONSES: dict[str, Any] = {
    "decode": pb.DecodeResponse,
    "encode": pb.EncodeResponse,
    "sample": pb.SampleResponse,
    "reconstruct": pb.ReconstructResponse,
}


@dataclass(frozen=True)
class Checked:
    """A workload that the server answered correctly once, and the size of that answer."""

    workload: Workload
    response_bytes: int


def method_path(rpc: str) -> str:
    return f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name[rpc.capitalize()].name}"


def build(
    rpc: Rpc,
    items: int,
    info: ModelInfo,
    *,
    output_dtype: requests.ImageDType = "float32",
    seed: int = 0,
) -> Workload:
    """One request of `items` items for the model `info` describes; inputs drawn once, seeded."""
    rng = np.random.default_rng(seed)
    model, version = info.name, info.version
    # Latents from the prior and images uniform in [0, 1]: compute does not depend on the values.
    latents = rng.standard_normal((items, info.latent_dim), dtype=np.float32)
    images = rng.random((items, *info.image_shape), dtype=np.float32)
    request: Any
    if rpc == "decode":
        request = requests.decode_request(latents, output_dtype=output_dtype, model=model, version=version)
    elif rpc == "encode":
        request = requests.encode_request(images, model=model, version=version)
    elif rpc == "sample":
        # No seed: a seeded request would make every call produce the very same images.
        request = requests.sample_request(items, output_dtype=output_dtype, model=model, version=version)
    else:
        request = requests.reconstruct_request(
            images, output_dtype=output_dtype, model=model, version=version
        )
    return Workload(method_path(rpc), request.SerializeToString(), items)


def check(
    target: str,
    rpc: Rpc,
    workload: Workload,
    timeout: float = 30.0,
    *,
    tls: ClientTls | None = None,
    token: str | None = None,
) -> Checked:
    """Send the workload's request once; raises grpc.RpcError, or ValueError for a wrong answer."""
    raw = call_once(target, workload, timeout, tls=tls, token=token)
    response = _RESPONSES[rpc].FromString(raw)
    answered = response.mu.shape[0] if rpc == "encode" else response.images.shape[0]
    if answered != workload.items:
        raise ValueError(f"{rpc}: asked for {workload.items} items, the server answered {answered}")
    return Checked(workload, len(raw))


def prepare(
    target: str,
    rpc: Rpc,
    items: int,
    *,
    model: str = "",
    version: int = 0,
    output_dtype: requests.ImageDType = "float32",
    tls: ClientTls | None = None,
    token: str | None = None,
) -> Checked:
    """Ask the server for the model's shapes, build the request and check it once."""
    credentials = tls.credentials() if tls else None
    with VaeClient(target, timeout=30.0, credentials=credentials, token=token) as vae:
        info = vae.model_info(model=model, version=version)
    return check(target, rpc, build(rpc, items, info, output_dtype=output_dtype), tls=tls, token=token)
