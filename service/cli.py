"""`vae serve` and `vae health`, and the TLS flags they share with `vae client` (service/client_cli.py)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.config import ServiceConfig, add_flags

if TYPE_CHECKING:
    import grpc


def _serve(args: argparse.Namespace) -> int:
    import logging

    from service import event_loop
    from service.server import create_server

    config = ServiceConfig.load(vars(args), os.environ)
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    if config.workers > 1:
        from service.workers import serve_workers

        return serve_workers(config)

    async def run() -> None:
        server, _ = create_server(config)
        await server.serve()

    event_loop.run(run(), config.event_loop)
    return 0


def _health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    credentials = tls_credentials(args)
    channel = (
        grpc.secure_channel(args.target, credentials) if credentials else grpc.insecure_channel(args.target)
    )
    with channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            print(f"{args.target}: {exc.code().name}: {exc.details()}")
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{args.target}: {status}")
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


def add_tls_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls", action="store_true", help="TLS, trusting the system's CA certificates")
    parser.add_argument("--tls-ca", type=Path, help="PEM CA certificates to trust instead (implies --tls)")
    parser.add_argument(
        "--tls-cert", type=Path, help="PEM client certificate, for mutual TLS (implies --tls)"
    )
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")


def tls_credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """TLS credentials from --tls/--tls-ca/--tls-cert/--tls-key; None for plaintext."""
    import grpc

    if not (args.tls or args.tls_ca or args.tls_cert):
        return None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    return grpc.ssl_channel_credentials(
        root_certificates=args.tls_ca.read_bytes() if args.tls_ca else None,
        private_key=args.tls_key.read_bytes() if args.tls_key else None,
        certificate_chain=args.tls_cert.read_bytes() if args.tls_cert else None,
    )


def register(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve a model repository over gRPC",
        description="Precedence: flags, then VAE_* environment variables, then defaults.",
    )
    add_flags(serve)
    serve.set_defaults(handler=_serve)

    health = commands.add_parser("health", help="exit 0 iff the server reports SERVING")
    health.add_argument("--target", default="localhost:50051", help="HOST:PORT")
    health.add_argument("--timeout", type=float, default=2.0, help="seconds")
    health.add_argument("--service", default="", help="service name ('' = the whole server)")
    add_tls_flags(health)
    health.set_defaults(handler=_health)
