"""`vae serve` and `vae health`, and the TLS and token flags of the clients (`vae client`, `vae bench`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.channel import ClientTls
from service.config import ServiceConfig, add_flags, read_file, read_token

if TYPE_CHECKING:
    import grpc


def _serve(args: argparse.Namespace) -> int:
    from service import event_loop, logs
    from service.server import create_server

    config = ServiceConfig.load(vars(args), os.environ)
    logs.configure(config)
    from service.workers import reserve_port, serve_workers

    # A taken port is refused here, in one line, before any model loads or worker starts.
    for name in ("port", "metrics_port"):
        reserve_port(config.host, getattr(config, name), name).close()
    if config.workers > 1:
        return serve_workers(config)

    async def run() -> None:
        server, _ = create_server(config)
        await server.serve()

    event_loop.run(run(), config.event_loop)
    return 0


def _health(args: argparse.Namespace) -> int:
    quiet_grpc()
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
            print(f"{args.target}: {rpc_error_line(exc, tls=credentials is not None)}")
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


def add_token_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--token-file", type=Path, help="file holding the server's bearer token")


def client_token(args: argparse.Namespace) -> str | None:
    """The bearer token in --token-file; None when there is none."""
    return read_token(args.token_file) if args.token_file else None


def client_tls(args: argparse.Namespace) -> ClientTls | None:
    """TLS settings from --tls/--tls-ca/--tls-cert/--tls-key, files read; None for plaintext."""
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together: pass both for mutual TLS, or neither")
    if not (args.tls or args.tls_ca or args.tls_cert):
        return None

    def read(flag: str, path: Path | None) -> bytes | None:
        return None if path is None else read_file(path, flag)

    return ClientTls(
        read("--tls-ca", args.tls_ca), read("--tls-key", args.tls_key), read("--tls-cert", args.tls_cert)
    )


def tls_credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """grpc credentials for client_tls(args); None for plaintext."""
    tls = client_tls(args)
    return None if tls is None else tls.credentials()


def quiet_grpc() -> None:
    """Let grpc log errors only; takes effect when called before grpc is first imported.

    Otherwise a failed TLS handshake prints a log line of grpc's own above the command's one-line error.
    """
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


# What grpc's UNAVAILABLE details say when client and server disagree about TLS, and the fix:
# (the client uses TLS, a sign in the details, the hint).
_TLS_HINTS = (
    (False, "Socket closed", "the server may require TLS: pass --tls, or --tls-ca with its CA"),
    (True, "Socket closed", "the server may require a client certificate: pass --tls-cert and --tls-key"),
    (True, "WRONG_VERSION_NUMBER", "the server may not use TLS: drop --tls, --tls-ca, --tls-cert, --tls-key"),
    (
        True,
        "CERTIFICATE_VERIFY_FAILED",
        "this client does not trust the server's certificate: pass --tls-ca with the CA that signed it",
    ),
)


def rpc_error_line(exc: grpc.RpcError, *, tls: bool) -> str:
    """A failed call in one line: its status, a hint when it looks like a TLS mismatch, grpc's details."""
    code, details = exc.code().name, exc.details() or ""
    for with_tls, sign, hint in _TLS_HINTS:
        if code == "UNAVAILABLE" and tls == with_tls and sign in details:
            return f"{code}: {hint} ({details})"
    return f"{code}: {details}"


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
