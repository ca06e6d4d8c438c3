"""`vae serve`, `vae client ...` and `vae health` as a user runs them: real processes, real files."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from helpers import vae
from helpers.servers import RunningServer
from PIL import Image

from client.clients import VaeClient

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_client_sample_writes_valid_pngs_of_the_served_images(server: RunningServer, tmp_path: Path) -> None:
    out = tmp_path / "samples"
    printed = vae(
        "client", "sample", "--target", server.target, "--n", "3", "--seed", "5", "--out", out
    ).stdout
    pngs = sorted(out.glob("sample_*.png"))
    assert [p.name for p in pngs] == ["sample_0000.png", "sample_0001.png", "sample_0002.png"]
    assert all(str(p) in printed for p in pngs)
    with VaeClient(server.target) as client:
        expected = client.sample(3, seed=5, output_dtype="uint8")
    for png, pixels in zip(pngs, expected.images, strict=True):
        assert png.read_bytes().startswith(PNG_SIGNATURE)
        with Image.open(png) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "L", (28, 28))
            np.testing.assert_array_equal(np.asarray(image), pixels[0])
    np.testing.assert_array_equal(np.load(out / "latents.npy"), expected.latents)


def test_client_encode_decode_reconstruct_interpolate(server: RunningServer, tmp_path: Path) -> None:
    target = ["--target", server.target]
    vae("client", "sample", *target, "--n", "2", "--seed", "8", "--out", tmp_path / "s")
    pngs = sorted((tmp_path / "s").glob("*.png"))
    pixels = np.stack([read_png(p)[None] for p in pngs])

    vae("client", "encode", *target, *pngs, "--samples", "2", "--seed", "1", "--out", tmp_path / "e")
    with VaeClient(server.target) as client:
        encoded = client.encode(pixels, samples=2, seed=1)
        np.testing.assert_array_equal(np.load(tmp_path / "e" / "mu.npy"), encoded.mu)
        np.testing.assert_array_equal(np.load(tmp_path / "e" / "logvar.npy"), encoded.logvar)
        assert np.load(tmp_path / "e" / "z.npy").shape == (2, 2, 8)

        vae("client", "decode", *target, tmp_path / "e" / "mu.npy", "--npy", "--out", tmp_path / "d")
        np.testing.assert_array_equal(
            np.load(tmp_path / "d" / "decoded.npy"), client.decode(encoded.mu).images
        )

        vae("client", "reconstruct", *target, *pngs, "--out", tmp_path / "r")
        assert len(list((tmp_path / "r").glob("reconstruction_*.png"))) == 2
        np.testing.assert_allclose(
            np.load(tmp_path / "r" / "error.npy"), client.reconstruct(pixels).error, rtol=1e-6
        )

        steps = ["--steps", "4", "--method", "spherical"]
        vae("client", "interpolate", *target, pngs[0], pngs[1], *steps, "--out", tmp_path / "i")
        assert len(list((tmp_path / "i").glob("step_*.png"))) == 4
        path = client.interpolate(pixels[0], pixels[1], steps=4, method="spherical").latents
        np.testing.assert_allclose(np.load(tmp_path / "i" / "latents.npy"), path, atol=1e-6)


def test_client_errors_name_the_status(server: RunningServer, tmp_path: Path) -> None:
    result = vae(
        "client", "sample", "--target", server.target, "--model", "nope", "--out", tmp_path, check=False
    )
    assert result.returncode == 2
    assert "NOT_FOUND: unknown model 'nope'" in result.stderr


def test_health_exits_zero_only_when_serving(server: RunningServer) -> None:
    serving = vae("health", "--target", server.target)
    assert serving.stdout.strip() == f"{server.target}: SERVING"
    down = vae("health", "--target", "127.0.0.1:1", "--timeout", "1", check=False)
    assert down.returncode == 1 and "UNAVAILABLE" in down.stdout


def test_serve_refuses_a_missing_repository(tmp_path: Path) -> None:
    started = time.monotonic()
    result = vae("serve", "--repo", tmp_path / "none", "--port", "0", "--metrics-port", "0", check=False)
    assert result.returncode == 2
    assert f"model repository {tmp_path / 'none'} does not exist" in result.stderr
    assert time.monotonic() - started < 60
