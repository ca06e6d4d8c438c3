"""onnxruntime sessions and device selection: the only module that imports onnxruntime."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.config import DEVICE_PATTERN

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]  # symbolic axes are strings, e.g. "batch"
    dtype: str


@dataclass(frozen=True)
class Placement:
    """Where graphs run: an execution provider and, for CUDA, the device index."""

    provider: str
    device_id: int = 0


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def select_placement(device: str, available: Sequence[str]) -> Placement:
    """`auto` takes CUDA when onnxruntime offers it, else CPU (logged); `cuda[:N]` insists on CUDA."""
    if not DEVICE_PATTERN.fullmatch(device):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device == "cpu":
        return Placement(CPU)
    if device == "auto":
        if CUDA in available:
            return Placement(CUDA)
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
    return Placement(CUDA, int(index or 0))


def provider_list(placement: Placement) -> list[tuple[str, dict[str, Any]]]:
    """The providers handed to onnxruntime, with the options that matter for serving."""
    if placement.provider != CUDA:
        return [(CPU, {})]
    cuda_options = {
        "device_id": placement.device_id,
        # EXHAUSTIVE (the default) re-tunes convolutions for every new batch shape: seconds of stall
        # on the first request of each size. HEURISTIC picks at once.
        "cudnn_conv_algo_search": "HEURISTIC",
        # Grow the arena by what is asked, not by powers of two: a few batch sizes otherwise
        # reserve several times the memory they use.
        "arena_extend_strategy": "kSameAsRequested",
    }
    # CPU stays listed so nodes CUDA lacks kernels for still run.
    return [(CUDA, cuda_options), (CPU, {})]


def session_options(*, intra_op_threads: int, inter_op_threads: int, spinning: bool) -> ort.SessionOptions:
    options = ort.SessionOptions()
    # onnxruntime's default pool size follows the host's cores, not the container's quota.
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    spin = "1" if spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return options


class Graph:
    """One ONNX graph loaded in an onnxruntime session."""

    def __init__(
        self,
        path: Path,
        *,
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        spinning: bool = False,
        placement: Placement = Placement(CPU),
    ) -> None:
        options = session_options(
            intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads, spinning=spinning
        )
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=provider_list(placement))
        # onnxruntime falls back to CPU when CUDA cannot start; report what actually runs.
        self.provider: str = self.session.get_providers()[0]
        if placement.provider != self.provider:
            log.warning(
                "%s: asked for %s, onnxruntime runs it on %s", path, placement.provider, self.provider
            )
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.inputs = tuple(_spec(arg) for arg in self.session.get_inputs())
        self.outputs = tuple(_spec(arg) for arg in self.session.get_outputs())

    def run(
        self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Outputs by name: all of them, or only `output_names` (the others are not copied back)."""
        names = list(output_names) if output_names is not None else [spec.name for spec in self.outputs]
        if self.provider == CUDA:
            return dict(zip(names, self._run_bound(feeds, names), strict=True))
        return dict(zip(names, self.session.run(names, feeds), strict=True))

    def _run_bound(self, feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        # IO binding copies each input to the device once and only the wanted outputs back.
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        outputs: list[np.ndarray] = binding.copy_outputs_to_cpu()
        return outputs


def _spec(arg: ort.NodeArg) -> TensorSpec:
    shape = tuple(dim if isinstance(dim, int) else str(dim) for dim in arg.shape)
    return TensorSpec(arg.name, shape, arg.type.removeprefix("tensor(").removesuffix(")"))
