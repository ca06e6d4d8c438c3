"""`vae client` against imported AutoencoderKLs: --scaled latents, Sample at a size, info's description.

The models are helpers.autoencoders.shapes_repo's (the `shapes_server` fixture): flux/1 (a shift and a
scale), grey/1 (any size, a prior) and wide/1 (a fixed 16x24, a prior). Each command's files are
compared with the Python client's answer to the same request.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.autoencoders import WIDE_SIZE
from helpers.servers import RunningServer
from PIL import Image

from client.clients import VaeClient
from vae_cli import main

SHIFT, SCALE = 0.1159, 0.3611  # flux's, helpers.autoencoders.CONFIGS


def client_cli(
    server: RunningServer, capsys: pytest.CaptureFixture[str], *args: str | Path
) -> tuple[int, str, str]:
    """`vae client ARGS... --target` the server, in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    status = main(["client", *map(str, args), "--target", server.target])
    out, err = capsys.readouterr()
    return status, out, err


def _pngs(folder: Path, sizes: list[tuple[int, int]], mode: str = "RGB") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (height, width) in enumerate(sizes):
        shape = (height, width, 3) if mode == "RGB" else (height, width)
        paths.append(folder / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(paths[-1])
    return paths


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_info_describes_the_model_for_a_person_and_json_keeps_every_field(
    shapes_server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = client_cli(shapes_server, capsys, "info", "--model", "flux")
    assert (status, err) == (0, "flux/1 answered\n")
    lines = dict(line.split("  ", 1) for line in out.splitlines())
    described = {name.strip(): value.strip() for name, value in lines.items()}
    assert described["images"] == "3 channels, any size, multiple of 8, values in [-1, 1]"
    assert described["latent"] == "[16, H/8, W/8]"
    assert described["scaling, shift"] == f"{SCALE}, {SHIFT}: --scaled latents are (z - {SHIFT}) * {SCALE}"
    assert (described["decoder output"], described["has_prior"], described["scorable"]) == (
        "image",
        "no",
        "no",
    )
    _, wide, _ = client_cli(shapes_server, capsys, "info", "--model", "wide")
    assert "1 channel, 16x24, values in [-1, 1]" in wide and "[2, 4, 6]" in wide
    assert "has_prior       yes" in wide
    _, raw, _ = client_cli(shapes_server, capsys, "info", "--model", "grey", "--json")
    fields = json.loads(raw)
    assert (fields["image_channels"], fields["image_size"], fields["image_multiple_of"]) == (1, [], 4)
    assert (fields["latent_channels"], fields["latent_downsampling"], fields["has_prior"]) == (2, 4, True)


def test_encode_and_decode_scaled_latents(
    shapes_server: RunningServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    png = _pngs(tmp_path / "in", [(16, 24)])[0]
    status, out, _ = client_cli(
        shapes_server, capsys, "encode", png, "--model", "flux", "--scaled", "--out", tmp_path / "z.npy"
    )
    assert (status, out) == (0, f"{tmp_path / 'z.npy'}\n")
    scaled = np.load(tmp_path / "z.npy")
    with VaeClient(shapes_server.target) as client:
        plain = client.encode(_pixels(png).transpose(2, 0, 1)[None], model="flux").mu
        pixels = client.decode(plain, output_dtype="uint8", model="flux").images
    assert scaled.shape == (1, 16, 2, 3)
    np.testing.assert_allclose(scaled, (plain - SHIFT) * SCALE, atol=1e-5)
    status, out, _ = client_cli(
        shapes_server, capsys, "decode", tmp_path / "z.npy", "--model", "flux", "--scaled", "--out", tmp_path
    )
    assert (status, out) == (0, f"{tmp_path / 'decoded_0000.png'}\n")
    # The scaled latents decode as the encoder's own: pixels within a rounding step.
    diff = np.abs(_pixels(tmp_path / "decoded_0000.png").astype(int) - pixels[0].transpose(1, 2, 0))
    assert diff.max() <= 1


def test_sample_at_a_size_for_a_model_of_any_size(
    shapes_server: RunningServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = ("sample", "--model", "grey", "--n", "2", "--seed", "3", "--out", tmp_path)
    status, out, _ = client_cli(shapes_server, capsys, *args, "--height", "8", "--width", "20")
    assert status == 0 and out.splitlines()[-1] == str(tmp_path / "latents.npy")
    assert _pixels(tmp_path / "sample_0001.png").shape == (8, 20)
    want = np.random.Generator(np.random.PCG64(3)).standard_normal((2, 2, 2, 5), np.float32)
    np.testing.assert_array_equal(np.load(tmp_path / "latents.npy"), want)
    # A fixed-size model samples its own size without them.
    status, _, _ = client_cli(
        shapes_server, capsys, "sample", "--model", "wide", "--n", "1", "--out", tmp_path
    )
    assert status == 0 and _pixels(tmp_path / "sample_0000.png").shape == WIDE_SIZE


def _one_line(result: tuple[int, str, str]) -> str:
    status, _, err = result
    assert status == 2 and err.count("\n") == 1, err
    return err


def test_misuse_is_one_line(
    shapes_server: RunningServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    half = _one_line(client_cli(shapes_server, capsys, "sample", "--model", "grey", "--height", "8"))
    assert half.startswith("vae client: error: --height 8 --width 0: pass both, positive")
    wrong = _one_line(
        client_cli(shapes_server, capsys, "sample", "--model", "wide", "--height", "24", "--width", "16")
    )
    assert "INVALID_ARGUMENT" in wrong and "takes [16, 24] images, not [24, 16]" in wrong
    no_prior = _one_line(
        client_cli(shapes_server, capsys, "sample", "--model", "flux", "--height", "16", "--width", "16")
    )
    assert "FAILED_PRECONDITION" in no_prior and "no prior" in no_prior


def test_a_scaled_store_is_decoded_as_scaled_and_never_mixed(
    shapes_server: RunningServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    paths = _pngs(tmp_path / "photos", [(16, 24), (8, 8), (16, 24)])
    store, flux = tmp_path / "store", ("--model", "flux")
    status, _, _ = client_cli(
        shapes_server, capsys, "encode-folder", tmp_path / "photos", *flux, "--scaled", "--out", store
    )
    assert status == 0 and json.loads((store / "store.json").read_text())["scaled"] is True
    index = [json.loads(line) for line in (store / "index.jsonl").read_text().splitlines()]
    rows = {row["path"]: np.load(store / row["shard"])[row["row"]] for row in index}
    with VaeClient(shapes_server.target) as client:
        plain = {
            p.name: client.encode(_pixels(p).transpose(2, 0, 1)[None], model="flux").mu[0] for p in paths
        }
        decoded = client.decode(plain["0.png"][None], output_dtype="uint8", model="flux").images[0]
    for name, mu in plain.items():
        np.testing.assert_allclose(rows[name], (mu - SHIFT) * SCALE, atol=1e-5)
    again = _one_line(
        client_cli(shapes_server, capsys, "encode-folder", tmp_path / "photos", *flux, "--out", store)
    )
    assert again == f"vae client: error: {store} holds scaled latents: pass --scaled, or another --out\n"
    status, _, _ = client_cli(shapes_server, capsys, "decode-store", store, "--out", tmp_path / "decoded")
    assert status == 0
    diff = np.abs(_pixels(tmp_path / "decoded" / "0.png").astype(int) - decoded.transpose(1, 2, 0))
    assert diff.max() <= 1
