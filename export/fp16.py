"""Half-precision copies of the exported graphs (--fp16), refused when they drift from float32."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import onnx
from onnxconverter_common import float16

from export.errors import ExportError
from repository.comparison import fp16_differences, recorded_difference
from repository.manifest import Fp16Entry, Manifest, file_sha256
from repository.runtime import Graph
from repository.tensor_names import GRAPHS


def add_fp16(staged: Path, manifest: Manifest) -> Manifest:
    """Write half-precision copies with float32 inputs and outputs; refuse them if they drift."""
    entries = {}
    for role in GRAPHS:
        source = staged / manifest.graphs[role].file
        file = f"{role}.fp16.onnx"
        with warnings.catch_warnings():
            # The converter warns for each weight it clamps into the float16 range; the comparison
            # below is what decides whether that mattered.
            warnings.filterwarnings("ignore", category=UserWarning, module="onnxconverter_common")
            half = float16.convert_float_to_float16(onnx.load(source), keep_io_types=True)
        # The converter types every intermediate as float16, even Sigmoid(logits), which reads the
        # float32 graph output "logits" and so computes in float32; the checker rejects that stale
        # annotation. Shape inference recomputes the types from the nodes.
        half.graph.ClearField("value_info")
        onnx.checker.check_model(half, full_check=True)
        (staged / file).write_bytes(half.SerializeToString())
        differences = fp16_differences(Graph(source), Graph(staged / file), manifest, role)
        for d in differences:
            if not d.ok:
                raise ExportError(
                    f"fp16 refused: the {role} graph's output {d.output!r} {d.describe('float32')} "
                    "(VAE decoders can overflow float16); export without --fp16. Nothing was written"
                )
        entries[role] = Fp16Entry(
            file=file, sha256=file_sha256(staged / file), max_abs_diff=recorded_difference(differences)
        )
    return dataclasses.replace(manifest, fp16=entries)
