"""The vae.v1.VaeService RPCs: validate at the edge, batch through the model's graphs, answer.

Each unary RPC is decode request -> checked arrays -> batcher(s) -> response, wrapped by one
function that maps errors to status codes, sets the x-queue-ms / x-compute-ms trailing metadata and
records the request metrics. The per-request path is kept short: the event loop's time is the
service's throughput on a small machine.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import numpy as np

from service import codec, latents
from service.batcher import Batcher, Result
from service.config import ServiceConfig
from service.errors import InvalidArgument, Unavailable, status_of
from service.metrics import Metrics
from service.registry import LoadedModel, Registry
from vae.v1 import vae_pb2 as pb
from vae.v1 import vae_pb2_grpc

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
SERVICE = pb.DESCRIPTOR.services_by_name["VaeService"]
Response = TypeVar("Response")
MAX_TEMPERATURE = 10.0


class Call:
    """One RPC's deadline, item count and time spent waiting and computing, across batcher hops."""

    __slots__ = ("compute", "deadline", "items", "queue")

    def __init__(self, context: Context) -> None:
        remaining = context.time_remaining()
        self.deadline = None if remaining is None else time.perf_counter() + remaining
        self.items = 0
        self.queue = 0.0
        self.compute = 0.0

    async def run(self, batcher: Batcher, items: np.ndarray) -> tuple[np.ndarray, ...]:
        result: Result = await batcher.submit(items, self.deadline)
        self.queue += result.queue_seconds
        self.compute += result.compute_seconds
        return result.outputs

    def trailers(self) -> tuple[tuple[str, str], ...]:
        return (("x-queue-ms", f"{self.queue * 1e3:.3f}"), ("x-compute-ms", f"{self.compute * 1e3:.3f}"))


class VaeServicer(vae_pb2_grpc.VaeServiceServicer):
    """Implements every RPC of protos/vae/v1/vae.proto over the registry's loaded models."""

    def __init__(self, registry: Registry, config: ServiceConfig, metrics: Metrics) -> None:
        self._registry = registry
        self._config = config
        # Bound once per method: the request path does no label lookups.
        self._methods = {method.name: metrics.method(method.name) for method in SERVICE.methods}
        # Unseeded draws share one generator: only the event loop thread touches it.
        self._rng = np.random.default_rng()
        # The server's drain reads these: calls being answered, when the last one arrived, and
        # whether new ones are refused (UNAVAILABLE, so that clients retry on another replica).
        self.active = 0
        self.last_arrival = 0.0
        self.draining = False

    def _admit(self, started: float) -> None:
        self.last_arrival = started
        if self.draining:
            raise Unavailable("the server is shutting down; retry on another replica")

    async def _answer(
        self, name: str, handler: Callable[[Any, Call], Awaitable[Response]], request: Any, context: Context
    ) -> Response:
        method = self._methods[name]
        started = time.perf_counter()
        method.in_flight.inc()
        call = Call(context)
        self.active += 1
        try:
            self._admit(started)
            response = await handler(request, call)
        except asyncio.CancelledError:
            method.finished("CANCELLED", started)
            raise
        except Exception as exc:
            status, message = status_of(exc)
            # Recorded before answering: a client that saw the answer also sees it counted.
            method.finished(status.name, started)
            await context.abort(status, message, call.trailers())
            raise  # abort raises; this line only satisfies the type checker
        finally:
            self.active -= 1
        context.set_trailing_metadata(call.trailers())
        method.items.inc(call.items)
        method.finished("OK", started)
        return response

    # --- RPCs ------------------------------------------------------------------------------------

    async def Encode(self, request: pb.EncodeRequest, context: Context) -> pb.EncodeResponse:
        return await self._answer("Encode", self._encode, request, context)

    async def Decode(self, request: pb.DecodeRequest, context: Context) -> pb.DecodeResponse:
        return await self._answer("Decode", self._decode, request, context)

    async def Sample(self, request: pb.SampleRequest, context: Context) -> pb.SampleResponse:
        return await self._answer("Sample", self._sample, request, context)

    async def Reconstruct(self, request: pb.ReconstructRequest, context: Context) -> pb.ReconstructResponse:
        return await self._answer("Reconstruct", self._reconstruct, request, context)

    async def Interpolate(self, request: pb.InterpolateRequest, context: Context) -> pb.InterpolateResponse:
        return await self._answer("Interpolate", self._interpolate, request, context)

    async def ListModels(self, request: pb.ListModelsRequest, context: Context) -> pb.ListModelsResponse:
        return await self._answer("ListModels", self._list_models, request, context)

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context: Context) -> pb.ModelInfo:
        return await self._answer("GetModelInfo", self._model_info, request, context)

    async def SampleStream(
        self, request: pb.SampleRequest, context: Context
    ) -> AsyncIterator[pb.SampleResponse]:
        method = self._methods["SampleStream"]
        started = time.perf_counter()
        method.in_flight.inc()
        call = Call(context)
        self.active += 1
        try:
            self._admit(started)
            async for response in self._sample_stream(request, call):
                yield response
        except (asyncio.CancelledError, GeneratorExit):
            # GeneratorExit: grpc closes the stream when the client goes away.
            method.finished("CANCELLED", started)
            raise
        except Exception as exc:
            status, message = status_of(exc)
            method.finished(status.name, started)
            await context.abort(status, message, call.trailers())
            return
        finally:
            self.active -= 1
        context.set_trailing_metadata(call.trailers())
        method.items.inc(call.items)
        method.finished("OK", started)

    # --- handlers: request -> checked arrays -> batches -> response ------------------------------

    async def _encode(self, request: pb.EncodeRequest, call: Call) -> pb.EncodeResponse:
        model = self._registry.resolve(request.model)
        images = codec.images(request.images, model.image_shape, self._config.max_request_items)
        k = codec.count(request.samples, "samples", 0, self._config.max_posterior_samples)
        self._check_size(len(images) * (2 + k) * model.latent_dim * 4)
        mu, logvar = await call.run(model.encode, images)
        call.items = len(images)
        response = pb.EncodeResponse(model=model.ref, mu=codec.tensor(mu), logvar=codec.tensor(logvar))
        if k:
            rng = latents.stream(_seed(request), self._rng)
            response.z.CopyFrom(codec.tensor(latents.posterior(rng, mu, logvar, k)))
        return response

    async def _decode(self, request: pb.DecodeRequest, call: Call) -> pb.DecodeResponse:
        model = self._registry.resolve(request.model)
        z = codec.latents(request.latents, model.latent_dim, self._config.max_request_items)
        dtype = codec.output_dtype(request.output_dtype)
        self._check_size(self._image_bytes(model, len(z), dtype))
        (pixels,) = await call.run(model.decode, z)
        call.items = len(z)
        return pb.DecodeResponse(model=model.ref, images=codec.image_tensor(pixels, dtype))

    async def _sample(self, request: pb.SampleRequest, call: Call) -> pb.SampleResponse:
        model = self._registry.resolve(request.model)
        n = codec.count(request.n, "n", 1, self._config.max_request_items)
        temperature, dtype = _temperature(request), codec.output_dtype(request.output_dtype)
        self._check_size(self._image_bytes(model, n, dtype) + n * model.latent_dim * 4)
        z = latents.prior(latents.stream(_seed(request), self._rng), n, model.latent_dim, temperature)
        (pixels,) = await call.run(model.decode, z)
        call.items = n
        return pb.SampleResponse(
            model=model.ref, images=codec.image_tensor(pixels, dtype), latents=codec.tensor(z)
        )

    async def _sample_stream(self, request: pb.SampleRequest, call: Call) -> AsyncIterator[pb.SampleResponse]:
        model = self._registry.resolve(request.model)
        n = codec.count(request.n, "n", 1, self._config.max_stream_items)
        temperature, dtype = _temperature(request), codec.output_dtype(request.output_dtype)
        per_item = self._image_bytes(model, 1, dtype) + model.latent_dim * 4
        # Full batches, unless that many items would not fit in one message.
        chunk = max(1, min(model.decode.max_batch_items, self._config.max_message_bytes // (2 * per_item)))
        rng = latents.stream(_seed(request), self._rng)
        # Drawing chunk after chunk from one generator gives the same numbers as Sample's single draw.
        # Two chunks in flight: the next one computes while the previous one is sent.
        pending: deque[tuple[np.ndarray, asyncio.Task[tuple[np.ndarray, ...]]]] = deque()

        async def piece() -> pb.SampleResponse:
            z, task = pending.popleft()
            (pixels,) = await task
            call.items += len(z)
            return pb.SampleResponse(
                model=model.ref, images=codec.image_tensor(pixels, dtype), latents=codec.tensor(z)
            )

        try:
            for start in range(0, n, chunk):
                z = latents.prior(rng, min(chunk, n - start), model.latent_dim, temperature)
                pending.append((z, asyncio.ensure_future(call.run(model.decode, z))))
                if len(pending) == 2:
                    yield await piece()
            while pending:
                yield await piece()
        finally:
            for _, task in pending:
                task.cancel()

    async def _reconstruct(self, request: pb.ReconstructRequest, call: Call) -> pb.ReconstructResponse:
        model = self._registry.resolve(request.model)
        images = codec.images(request.images, model.image_shape, self._config.max_request_items)
        dtype = codec.output_dtype(request.output_dtype)
        self._check_size(self._image_bytes(model, len(images), dtype) + len(images) * 4)
        mu, _ = await call.run(model.encode, images)
        (pixels,) = await call.run(model.decode, mu)
        call.items = len(images)
        error = latents.reconstruction_error(images, pixels)
        return pb.ReconstructResponse(
            model=model.ref, images=codec.image_tensor(pixels, dtype), error=codec.tensor(error)
        )

    async def _interpolate(self, request: pb.InterpolateRequest, call: Call) -> pb.InterpolateResponse:
        model = self._registry.resolve(request.model)
        steps = codec.count(request.steps, "steps", 2, self._config.max_request_items)
        dtype = codec.output_dtype(request.output_dtype)
        if request.method not in pb.InterpolationMethod.values():
            raise InvalidArgument(
                "method must be INTERPOLATION_METHOD_LINEAR or INTERPOLATION_METHOD_SPHERICAL, "
                f"got {request.method}"
            )
        self._check_size(self._image_bytes(model, steps, dtype) + steps * model.latent_dim * 4)
        which = request.WhichOneof("endpoints")
        if which == "images":
            images = codec.images(request.images, model.image_shape, 2)
            ends, _ = await call.run(model.encode, _pair(images, "images"))
        elif which == "latents":
            ends = _pair(codec.latents(request.latents, model.latent_dim, 2), "latents")
        else:
            raise InvalidArgument("endpoints: set images [2, C, H, W] or latents [2, D]")
        spherical = request.method == pb.INTERPOLATION_METHOD_SPHERICAL
        path = latents.interpolate(ends[0], ends[1], steps, spherical)
        (pixels,) = await call.run(model.decode, path)
        call.items = steps
        return pb.InterpolateResponse(
            model=model.ref, images=codec.image_tensor(pixels, dtype), latents=codec.tensor(path)
        )

    async def _list_models(self, request: pb.ListModelsRequest, call: Call) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[self._info(model) for model in self._registry.models()])

    async def _model_info(self, request: pb.GetModelInfoRequest, call: Call) -> pb.ModelInfo:
        return self._info(self._registry.resolve(request.model))

    # --- helpers ---------------------------------------------------------------------------------

    def _info(self, model: LoadedModel) -> pb.ModelInfo:
        manifest = model.manifest
        return pb.ModelInfo(
            name=manifest.name,
            version=manifest.version,
            versions=self._registry.versions(manifest.name),
            is_default=model is self._registry.default,
            latent_dim=manifest.latent_dim,
            image_shape=manifest.image_shape,
            likelihood=manifest.likelihood,
            provider=model.provider,
            pairing_id=manifest.pairing_id,
            created=manifest.created,
            max_batch_items=model.decode.max_batch_items,
            max_request_items=self._config.max_request_items,
        )

    @staticmethod
    def _image_bytes(model: LoadedModel, n: int, dtype: int) -> int:
        return n * math.prod(model.image_shape) * (1 if dtype == codec.UINT8 else 4)

    def _check_size(self, response_bytes: int) -> None:
        """Refuse before computing what could not be sent."""
        if response_bytes > self._config.max_message_bytes:
            raise InvalidArgument(
                f"the response would be {response_bytes} bytes, over the server's limit of "
                f"{self._config.max_message_bytes}; ask for fewer items (or uint8 images)"
            )


def _seed(request: pb.SampleRequest | pb.EncodeRequest) -> int | None:
    return request.seed if request.HasField("seed") else None


def _temperature(request: pb.SampleRequest) -> float:
    if not request.HasField("temperature"):
        return 1.0
    value = request.temperature
    if not 0 <= value <= MAX_TEMPERATURE:  # NaN fails too
        raise InvalidArgument(f"temperature must be in 0..{MAX_TEMPERATURE:g}, got {value}")
    return value


def _pair(ends: np.ndarray, what: str) -> np.ndarray:
    if len(ends) != 2:
        raise InvalidArgument(f"{what}: interpolation needs exactly 2 endpoints, got {len(ends)}")
    return ends
