"""gRPC channel settings: the message size limit both ends default to, the clients' call policy and TLS.

Needs no grpc itself, so the server's configuration can take its default from here cheaply. The PEM
files and bearer tokens both ends read are read here too (read_file, read_token).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc

# Both ends' default (--max-message-bytes): gRPC's own 4 MiB would refuse a request of 4096 float32
# MNIST images (--max-request-items; about 12 MiB).
DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20

# The channel's service config (gRFC A6 retries; docs/reliability.md and docs/api.md explain it).
# round_robin: calls go to every address the target resolves to (ipv4:HOST:PORT,HOST:PORT, or a
# headless Service's pods), skipping those that are down. The retry policy sends a call that ended
# UNAVAILABLE again, after a backoff, up to 5 attempts in all: UNAVAILABLE means it never ran (a
# draining server refused it, a replica or connection went away, a balancer found no backend),
# and every RPC here computes a pure function of its request, so a second attempt is safe.
# RESOURCE_EXHAUSTED (back off: the server is full) and DEADLINE_EXCEEDED (time is up) are final.
# gRPC buffers at most 256 KiB of a request for retrying; larger requests are not retried.
SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [{"service": "vae.v1.VaeService"}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.05s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}


def channel_options(max_message_bytes: int) -> list[tuple[str, int | str]]:
    """A client channel's options: the message limit both ways, SERVICE_CONFIG and retries on."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
        ("grpc.enable_retries", 1),
    ]


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    """The bearer token every call sends, if any (service/security.py checks it)."""
    return (("authorization", f"Bearer {token}"),) if token else None


def read_token(path: Path) -> str:
    """A bearer token kept in a file (not a flag: flags show in `ps`), without surrounding whitespace."""
    token = path.read_text().strip()
    if not token:
        raise ValueError(f"token file {path} is empty; put the token in it")
    return token


def read_file(path: Path, setting: str) -> bytes:
    """The bytes of the file a setting names; an unreadable one is a ValueError naming both."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(
            f"{setting} {path}: {exc.strerror or exc}; check the path and its permissions"
        ) from None


@dataclass(frozen=True)
class ClientTls:
    """A client's TLS settings as PEM bytes: None trusts the system's CAs, or sends no client certificate.

    Bytes rather than grpc credentials, so that they can be handed to other processes (`vae bench`).
    """

    root_certificates: bytes | None = None
    private_key: bytes | None = None
    certificate_chain: bytes | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        import grpc

        return grpc.ssl_channel_credentials(self.root_certificates, self.private_key, self.certificate_chain)
