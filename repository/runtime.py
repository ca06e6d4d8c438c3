"""onnxruntime sessions: the one module that imports onnxruntime."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from repository.placement import CUDA, ON_CPU, Placement, provider_list

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]  # symbolic axes are strings, e.g. "batch"
    dtype: str


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


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
        placement: Placement = ON_CPU,
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
