"""The loaded model versions by name and number, and which one answers a request (loading.py loads them)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from repository.manifest import (
    NAME_PATTERN,
    Manifest,
)
from repository.prior import Prior
from repository.scoring import Likelihood, ScoringUnsupported
from service.batcher import Batcher
from service.buckets import Buckets
from service.errors import InvalidArgument, NotFound, Unavailable
from vae.v1 import vae_pb2 as pb

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scoring:
    """What Score needs of a model: its p(x|z), and a decoder batcher returning the output that reads.

    Its own batcher, apart from Decode's: Decode and Sample never copy back logits they do not need,
    and Score's many decoder items queue there without crowding out the other RPCs' admission.
    """

    likelihood: Likelihood
    prior: Prior  # Score's log p(z), computed in the decoder's batches
    # latents [n, D] (Labelled when conditional) -> (likelihood.output [n, C, H, W], log p(z) [n])
    decoder: Batcher


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One model version ready to serve: its manifest, its two graphs and their batchers."""

    manifest: Manifest
    provider: str
    # A conditional model's batchers take Labelled items: the arrays below and a class per item.
    # One batcher per item shape (service/buckets.py): a model of one image size has one.
    encoders: Buckets  # images [n, C, H, W] -> (mu [n, *latent], logvar [n, *latent])
    decoders: Buckets  # latents [n, *latent] -> (the image output [n, C, H, W]: probs or image,)
    scoring: Scoring | ScoringUnsupported  # the exception says why a model cannot be scored
    prior: Prior | None  # p(z): what Sample draws from and Score's log p(z); None: spatial, N(0, I)
    prior_sampler: Batcher | None  # a prior flow's inverse: base draws u [n, D] -> (z [n, D],); else None
    ref: pb.ModelRef  # built once, copied into every response
    release: Callable[[], None]  # gives its graphs back once its batchers are closed

    @property
    def encoder(self) -> Batcher:
        """The encoder's batcher of the warmed shape (a fixed-size model's only one)."""
        return self.encoders.warmed

    @property
    def decoder(self) -> Batcher:
        """The decoder's batcher of the warmed shape (a fixed-size model's only one)."""
        return self.decoders.warmed

    async def close(self) -> None:
        closing = [self.encoders.close(), self.decoders.close()]
        if isinstance(self.scoring, Scoring):
            closing.append(self.scoring.decoder.close())
        if self.prior_sampler is not None:
            closing.append(self.prior_sampler.close())
        await asyncio.gather(*closing)
        self.release()


class Registry:
    """The loaded versions by name and number, and which one answers requests that name none."""

    def __init__(self, default_model: str) -> None:
        self.default_model = default_model
        self._models: dict[str, dict[int, LoadedModel]] = {}
        self._default: LoadedModel | None = None

    def get(self, name: str, version: int) -> LoadedModel | None:
        return self._models.get(name, {}).get(version)

    def add(self, model: LoadedModel) -> None:
        self._models.setdefault(model.manifest.name, {})[model.manifest.version] = model
        self._pick_default()

    def remove(self, model: LoadedModel) -> None:
        """Stop answering with `model`; requests that named no version go to the newest one left."""
        versions = self._models[model.manifest.name]
        del versions[model.manifest.version]
        if not versions:
            del self._models[model.manifest.name]
        self._pick_default()

    def _pick_default(self) -> None:
        versions = self._models.get(self.default_model)
        self._default = versions[max(versions)] if versions else None

    def models(self) -> list[LoadedModel]:
        return [self._models[name][v] for name in sorted(self._models) for v in sorted(self._models[name])]

    def versions(self, name: str) -> list[int]:
        return sorted(self._models.get(name, {}))

    @property
    def default(self) -> LoadedModel | None:
        return self._default

    def resolve(self, ref: pb.ModelRef) -> LoadedModel:
        """Empty name: the default model; version 0: its newest loaded version."""
        if self._default is None:
            raise Unavailable("models are still loading; retry when health reports SERVING")
        if not ref.name and not ref.version:
            return self._default
        name = ref.name or self.default_model
        versions = self._models.get(name)
        if not versions:
            if not NAME_PATTERN.fullmatch(name):
                # Never echo an unbounded string: a long name would overflow the status trailer.
                raise InvalidArgument(
                    f"model name must be 1-64 letters, digits, '_', '.' or '-', got {_clip(name)!r} "
                    f"({len(name)} characters)"
                )
            raise NotFound(f"unknown model {name!r}; loaded models: {', '.join(sorted(self._models))}")
        version = ref.version or max(versions)
        if version not in versions:
            loaded = ", ".join(map(str, sorted(versions)))
            raise NotFound(f"model {name!r} has no version {version}; loaded versions: {loaded}")
        return versions[version]


def _clip(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
