"""Two minimal vae.v1 servers, the baselines our service must beat: Decode and Encode, nothing else.

    python -m benchmarks.baselines --port 50091 --version-dir models/mnist/1 [--no-batching]

What a user would write in an afternoon: no validation, no metrics, no health. The micro-batcher
puts (array, future) on an asyncio.Queue; one task takes the first item, gathers whatever arrives
within 1 ms (up to 512 items), runs the graph once on the concatenation and hands each caller its
rows. --no-batching runs the graph once per request. Either way onnxruntime runs in a one-thread
executor, with `vae serve`'s session settings, on the event loop the service runs on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Executor, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from benchmarks.echo import serve_until_signalled, server_parser
from benchmarks.inprocess import OUTPUTS, load_graphs
from benchmarks.load import CHANNEL_OPTIONS
from service import event_loop
from vae.v1 import vae_pb2 as pb
from vae.v1 import vae_pb2_grpc

WINDOW_S = 0.001
MAX_ITEMS = 512
Rows = list[np.ndarray]  # a graph's outputs for one request's rows
Run = Callable[[np.ndarray], Awaitable[Rows]]


def micro_batcher(
    compute: Callable[[np.ndarray], Rows], executor: Executor
) -> tuple[Run, Callable[[], Coroutine[Any, Any, None]]]:
    """(what a servicer awaits, the batching task to run on the loop)."""
    queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[Rows]]] = asyncio.Queue()

    async def run(x: np.ndarray) -> Rows:
        future: asyncio.Future[Rows] = asyncio.get_running_loop().create_future()
        queue.put_nowait((x, future))
        return await future

    async def batches() -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await queue.get()]
            deadline = loop.time() + WINDOW_S
            while len(items) < MAX_ITEMS and (left := deadline - loop.time()) > 0:
                try:
                    items.append(await asyncio.wait_for(queue.get(), left))
                except TimeoutError:
                    break
            outputs = await loop.run_in_executor(executor, compute, np.concatenate([x for x, _ in items]))
            start = 0
            for x, future in items:
                if not future.cancelled():  # the caller went away
                    future.set_result([output[start : start + len(x)] for output in outputs])
                start += len(x)

    return run, batches


def per_request(compute: Callable[[np.ndarray], Rows], executor: Executor) -> Run:
    async def run(x: np.ndarray) -> Rows:
        return await asyncio.get_running_loop().run_in_executor(executor, compute, x)

    return run


class Servicer(vae_pb2_grpc.VaeServiceServicer):
    """Decode and Encode; the generated base answers every other method UNIMPLEMENTED."""

    def __init__(self, decode: Run, encode: Run) -> None:
        self.decode, self.encode = decode, encode

    async def Decode(self, request: pb.DecodeRequest, context: Any) -> pb.DecodeResponse:
        (probs,) = await self.decode(_array(request.latents))
        return pb.DecodeResponse(images=_tensor(probs))

    async def Encode(self, request: pb.EncodeRequest, context: Any) -> pb.EncodeResponse:
        mu, logvar = await self.encode(_array(request.images))
        return pb.EncodeResponse(mu=_tensor(mu), logvar=_tensor(logvar))


def _array(tensor: pb.Tensor) -> np.ndarray:
    return np.frombuffer(tensor.data, "<f4").reshape(tuple(tensor.shape))


def _tensor(values: np.ndarray) -> pb.Tensor:
    return pb.Tensor(shape=values.shape, dtype=pb.DTYPE_FLOAT32, data=values.tobytes())


def _compute(session: Any, outputs: list[str], feed: str, x: np.ndarray) -> Rows:
    return list(session.run(outputs, {feed: x}))


async def serve(host: str, port: int, version_dir: Path, batching: bool) -> None:
    executor = ThreadPoolExecutor(1)  # one onnxruntime call at a time, both graphs
    runs: dict[str, Run] = {}
    tasks: list[asyncio.Task[None]] = []  # held, so that the batching tasks are not garbage-collected
    for name, graph in load_graphs(version_dir).items():
        compute = partial(_compute, graph.session, list(OUTPUTS[name]), graph.inputs[0].name)
        if batching:
            runs[name], batches = micro_batcher(compute, executor)
            tasks.append(asyncio.create_task(batches()))
        else:
            runs[name] = per_request(compute, executor)
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    # The stubs mark every method abstract; at run time the generated base implements the others.
    servicer = Servicer(decode=runs["decoder"], encode=runs["encoder"])  # type: ignore[abstract]
    vae_pb2_grpc.add_VaeServiceServicer_to_server(servicer, server)
    await serve_until_signalled(server, host, port)


def main() -> None:
    parser = server_parser(__doc__.splitlines()[0])
    parser.add_argument("--version-dir", type=Path, required=True, help="models/NAME/VERSION")
    parser.add_argument("--no-batching", action="store_true", help="one graph run per request")
    args = parser.parse_args()
    event_loop.run(serve(args.host, args.port, args.version_dir, not args.no_batching), args.event_loop)


if __name__ == "__main__":
    main()
