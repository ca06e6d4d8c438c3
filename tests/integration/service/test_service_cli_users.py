"""What users of `vae client`, `vae serve` and `vae bench` see: the model-listing and streaming commands,
which version answered, and one-line errors with the fix (taken ports, TLS on one side only)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import vae
from helpers.certs import Authority
from helpers.servers import RunningServer, config_for
from PIL import Image

from client.clients import VaeClient
from service.server import create_server


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """`vae ARGS...`, whatever its exit status: these tests look at the failures."""
    return vae(*args, check=False)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr  # no traceback, no log lines
    return result.stderr


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(
    tiny_model_repo: Path,
    authority: Authority,
    start_server: Callable[..., RunningServer],
    tmp_path_factory: pytest.TempPathFactory,
) -> RunningServer:
    """tiny/1 over TLS, every call needing the token in token.txt beside the server certificate."""
    pem = authority.issue("server", server=True)
    token_file = tmp_path_factory.mktemp("token") / "token.txt"
    token_file.write_text("s3cret\n")
    return start_server(
        tiny_model_repo,
        tls_cert=str(pem.cert_path),
        tls_key=str(pem.key_path),
        auth_token_file=str(token_file),
    )


def test_client_list_models_and_info(server: RunningServer) -> None:
    listed = cli("client", "list-models", "--target", server.target)
    assert listed.returncode == 0, listed.stderr
    assert (
        listed.stdout == "tiny/1  (default)  latent_dim 8, images 1x28x28, bernoulli, CPUExecutionProvider\n"
    )

    info = cli("client", "info", "--target", server.target, "--model", "tiny", "--version", "1", "--json")
    assert info.returncode == 0, info.stderr
    assert info.stderr == "tiny/1 answered\n"
    described = json.loads(info.stdout)
    assert (described["name"], described["version"], described["image_shape"]) == ("tiny", 1, [1, 28, 28])


def test_client_sample_stream_writes_the_seeded_samples(server: RunningServer, tmp_path: Path) -> None:
    result = cli(
        "client", "sample-stream", "--target", server.target, "--n", "5", "--seed", "3", "--out", tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "tiny/1 answered\n"
    pngs = [tmp_path / f"sample_{i:04d}.png" for i in range(5)]
    assert result.stdout.splitlines() == [*map(str, pngs), str(tmp_path / "latents.npy")]
    with VaeClient(server.target) as client:
        expected = client.sample(5, seed=3, output_dtype="uint8")
    for png, pixels in zip(pngs, expected.images, strict=True):
        with Image.open(png) as image:
            np.testing.assert_array_equal(np.asarray(image), pixels[0])
    np.testing.assert_array_equal(np.load(tmp_path / "latents.npy"), expected.latents)


def test_every_client_command_says_which_version_answered(server: RunningServer, tmp_path: Path) -> None:
    target = ["--target", server.target]
    assert cli("client", "sample", *target, "--n", "2", "--out", tmp_path).stderr == "tiny/1 answered\n"
    png = tmp_path / "sample_0000.png"
    assert cli("client", "encode", *target, png, "--out", tmp_path).stderr == "tiny/1 answered\n"
    assert (
        cli("client", "decode", *target, tmp_path / "mu.npy", "--out", tmp_path).stderr == "tiny/1 answered\n"
    )
    assert cli("client", "reconstruct", *target, png, "--out", tmp_path).stderr == "tiny/1 answered\n"
    interpolated = cli("client", "interpolate", *target, png, tmp_path / "sample_0001.png", "--out", tmp_path)
    assert interpolated.stderr == "tiny/1 answered\n"


def test_a_file_that_is_no_image_and_an_out_that_is_a_file_are_refused_before_any_call(
    server: RunningServer, taken_port: int, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.png"
    notes.write_text("not a picture")
    taken = tmp_path / "taken.png"
    taken.write_bytes(b"")
    # At the second target a program listens but never answers: any call there would time out.
    for target in (server.target, f"127.0.0.1:{taken_port}"):
        connect = ["--target", target, "--timeout", "5"]
        score = one_line_error(cli("client", "score", *connect, notes))
        assert score == f"vae client: error: {notes}: not an image file; pass PNG files or .npy arrays\n"
        sample = one_line_error(cli("client", "sample", *connect, "--n", "2", "--out", taken))
        assert sample.endswith(f"--out {taken}: {taken} is a file; name a directory to write into\n")
    assert taken.read_bytes() == b""


def test_plaintext_client_of_a_tls_server_is_told_to_use_tls(
    tls_server: RunningServer, tmp_path: Path
) -> None:
    err = one_line_error(cli("client", "sample", "--target", tls_server.target, "--out", tmp_path))
    assert err.startswith(
        "vae client: error: UNAVAILABLE: the server may require TLS: pass --tls, or --tls-ca"
    )
    health = cli("health", "--target", tls_server.target)
    assert health.returncode == 1 and "the server may require TLS" in health.stdout


def test_tls_client_of_a_plaintext_server_is_told_to_drop_tls(
    server: RunningServer, authority: Authority, tmp_path: Path
) -> None:
    tls = ["--tls-ca", authority.ca.cert_path]
    err = one_line_error(cli("client", "sample", "--target", server.target, *tls, "--out", tmp_path))
    assert err.startswith("vae client: error: UNAVAILABLE: the server may not use TLS: drop --tls")


def test_bench_speaks_tls_with_a_token(
    tls_server: RunningServer, authority: Authority, tmp_path: Path
) -> None:
    token_file = tmp_path / "token.txt"
    token_file.write_text("s3cret")
    load = ["--duration", "0.5", "--warmup", "0", "--concurrency", "2", "--json"]
    result = cli(
        "bench", "--target", tls_server.target, "--tls-ca", authority.ca.cert_path,
        "--token-file", token_file, *load,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["requests"] > 0 and report["errors"] == {}, report
    refused = cli("bench", "--target", tls_server.target, "--tls-ca", authority.ca.cert_path, *load)
    assert "UNAUTHENTICATED" in one_line_error(refused)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port some other program listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize(
    ("flag", "variable"), [("--port", "VAE_PORT"), ("--metrics-port", "VAE_METRICS_PORT")]
)
def test_serve_on_a_taken_port_names_the_flag(
    tiny_model_repo: Path, taken_port: int, flag: str, variable: str, workers: str
) -> None:
    ports = {"--port": "0", "--metrics-port": "0", flag: str(taken_port)}
    result = cli(
        "serve", "--repo", tiny_model_repo, "--model", "tiny", "--host", "127.0.0.1", "--workers", workers,
        *(item for pair in ports.items() for item in pair),
    )  # fmt: skip
    err = one_line_error(result)
    assert (
        f"cannot listen on 127.0.0.1:{taken_port} (Address already in use); pick another {flag} ({variable})"
        in err
    )


def test_serve_names_an_unreadable_tls_file_by_its_flag(
    tiny_model_repo: Path, authority: Authority, tmp_path: Path
) -> None:
    pem = authority.issue("no-key", server=True)
    missing = tmp_path / "missing.key"
    result = cli(
        "serve", "--repo", tiny_model_repo, "--model", "tiny", "--port", "0", "--metrics-port", "0",
        "--tls-cert", pem.cert_path, "--tls-key", missing,
    )  # fmt: skip
    assert f"--tls-key (VAE_TLS_KEY) {missing}: No such file or directory" in one_line_error(result)


def test_a_server_in_process_on_a_taken_port_names_the_setting(
    tiny_model_repo: Path, taken_port: int
) -> None:
    # What `vae serve` checks up front, the server itself refuses too (a port taken in between).
    async def start(**ports: int) -> None:
        server, _ = create_server(config_for(tiny_model_repo, **ports))
        try:
            await server.start()
        finally:
            await server.stop(grace=0)

    with pytest.raises(ValueError, match=r"\(the port may be in use\); pick another --port \(VAE_PORT\)"):
        asyncio.run(start(port=taken_port))
    with pytest.raises(ValueError, match=r"pick another --metrics-port \(VAE_METRICS_PORT\), or 0"):
        asyncio.run(start(metrics_port=taken_port))
