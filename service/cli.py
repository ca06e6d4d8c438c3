"""`vae serve`, and `vae health`, the check the serving images run (no client/ needed)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from service.config import ServiceConfig, add_flags
from wire.caller_flags import add_tls_flags, client_tls, quiet_grpc, rpc_error_line


def _serve(args: argparse.Namespace) -> int:
    from repository.placement import select_placement
    from repository.runtime import available_providers
    from service import event_loop, logs, security
    from service.server import create_server
    from service.sizing import sized

    config = ServiceConfig.load(vars(args), os.environ)
    logs.configure(config)
    from service.workers import reserve_port, serve_workers

    # A taken port or an unreadable file is refused here, in one line, before any log line, model
    # load or worker start.
    for name in ("port", "metrics_port"):
        reserve_port(config.host, getattr(config, name), name).close()
    security.check_files(config)
    # The device decides what auto means (workers, batch limit): chosen once, before any worker starts.
    placement = select_placement(config.device, available_providers(), tf32=config.cuda_tf32)
    config = sized(config, placement.provider)
    if config.supervised:
        return serve_workers(config)

    async def run() -> None:
        server, _ = create_server(config, placement=placement)
        await server.serve()

    event_loop.run(run(), config.event_loop)
    return 0


def _health(args: argparse.Namespace) -> int:
    quiet_grpc()
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    tls = client_tls(args)
    credentials = None if tls is None else tls.credentials()
    channel = (
        grpc.secure_channel(args.target, credentials) if credentials else grpc.insecure_channel(args.target)
    )
    with channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            print(f"{args.target}: {rpc_error_line(exc, tls=credentials is not None)}")
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{args.target}: {status}")
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


def register(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve a model repository over gRPC",
        description="Precedence: flags, then VAE_* environment variables, then defaults.",
        epilog=(
            "examples:\n"
            "  vae serve --repo models --model mnist --port 50051 --metrics-port 8000\n"
            "  VAE_PORT=6000 vae serve --workers 2"
        ),
    )
    add_flags(serve)
    serve.set_defaults(handler=_serve)

    health = commands.add_parser(
        "health",
        help="exit 0 iff the server reports SERVING",
        epilog="example:\n  vae health --target localhost:50051 --timeout 5",
    )
    health.add_argument("--target", default="localhost:50051", help="HOST:PORT")
    health.add_argument("--timeout", type=float, default=2.0, help="seconds")
    health.add_argument("--service", default="", help="service name ('' = the whole server)")
    add_tls_flags(health)
    health.set_defaults(handler=_health)
