"""A bare grpc.aio server that answers every call with canned bytes: the per-request floor of Python gRPC.

    python -m benchmarks.echo --port 50090 --reply-bytes 3172 136

Method /bench.Echo/Reply<N> answers N bytes, for each N given: the suite sends it the same serialized
requests as our service and asks for replies the size of our service's responses, so the two
differ only in what the service does between receiving and answering. Nothing is parsed.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc

from benchmarks.load import CHANNEL_OPTIONS
from service import event_loop
from service.config import ServiceConfig

SERVICE = "bench.Echo"


def reply_method(size: int) -> str:
    return f"/{SERVICE}/Reply{size}"


def _handler(reply: bytes) -> grpc.RpcMethodHandler[bytes, bytes]:
    async def answer(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return reply

    # No (de)serializers: requests and replies stay bytes.
    return grpc.unary_unary_rpc_method_handler(answer)


async def serve(host: str, port: int, sizes: list[int]) -> None:
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    # Registered like generated servicers register theirs, so the method lookup costs the same.
    handlers = {f"Reply{size}": _handler(bytes(size)) for size in sizes}
    server.add_registered_method_handlers(SERVICE, handlers)  # type: ignore[attr-defined]  # newer than grpc-stubs
    await serve_until_signalled(server, host, port)


async def serve_until_signalled(server: grpc.aio.Server, host: str, port: int) -> None:
    """Listen on host:port until SIGTERM or SIGINT, then stop: how every bare server of the suite runs."""
    if not server.add_insecure_port(f"{host}:{port}"):
        raise SystemExit(f"cannot listen on {host}:{port}")
    await server.start()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1.0)


def server_parser(description: str) -> argparse.ArgumentParser:
    """The flags every bare server of the suite takes: where to listen, and on which event loop."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--event-loop",
        choices=event_loop.EVENT_LOOPS,
        default=ServiceConfig.event_loop,
        help="the one the service under test runs on",
    )
    return parser


def main() -> None:
    parser = server_parser(__doc__.splitlines()[0])
    parser.add_argument("--reply-bytes", type=int, nargs="+", required=True, help="reply sizes to offer")
    args = parser.parse_args()
    event_loop.run(serve(args.host, args.port, args.reply_bytes), args.event_loop)


if __name__ == "__main__":
    main()
