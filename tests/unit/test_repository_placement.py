"""Device selection (CPU and CUDA choices, tested on CPU) and onnxruntime session settings."""

from __future__ import annotations

import logging

import pytest

from repository.placement import CPU, CUDA, Placement, provider_list, select_placement
from repository.runtime import session_options

WITH_CUDA = ["TensorrtExecutionProvider", CUDA, CPU]
CPU_ONLY = [CPU]


def test_auto_takes_cuda_when_onnxruntime_offers_it() -> None:
    assert select_placement("auto", WITH_CUDA) == Placement(CUDA, 0)


def test_auto_falls_back_to_cpu_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="repository.placement"):
        assert select_placement("auto", CPU_ONLY) == Placement(CPU)
    assert "onnxruntime offers no CUDA" in caplog.text and "running on CPU" in caplog.text


def test_cpu_is_cpu_even_when_cuda_is_offered() -> None:
    assert select_placement("cpu", WITH_CUDA) == Placement(CPU)


@pytest.mark.parametrize(("device", "index"), [("cuda", 0), ("cuda:0", 0), ("cuda:3", 3)])
def test_cuda_picks_the_device_index(device: str, index: int) -> None:
    assert select_placement(device, WITH_CUDA) == Placement(CUDA, index)


def test_cuda_without_a_cuda_build_is_an_error_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"install the gpu extra \(onnxruntime-gpu\) or use --device cpu"):
        select_placement("cuda:1", CPU_ONLY)


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CPU", ""])
def test_unknown_devices_are_rejected(device: str) -> None:
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N"):
        select_placement(device, WITH_CUDA)


def test_cuda_providers_use_heuristic_conv_search_and_keep_cpu_as_fallback() -> None:
    providers = provider_list(Placement(CUDA, 2))
    assert [name for name, _ in providers] == [CUDA, CPU]
    options = providers[0][1]
    assert options["device_id"] == 2
    assert options["cudnn_conv_algo_search"] == "HEURISTIC"
    assert options["arena_extend_strategy"] == "kSameAsRequested"
    assert provider_list(Placement(CPU)) == [(CPU, {})]


def test_session_options_set_threads_and_spinning_explicitly() -> None:
    options = session_options(intra_op_threads=3, inter_op_threads=2, spinning=False)
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 2)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    spinning = session_options(intra_op_threads=1, inter_op_threads=1, spinning=True)
    assert spinning.get_session_config_entry("session.intra_op.allow_spinning") == "1"
