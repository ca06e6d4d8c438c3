"""Where graphs run: device names, their validation, and the onnxruntime providers they map to.

Needs no onnxruntime itself, so configuration can check a device name without loading it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


@dataclass(frozen=True)
class Placement:
    """Where graphs run: an execution provider and, for CUDA, the device index and its precision."""

    provider: str
    device_id: int = 0
    # TF32 rounds the inputs of CUDA's matmuls and convolutions to a 10-bit mantissa: faster on large
    # batches, but ~1e-3 off the CPU's float32 where exact float32 is ~1e-6 (docs/gpu.md). Off unless asked.
    tf32: bool = False


ON_CPU = Placement(CPU)


def select_placement(device: str, available: Sequence[str], *, tf32: bool = False) -> Placement:
    """`auto` takes CUDA when onnxruntime offers it, else CPU (logged); `cuda[:N]` insists on CUDA.

    `tf32` asks CUDA for TF32 math; the CPU has none, so a CPU placement ignores it.
    """
    if not DEVICE_PATTERN.fullmatch(device):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device == "cpu":
        return Placement(CPU)
    if device == "auto":
        if CUDA in available:
            return Placement(CUDA, tf32=tf32)
        log.info(
            "device auto: onnxruntime offers no CUDA (providers: %s); running on CPU", ", ".join(available)
        )
        return Placement(CPU)
    if CUDA not in available:
        raise ValueError(
            f"device {device} needs onnxruntime's CUDAExecutionProvider, but this install offers only "
            f"{', '.join(available)}; install the gpu extra (onnxruntime-gpu) or use --device cpu"
        )
    _, _, index = device.partition(":")
    return Placement(CUDA, int(index or 0), tf32)


def provider_list(placement: Placement) -> list[tuple[str, dict[str, Any]]]:
    """The providers handed to onnxruntime, with the options that matter for serving."""
    if placement.provider != CUDA:
        return [(CPU, {})]
    # CPU stays listed so nodes CUDA lacks kernels for still run.
    return [(CUDA, cuda_options(placement)), (CPU, {})]


def cuda_options(placement: Placement) -> dict[str, Any]:
    """The CUDA provider's options: every one the service sets, in this one place."""
    return {
        "device_id": placement.device_id,
        # The provider's default is TF32 on (onnxruntime#19288): exact float32 unless asked.
        "use_tf32": int(placement.tf32),
        # EXHAUSTIVE (the default) re-tunes convolutions for every new batch shape: seconds of stall
        # on the first request of each size. HEURISTIC picks at once.
        "cudnn_conv_algo_search": "HEURISTIC",
        # Grow the arena by what is asked, not by powers of two: a few batch sizes otherwise
        # reserve several times the memory they use.
        "arena_extend_strategy": "kSameAsRequested",
    }
