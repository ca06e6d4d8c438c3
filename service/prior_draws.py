"""Sample's draws: the model's base prior on the event loop, a prior flow's inverse in its own batches.

Draws come from the request's stream (service/latents.py), so a seed gives the same latents whatever
else the server is doing, and SampleStream's chunks drawn one after another equal one Sample's draw.
"""

from __future__ import annotations

import numpy as np

from repository.prior import FlowPrior
from service.batch_types import labelled
from service.calls import Call
from service.errors import InvalidArgument
from service.registry import LoadedModel
from vae.v1 import vae_pb2 as pb

MAX_TEMPERATURE = 10.0


async def images(
    call: Call, model: LoadedModel, u: np.ndarray, y: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(latents, images) of base prior draws u: through a prior flow's inverse first, if the model has one."""
    z = u if model.prior_sampler is None else (await call.run(model.prior_sampler, u))[0]
    items = labelled(z, y)
    (pixels,) = await call.run(model.decoders(items), items)
    return z, pixels


def draw(
    model: LoadedModel, rng: np.random.Generator, n: int, temperature: float, shape: tuple[int, ...]
) -> np.ndarray:
    """n draws of the model's base prior; spatial latents: N(0, T^2 I) of `shape`, as StandardNormal's.

    A prior flow maps the draws to latents afterwards, in its own batches (images).
    """
    if isinstance(model.prior, FlowPrior):
        return model.prior.base.sample(rng, n, temperature)
    if model.prior is not None:
        return model.prior.sample(rng, n, temperature)
    z = rng.standard_normal((n, *shape), dtype=np.float32)
    if temperature != 1.0:
        z *= np.float32(temperature)
    return z


def requested_temperature(request: pb.SampleRequest) -> float:
    """The request's temperature, 1 when it gives none; InvalidArgument outside 0..MAX_TEMPERATURE."""
    if not request.HasField("temperature"):
        return 1.0
    value = request.temperature
    if not 0 <= value <= MAX_TEMPERATURE:  # NaN fails too
        raise InvalidArgument(f"temperature must be in 0..{MAX_TEMPERATURE:g}, got {value}")
    return value
