"""Graph's data paths, description and log settings; the CUDA provider's precision options (on CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from repository.placement import CPU, CUDA, Placement, cuda_options, provider_list, select_placement
from repository.runtime import DATA_PATHS, DEFAULT_DATA_PATH, DataPath, Graph, session_options

VERSION = Path(__file__).resolve().parents[2] / "models" / "mnist" / "2"


def test_cuda_runs_exact_float32_unless_tf32_is_asked() -> None:
    assert cuda_options(Placement(CUDA))["use_tf32"] == 0
    assert cuda_options(Placement(CUDA, 1, tf32=True))["use_tf32"] == 1
    assert provider_list(Placement(CUDA, tf32=True))[0] == (CUDA, cuda_options(Placement(CUDA, tf32=True)))


@pytest.mark.parametrize("device", ["auto", "cuda", "cuda:1"])
def test_select_placement_passes_tf32_to_cuda(device: str) -> None:
    placement = select_placement(device, [CUDA, CPU], tf32=True)
    assert placement.provider == CUDA and placement.tf32
    assert not select_placement(device, [CUDA, CPU]).tf32


def test_a_cpu_placement_has_no_tf32_to_ask_for() -> None:
    assert select_placement("cpu", [CUDA, CPU], tf32=True) == Placement(CPU)
    assert select_placement("auto", [CPU], tf32=True) == Placement(CPU)


def test_sessions_keep_their_own_warnings() -> None:
    options = session_options(intra_op_threads=1, inter_op_threads=1, spinning=False)
    assert options.log_severity_level == 2


@pytest.fixture(scope="module")
def decoder() -> Graph:
    return Graph(VERSION / "decoder.onnx")


def test_plain_is_the_default_data_path(decoder: Graph) -> None:
    assert DEFAULT_DATA_PATH == "plain" and decoder.data_path == "plain"


@pytest.mark.parametrize("path", DATA_PATHS)
@pytest.mark.parametrize("outputs", [None, ("probs",)])
def test_every_data_path_gives_the_plain_runs_outputs(
    decoder: Graph, path: DataPath, outputs: tuple[str, ...] | None
) -> None:
    z = np.random.default_rng(0).standard_normal((5, 32), dtype=np.float32)
    names = list(outputs or ("probs", "logits"))
    expected = dict(zip(names, decoder.session.run(names, {"z": z}), strict=True))
    graph = Graph(VERSION / "decoder.onnx", data_path=path)
    got = graph.run({"z": z}, outputs)
    assert list(got) == names
    for name in names:
        np.testing.assert_array_equal(got[name], expected[name])


def test_a_device_resident_run_runs_without_copies_back(decoder: Graph) -> None:
    run = decoder.device_resident({"z": np.zeros((3, 32), np.float32)}, ["probs"])
    run()
    run()


def test_describe_names_the_provider_and_precision(decoder: Graph) -> None:
    assert decoder.describe() == f"decoder.onnx on {CPU}, float32"
    assert not decoder.tf32 and decoder.device_id == 0
