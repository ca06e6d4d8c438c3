"""onnxruntime sessions: the one module that imports onnxruntime."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import onnxruntime as ort

from repository.placement import CUDA, ON_CPU, Placement, provider_list

log = logging.getLogger(__name__)

# How Graph.run moves host arrays through a session (docs/gpu.md has each one's measured speed):
# plain: session.run, which copies inputs to the device and outputs back itself;
# bind-host: IO binding with the outputs bound to host memory;
# bind-device: IO binding with the outputs left on the device by the run, then copied back.
DataPath = Literal["plain", "bind-host", "bind-device"]
DATA_PATHS: tuple[DataPath, ...] = get_args(DataPath)
# On an H200 the bindings ran at 0.3-0.98x plain from batch 16 up (issue 29), and on a 2-core CPU at
# 0.97x at batch 1 and 1.0x above: IO binding pays only where inputs or outputs stay on the device.
DEFAULT_DATA_PATH: DataPath = "plain"

# onnxruntime's names of the floating element types, as numpy names them.
_FLOATS = {"float": "float32", "double": "float64", "float16": "float16", "bfloat16": "bfloat16"}
# onnxruntime's severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal.
_WARNING, _ERROR = 2, 3


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]  # symbolic axes are strings, e.g. "batch"
    dtype: str


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def onnxruntime_version() -> str:
    return str(ort.__version__)


def session_options(*, intra_op_threads: int, inter_op_threads: int, spinning: bool) -> ort.SessionOptions:
    options = ort.SessionOptions()
    # onnxruntime's default pool size follows the host's cores, not the container's quota.
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    spin = "1" if spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    # The session's own warnings stay, whatever the process-wide default logger is set to.
    options.log_severity_level = _WARNING
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
        data_path: DataPath = DEFAULT_DATA_PATH,
    ) -> None:
        options = session_options(
            intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads, spinning=spinning
        )
        if placement.provider == CUDA:
            # onnxruntime 1.31 warns "No registered plugin EP device found for 'CUDAExecutionProvider'"
            # on its default logger at every CUDA session, though the built-in provider then runs;
            # that logger's errors still show.
            ort.set_default_logger_severity(_ERROR)
        self.path = path
        self.data_path = data_path  # public so the GPU benchmark can time each path on one session
        self.session = ort.InferenceSession(str(path), options, providers=provider_list(placement))
        # onnxruntime falls back to CPU when CUDA cannot start; report what actually runs.
        self.provider: str = self.session.get_providers()[0]
        if placement.provider != self.provider:
            log.warning(
                "%s: asked for %s, onnxruntime runs it on %s (for CUDA: are the CUDA and cuDNN libraries "
                "on LD_LIBRARY_PATH? docs/gpu.md)",
                path,
                placement.provider,
                self.provider,
            )
        running = self.session.get_provider_options().get(self.provider, {})
        self.device_id = int(running.get("device_id", 0))
        # What the provider runs with, read back where it reports it; it took the option either way
        # (onnxruntime rejects an option it does not know).
        self.tf32 = self.provider == CUDA and running.get("use_tf32", str(int(placement.tf32))) == "1"
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.inputs = tuple(_spec(arg) for arg in self.session.get_inputs())
        self.outputs = tuple(_spec(arg) for arg in self.session.get_outputs())

    def describe(self) -> str:
        """A startup line's words for this session: its provider, device and precision."""
        # Floating tensors only: a conditional model's int64 labels say nothing of its precision.
        tensors = self.inputs + self.outputs
        dtypes = ", ".join(sorted({_FLOATS[spec.dtype] for spec in tensors if spec.dtype in _FLOATS}))
        device = f" device {self.device_id}" if self.provider == CUDA else ""
        tf32 = f", TF32 {'on' if self.tf32 else 'off'}" if self.provider == CUDA else ""
        return f"{self.path.name} on {self.provider}{device}, {dtypes}{tf32}"

    def run(
        self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Outputs by name: all of them, or only `output_names` (the others are not copied back)."""
        names = self._names(output_names)
        if self.data_path == "plain":
            return dict(zip(names, self.session.run(names, feeds), strict=True))
        return dict(zip(names, self._run_bound(feeds, names), strict=True))

    def device_resident(
        self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> Callable[[], None]:
        """A run whose inputs are copied to the device once and whose outputs stay there, preallocated.

        The ceiling of a device: what the graph costs with no copy across the bus.
        """
        names = self._names(output_names)
        device = self._device()
        examples = self.session.run(names, feeds)  # the outputs' shapes and dtypes, to preallocate
        binding = self.session.io_binding()
        # The binding keeps every OrtValue bound to it alive, and the closure keeps the binding.
        for name, value in feeds.items():
            on_device = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), device, self.device_id)
            binding.bind_ortvalue_input(name, on_device)
        for name, like in zip(names, examples, strict=True):
            out = ort.OrtValue.ortvalue_from_shape_and_type(like.shape, like.dtype, device, self.device_id)
            binding.bind_ortvalue_output(name, out)

        def run() -> None:
            self.session.run_with_iobinding(binding)

        return run

    def _names(self, output_names: Sequence[str] | None) -> list[str]:
        return list(output_names) if output_names is not None else [spec.name for spec in self.outputs]

    def _device(self) -> str:
        return "cuda" if self.provider == CUDA else "cpu"

    def _run_bound(self, feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        # IO binding copies each input to the device once and only the wanted outputs back.
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        on_device = self.data_path == "bind-device"
        device, index = (self._device(), self.device_id) if on_device else ("cpu", 0)
        for name in names:
            binding.bind_output(name, device, index)
        self.session.run_with_iobinding(binding)
        outputs: list[np.ndarray] = binding.copy_outputs_to_cpu()
        return outputs


def _spec(arg: ort.NodeArg) -> TensorSpec:
    shape = tuple(dim if isinstance(dim, int) else str(dim) for dim in arg.shape)
    return TensorSpec(arg.name, shape, arg.type.removeprefix("tensor(").removesuffix(")"))
