"""Requests for vae.v1.VaeService, built once with the service's own client functions, and checked once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks import Rpc
from benchmarks.load import Workload, call_once
from service import client
from service.channel import ClientTls
from vae.v1 import vae_pb2 as pb

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
    info: client.ModelInfo,
    *,
    output_dtype: client.ImageDType = "float32",
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
        request = client.decode_request(latents, output_dtype, model, version)
    elif rpc == "encode":
        request = client.encode_request(images, 0, None, model, version)
    elif rpc == "sample":
        # No seed: a seeded request would make every call produce the very same images.
        request = client.sample_request(items, None, None, output_dtype, model, version)
    else:
        request = client.reconstruct_request(images, output_dtype, model, version)
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
    output_dtype: client.ImageDType = "float32",
    tls: ClientTls | None = None,
    token: str | None = None,
) -> Checked:
    """Ask the server for the model's shapes, build the request and check it once."""
    credentials = tls.credentials() if tls else None
    with client.VaeClient(target, timeout=30.0, credentials=credentials, token=token) as vae:
        info = vae.model_info(model=model, version=version)
    return check(target, rpc, build(rpc, items, info, output_dtype=output_dtype), tls=tls, token=token)
