"""The flags of the commands that call a server (`vae client`, `vae bench`, `vae health`), and their errors.

Here, below the server and the clients, because `vae health` is one of them and the serving images,
which hold no client/, run it as their HEALTHCHECK.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from wire.channel import ClientTls, read_file, read_token

if TYPE_CHECKING:
    import grpc


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
