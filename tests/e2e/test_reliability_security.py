"""Security: TLS, mutual TLS and bearer tokens by configuration; model files checked before they load."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers.certs import Authority
from helpers.servers import SERVING, ServerProcess, serving, spawn_server

from client.clients import VaeClient

TOKEN = "s3cret-token-for-tests"
LATENTS = np.zeros((2, 8), np.float32)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Authority]:
    """The CA the server trusts, and a rogue one nobody trusts."""
    root = tmp_path_factory.mktemp("pki")
    return {"ca": Authority(root / "ca"), "rogue": Authority(root / "rogue", "rogue-ca")}


def _tls(authority: Authority, client: str | None = None) -> grpc.ChannelCredentials:
    """Credentials trusting `authority`, presenting a client certificate it issues when `client` names one."""
    identity = authority.issue(client, server=False) if client else None
    return grpc.ssl_channel_credentials(
        root_certificates=authority.ca.cert,
        private_key=identity.key if identity else None,
        certificate_chain=identity.cert if identity else None,
    )


def _decode_code(target: str, credentials: grpc.ChannelCredentials | None, token: str | None = None) -> str:
    """The status of one Decode: OK, or the code it failed with."""
    with VaeClient(target, timeout=10, credentials=credentials, token=token) as client:
        try:
            client.decode(LATENTS)
        except grpc.RpcError as error:
            return f"{error.code().name}: {error.details()}"
    return "OK"


@pytest.fixture(scope="module")
def tls_server(
    tiny_model_repo: Path, pki: dict[str, Authority], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """TLS with a bearer token."""
    server_pem = pki["ca"].issue("server", server=True)
    token_file = tmp_path_factory.mktemp("secrets") / "token"
    token_file.write_text(TOKEN + "\n")
    args = ["--tls-cert", str(server_pem.cert_path), "--tls-key", str(server_pem.key_path)]
    with serving(
        tiny_model_repo, *args, "--auth-token-file", str(token_file), credentials=_tls(pki["ca"])
    ) as server:
        yield server


def test_tls_server_refuses_plaintext_and_untrusted_certificates(
    tls_server: ServerProcess, pki: dict[str, Authority]
) -> None:
    assert _decode_code(tls_server.target, None, TOKEN).startswith("UNAVAILABLE")
    # The client does not trust who signed the server's certificate: no handshake.
    assert _decode_code(tls_server.target, _tls(pki["rogue"]), TOKEN).startswith("UNAVAILABLE")
    assert _decode_code(tls_server.target, _tls(pki["ca"]), TOKEN) == "OK"


def test_bearer_token_is_required_but_health_stays_open(
    tls_server: ServerProcess, pki: dict[str, Authority]
) -> None:
    credentials = _tls(pki["ca"])
    before = tls_server.metric("vae_requests_total", method="Decode", code="UNAUTHENTICATED")
    missing = _decode_code(tls_server.target, credentials)
    wrong = _decode_code(tls_server.target, credentials, "not-" + TOKEN)
    assert (
        missing
        == wrong
        == "UNAUTHENTICATED: missing or wrong bearer token: send the metadata 'authorization: Bearer <token>'"
    )
    assert tls_server.metric("vae_requests_total", method="Decode", code="UNAUTHENTICATED") == before + 2
    with grpc.secure_channel(tls_server.target, credentials) as channel:
        assert tls_server.health(channel) == SERVING  # no token needed
    # `vae health`, as a Docker HEALTHCHECK runs it, speaks TLS too.
    ca = pki["ca"].ca.cert_path
    checked = subprocess.run(
        [sys.executable, "-m", "vae_cli", "health", "--target", tls_server.target, "--tls-ca", str(ca)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == f"{tls_server.target}: SERVING"


def test_mutual_tls_requires_a_client_certificate_from_the_client_ca(
    tiny_model_repo: Path, pki: dict[str, Authority]
) -> None:
    server_pem = pki["ca"].issue("mtls-server", server=True)
    args = [
        "--tls-cert", str(server_pem.cert_path), "--tls-key", str(server_pem.key_path),
        "--tls-client-ca", str(pki["ca"].ca.cert_path),
    ]  # fmt: skip
    trusted = _tls(pki["ca"], "good-client")
    with serving(tiny_model_repo, *args, credentials=trusted) as server:
        no_certificate = _decode_code(server.target, _tls(pki["ca"]))
        # A certificate, but from a CA the server does not accept clients from.
        rogue = pki["rogue"].issue("rogue-client", server=False)
        foreign = grpc.ssl_channel_credentials(pki["ca"].ca.cert, rogue.key, rogue.cert)
        foreign_certificate = _decode_code(server.target, foreign)
        accepted = _decode_code(server.target, trusted)
        with grpc.secure_channel(server.target, _tls(pki["ca"])) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=10)  # the handshake itself fails
    assert no_certificate.startswith("UNAVAILABLE")
    assert foreign_certificate.startswith("UNAVAILABLE")
    assert accepted == "OK"
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_model_file_that_does_not_match_its_manifest_is_never_served(
    tiny_model_repo: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_model_repo, repo)
    decoder = repo / "tiny" / "1" / "decoder.onnx"
    data = bytearray(decoder.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit: still a loadable graph, perhaps, but not the one exported
    decoder.write_bytes(bytes(data))
    server = spawn_server(repo)
    status = server.wait(timeout=120)
    assert status == 2, server.log_text()
    log = server.log_text()
    assert "model tiny version 1 refused" in log
    assert "decoder.onnx sha256 is" in log and "(file changed)" in log
    assert "no version of the default model 'tiny'" in log


def test_bad_tls_configuration_is_refused_with_the_fix(
    tiny_model_repo: Path, pki: dict[str, Authority]
) -> None:
    server_pem = pki["ca"].issue("half", server=True)
    server = spawn_server(tiny_model_repo, "--tls-cert", str(server_pem.cert_path))
    assert server.wait(timeout=120) == 2
    assert "--tls-cert (VAE_TLS_CERT) and --tls-key (VAE_TLS_KEY) go together" in server.log_text()
