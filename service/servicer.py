"""The vae.v1.VaeService RPCs: validate at the edge, batch through the model's graphs, answer.

Each method is request -> checked arrays -> batcher(s) -> response; service/calls.py wraps it with
parsing, admission, status mapping, metrics and trailers. Each response array is copied once, into
the bytes sent (service/codec.py's Reply). A conditional model's items go to its batchers Labelled,
each with its class, which the batcher keeps with its item through any batch.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Iterable, Iterator
from contextlib import aclosing
from typing import Any, TypeVar

import grpc
import numpy as np

from repository.scoring import Scorer, ScoringUnsupported, draws
from service import codec, latents, prior_draws
from service.batch_types import Items, labelled
from service.batcher import Batcher
from service.buckets import Buckets
from service.calls import Call, Calls, Handler, StreamHandler
from service.codec import Reply
from service.config import ServiceConfig
from service.errors import FailedPrecondition, InvalidArgument
from service.metrics import Metrics
from service.model_info import model_info, sample_shape
from service.registry import LoadedModel, Registry
from vae.v1 import vae_pb2 as pb
from wire import tensors

# Score's decoder chunks queued at once: enough to keep the batcher busy, few enough that other
# requests' items queue between them and that one Score never fills the queue by itself.
SCORE_CHUNKS_IN_FLIGHT = 4


class VaeServicer:
    """Implements every RPC of protos/vae/v1/vae.proto over the registry's loaded models."""

    def __init__(self, registry: Registry, config: ServiceConfig, metrics: Metrics) -> None:
        self._registry = registry
        self._config = config
        self._metrics = metrics
        # Unseeded draws share one generator: only the event loop thread touches it.
        self._rng = np.random.default_rng()

    def method_handlers(self, calls: Calls) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        unary: dict[str, Handler] = {
            "Encode": self._encode,
            "Decode": self._decode,
            "Sample": self._sample,
            "Reconstruct": self._reconstruct,
            "Interpolate": self._interpolate,
            "Score": self._score,
            "ListModels": self._list_models,
            "GetModelInfo": self._model_info,
        }
        streaming: dict[str, StreamHandler] = {"SampleStream": self._sample_stream}
        return calls.handlers(unary, streaming)

    # --- handlers: request -> checked arrays -> batches -> response ------------------------------

    async def _encode(self, request: pb.EncodeRequest, call: Call) -> Reply[pb.EncodeResponse]:
        model = self._registry.resolve(request.model)
        images = self._images(request.images, model)
        y = codec.labels(request.labels, model.manifest, len(images))
        k = codec.count(request.samples, "samples", 0, self._config.max_posterior_samples)
        latent = model.manifest.latent_shape(images.shape[2:])
        self._check_size(len(images) * (2 + k) * math.prod(latent) * 4)
        mu, logvar = await self._run(call, model.encoders, labelled(images, y))
        if request.scaled:
            mu, logvar = latents.scale(mu, logvar, model.manifest.scaling)
        call.items = len(images)
        response = Reply(pb.EncodeResponse(model=model.ref))
        response.put("mu", mu)
        response.put("logvar", logvar)
        if k:
            rng = latents.stream(_seed(request), self._rng)
            response.put("z", latents.posterior(rng, mu, logvar, k))
        return response

    async def _decode(self, request: pb.DecodeRequest, call: Call) -> Reply[pb.DecodeResponse]:
        model = self._registry.resolve(request.model)
        z = self._latents(request.latents, model)
        if request.scaled:
            z = latents.unscale(z, model.manifest.scaling)
        y = codec.labels(request.labels, model.manifest, len(z))
        dtype = codec.output_dtype(request.output_dtype)
        self._check_size(self._image_bytes(model, z, dtype))
        (pixels,) = await self._run(call, model.decoders, labelled(z, y))
        call.items = len(z)
        response = Reply(pb.DecodeResponse(model=model.ref))
        response.put_images("images", pixels, dtype, model.manifest.value_range)
        return response

    async def _sample(self, request: pb.SampleRequest, call: Call) -> Reply[pb.SampleResponse]:
        model = self._registry.resolve(request.model)
        n = codec.count(request.n, "n", 1, self._config.max_request_items)
        y = codec.labels(request.labels, model.manifest, n)
        shape = sample_shape(model.manifest, request.height, request.width, self._config.max_image_pixels)
        temperature = prior_draws.requested_temperature(request)
        dtype = codec.output_dtype(request.output_dtype)
        u = prior_draws.draw(model, latents.stream(_seed(request), self._rng), n, temperature, shape)
        self._check_size(self._image_bytes(model, u, dtype) + u.nbytes)
        z, pixels = await prior_draws.images(call, model, u, y)
        call.items = n
        return _generated(Reply(pb.SampleResponse(model=model.ref)), model, pixels, dtype, z)

    async def _sample_stream(
        self, request: pb.SampleRequest, call: Call
    ) -> AsyncIterator[Reply[pb.SampleResponse]]:
        model = self._registry.resolve(request.model)
        n = codec.count(request.n, "n", 1, self._config.max_stream_items)
        y = codec.labels(request.labels, model.manifest, n)
        shape = sample_shape(model.manifest, request.height, request.width, self._config.max_image_pixels)
        temperature = prior_draws.requested_temperature(request)
        dtype = codec.output_dtype(request.output_dtype)
        one = np.zeros((1, *shape), np.float32)
        per_item = self._image_bytes(model, one, dtype) + one.nbytes
        decoder = model.decoders(one)
        # Full batches, unless that many items would not fit in one message.
        chunk = max(1, min(decoder.max_batch_items, self._config.max_send_message_bytes // (2 * per_item)))
        rng = latents.stream(_seed(request), self._rng)

        # Drawing chunk after chunk from one generator gives the same numbers as Sample's single draw.
        def chunks() -> Iterator[tuple[int, Coroutine[Any, Any, tuple[np.ndarray, np.ndarray]]]]:
            for start in range(0, n, chunk):
                u = prior_draws.draw(model, rng, min(chunk, n - start), temperature, shape)
                labels = None if y is None else y[start : start + len(u)]
                yield start, prior_draws.images(call, model, u, labels)

        # Two chunks in flight: the next one computes while the previous one is sent.
        async with aclosing(_pipelined(chunks(), depth=2)) as generated:
            async for _, (z, pixels) in generated:
                call.items += len(z)
                yield _generated(Reply(pb.SampleResponse(model=model.ref)), model, pixels, dtype, z)

    async def _reconstruct(self, request: pb.ReconstructRequest, call: Call) -> Reply[pb.ReconstructResponse]:
        model = self._registry.resolve(request.model)
        images = self._images(request.images, model)
        y = codec.labels(request.labels, model.manifest, len(images))
        dtype = codec.output_dtype(request.output_dtype)
        self._check_size(self._image_bytes(model, images, dtype) + len(images) * 4)
        mu, _ = await self._run(call, model.encoders, labelled(images, y))
        (pixels,) = await self._run(call, model.decoders, labelled(mu, y))
        call.items = len(images)
        response = Reply(pb.ReconstructResponse(model=model.ref))
        low, high = model.manifest.value_range
        response.put_images("images", pixels, dtype, (low, high))
        response.put("error", latents.reconstruction_error(images, pixels, high - low))
        return response

    async def _interpolate(self, request: pb.InterpolateRequest, call: Call) -> Reply[pb.InterpolateResponse]:
        model = self._registry.resolve(request.model)
        steps = codec.count(request.steps, "steps", 2, self._config.max_request_items)
        dtype = codec.output_dtype(request.output_dtype)
        if request.method not in pb.InterpolationMethod.values():
            raise InvalidArgument(
                "method must be INTERPOLATION_METHOD_LINEAR or INTERPOLATION_METHOD_SPHERICAL, "
                f"got {request.method}"
            )
        # One class for the whole path: [steps] copies of it, the first two for the endpoints.
        y = codec.labels(request.labels, model.manifest, steps, single=True)
        which = request.WhichOneof("endpoints")
        if which == "images":
            images = _pair(self._images(request.images, model), "images")
            ends, _ = await self._run(call, model.encoders, labelled(images, None if y is None else y[:2]))
        elif which == "latents":
            ends = _pair(self._latents(request.latents, model), "latents")
        else:
            raise InvalidArgument("endpoints: set images [2, C, H, W] or latents [2, D] ([2, C, h, w])")
        spherical = request.method == pb.INTERPOLATION_METHOD_SPHERICAL
        path = latents.interpolate(ends[0], ends[1], steps, spherical)
        self._check_size(self._image_bytes(model, path, dtype) + path.nbytes)
        (pixels,) = await self._run(call, model.decoders, labelled(path, y))
        call.items = steps
        return _generated(Reply(pb.InterpolateResponse(model=model.ref)), model, pixels, dtype, path)

    async def _score(self, request: pb.ScoreRequest, call: Call) -> Reply[pb.ScoreResponse]:
        model = self._registry.resolve(request.model)
        scoring = model.scoring
        if isinstance(scoring, ScoringUnsupported):
            raise FailedPrecondition(str(scoring))
        images = self._images(request.images, model)
        y = codec.labels(request.labels, model.manifest, len(images))
        k = codec.count(request.samples, "samples", 1, self._config.max_score_samples)
        # Judged by all its decoder work before any runs: refused now rather than expiring half-way.
        scoring.decoder.admit_work(len(images) * k, call.deadline, call)
        # Drawn before any batch: the request's own stream, shared by all its images.
        eps = draws(latents.stream(_seed(request), self._rng), k, model.manifest.latent_dim)
        mu, logvar = await call.run(model.encoder, labelled(images, y))
        scorer = Scorer(scoring.likelihood, scoring.prior, images, mu, logvar, eps, y)
        reconstruction = asyncio.ensure_future(call.run(model.decoder, labelled(mu, y)))
        try:
            await self._decode_chunks(call, scoring.decoder, scorer)
            (pixels,) = await reconstruction
        finally:
            reconstruction.cancel()
        scores = scorer.result()
        call.items = len(images)
        observed = self._metrics.score_log_likelihood.labels(model.manifest.name, model.manifest.version)
        for value in scores.log_likelihood.tolist():
            observed.observe(value)
        response = Reply(pb.ScoreResponse(model=model.ref))
        response.put("log_likelihood", scores.log_likelihood)
        response.put("elbo", scores.elbo)
        response.put("kl", scores.kl)
        response.put("reconstruction_error", latents.reconstruction_error(images, pixels))
        return response

    async def _decode_chunks(self, call: Call, decoder: Batcher, scorer: Scorer) -> None:
        """Every decoder item of `scorer`, in chunks of one batch at most, a bounded number queued."""
        size = decoder.max_batch_items
        depth = max(1, min(SCORE_CHUNKS_IN_FLIGHT, self._config.max_queue_items // size))
        chunks = ((start, call.run(decoder, labelled(z, y))) for start, z, y in scorer.chunks(size))
        async with aclosing(_pipelined(chunks, depth)) as decoded:
            async for start, (outputs, log_prior) in decoded:
                scorer.add(start, outputs, log_prior)

    async def _list_models(self, request: pb.ListModelsRequest, call: Call) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[self._info(model) for model in self._registry.models()])

    async def _model_info(self, request: pb.GetModelInfoRequest, call: Call) -> pb.ModelInfo:
        return self._info(self._registry.resolve(request.model))

    # --- helpers ---------------------------------------------------------------------------------

    def _info(self, model: LoadedModel) -> pb.ModelInfo:
        info = model_info(model, self._config.max_request_items)
        info.versions.extend(self._registry.versions(model.manifest.name))
        info.is_default = model is self._registry.default
        return info

    def _images(self, tensor: pb.Tensor, model: LoadedModel) -> np.ndarray:
        """A request's images, checked against the model, and within the bytes one request may queue."""
        images = codec.model_images(
            tensor, model.manifest, self._config.max_request_items, self._config.max_image_pixels
        )
        self._check_work(images.nbytes)
        return images

    def _latents(self, tensor: pb.Tensor, model: LoadedModel) -> np.ndarray:
        z = codec.model_latents(
            tensor, model.manifest, self._config.max_request_items, self._config.max_image_pixels
        )
        self._check_work(z.nbytes)
        return z

    def _check_work(self, nbytes: int) -> None:
        """One request's items must fit in an empty queue (--max-queue-bytes), or no retry would help."""
        if nbytes > self._config.max_queue_bytes:
            raise InvalidArgument(
                f"the request's items hold {nbytes} bytes as float32, over the server's limit of "
                f"{self._config.max_queue_bytes} (--max-queue-bytes); send fewer or smaller items"
            )

    @staticmethod
    async def _run(call: Call, buckets: Buckets, items: Items) -> tuple[np.ndarray, ...]:
        """`items` through the batcher of their shape."""
        return await call.run(buckets(items), items)

    @staticmethod
    def _image_bytes(model: LoadedModel, z: np.ndarray, dtype: int) -> int:
        """The bytes of the images that latents z (any dtype; only the shape counts) decode to."""
        latent_hw = (z.shape[2], z.shape[3]) if z.ndim == 4 else None
        image = model.manifest.decoded_image_shape(latent_hw)
        return len(z) * math.prod(image) * (1 if dtype == tensors.UINT8 else 4)

    def _check_size(self, response_bytes: int) -> None:
        """Refuse before computing what could not be sent."""
        if response_bytes > self._config.max_send_message_bytes:
            raise InvalidArgument(
                f"the response would be {response_bytes} bytes, over the server's limit of "
                f"{self._config.max_send_message_bytes}; ask for fewer items (or uint8 images)"
            )


Key = TypeVar("Key")
Result = TypeVar("Result")


async def _pipelined(
    chunks: Iterable[tuple[Key, Coroutine[Any, Any, Result]]], depth: int
) -> AsyncGenerator[tuple[Key, Result], None]:
    """Each chunk's result, in order, with up to `depth` chunks' work (batcher calls) under way at once.

    The caller's work on one chunk overlaps the next ones' compute. Closed early (cancelled, failed,
    the client gone), it cancels the chunks still queued, which the batchers then drop unrun.
    """
    pending: deque[tuple[Key, asyncio.Task[Result]]] = deque()
    try:
        for key, work in chunks:
            pending.append((key, asyncio.ensure_future(work)))
            if len(pending) == depth:
                key, task = pending.popleft()
                yield key, await task
        while pending:
            key, task = pending.popleft()
            yield key, await task
    finally:
        for _, task in pending:
            task.cancel()


Generated = TypeVar("Generated", pb.SampleResponse, pb.InterpolateResponse)


def _generated(
    response: Reply[Generated], model: LoadedModel, pixels: np.ndarray, dtype: int, z: np.ndarray
) -> Reply[Generated]:
    """Images and the latents they were decoded from."""
    response.put_images("images", pixels, dtype, model.manifest.value_range)
    response.put("latents", z)
    return response


def _seed(request: pb.SampleRequest | pb.EncodeRequest | pb.ScoreRequest) -> int | None:
    return request.seed if request.HasField("seed") else None


def _pair(ends: np.ndarray, what: str) -> np.ndarray:
    if len(ends) != 2:
        raise InvalidArgument(f"{what}: interpolation needs exactly 2 endpoints, got {len(ends)}")
    return ends
