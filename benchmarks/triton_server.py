"""Triton Inference Server (through nvidia-pytriton) serving our ONNX graphs, for the side-by-side suite.

Runs in its own virtual environment (.venv-triton, `make bench` creates it from
benchmarks/triton-requirements.txt): pytriton pins numpy<2 and protobuf<7, which the project's
environment has outgrown. So this file imports nothing from the project. Two commands:

    python benchmarks/triton_server.py serve VERSION_DIR --grpc-port P --http-port H --metrics-port M
    python benchmarks/triton_server.py request VERSION_DIR --graph decoder --items N > request.bin

`serve` binds the decoder (and the encoder) of one model version, each with Triton's dynamic batcher
and onnxruntime on the same thread settings as our service; `request` writes a serialized KServe v2
ModelInferRequest for the load generator, which sends it as raw bytes like every other request.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import sysconfig
from pathlib import Path

import numpy as np

# model.json's dtype names -> KServe v2 datatype names.
_DATATYPES = {"float32": "FP32"}


def _graphs(version_dir: Path) -> dict[str, dict]:  # type: ignore[type-arg]
    manifest = json.loads((version_dir / "model.json").read_text())
    return dict(manifest["graphs"])


def _item_shape(spec: dict) -> tuple[int, ...]:  # type: ignore[type-arg]
    """A model.json tensor spec ["batch", 32] -> (32,): Triton's shapes leave the batch axis out."""
    return tuple(int(dim) for dim in spec["shape"][1:])


def serve(args: argparse.Namespace) -> None:
    import onnxruntime as ort
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    # The python backend's stub links libpython; when the system's differs from this interpreter's
    # (pyenv builds), it must find this interpreter's first. tritonserver inherits os.environ.
    libdir = sysconfig.get_config_var("LIBDIR")
    os.environ["LD_LIBRARY_PATH"] = ":".join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")]))

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    config = TritonConfig(
        grpc_address=args.host,
        grpc_port=args.grpc_port,
        http_address=args.host,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        log_verbose=0,
    )
    with Triton(config=config) as triton:
        for graph, spec in _graphs(args.version_dir).items():
            session = ort.InferenceSession(
                str(args.version_dir / spec["file"]), options, providers=["CPUExecutionProvider"]
            )
            (input_spec,) = spec["inputs"]
            outputs = spec["outputs"][:2] if graph == "encoder" else spec["outputs"][:1]  # mu, logvar | probs
            names = [output["name"] for output in outputs]

            def infer(
                session: ort.InferenceSession = session, names: list[str] = names, **feeds: np.ndarray
            ) -> dict:  # type: ignore[type-arg]
                return dict(zip(names, session.run(names, feeds), strict=True))

            triton.bind(
                model_name=graph,
                infer_func=batch(infer),
                inputs=[Tensor(name=input_spec["name"], dtype=np.float32, shape=_item_shape(input_spec))],
                outputs=[
                    Tensor(name=out["name"], dtype=np.float32, shape=_item_shape(out)) for out in outputs
                ],
                config=ModelConfig(
                    max_batch_size=args.max_batch,
                    batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_delay_us),
                ),
                strict=False,
            )
        # pytriton stops Triton cleanly on KeyboardInterrupt; make SIGTERM (what the suite sends) one too.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        triton.serve()


def request(args: argparse.Namespace) -> None:
    from tritonclient.grpc import service_pb2 as kserve

    spec = _graphs(args.version_dir)[args.graph]
    (input_spec,) = spec["inputs"]
    shape = (args.items, *_item_shape(input_spec))
    rng = np.random.default_rng(args.seed)
    # Latents from the prior; images uniform in [0, 1]: the compute does not depend on the values.
    data = rng.standard_normal(shape) if args.graph == "decoder" else rng.random(shape)
    outputs = spec["outputs"][:2] if args.graph == "encoder" else spec["outputs"][:1]
    message = kserve.ModelInferRequest(
        model_name=args.graph,
        inputs=[
            kserve.ModelInferRequest.InferInputTensor(
                name=input_spec["name"], datatype=_DATATYPES[input_spec["dtype"]], shape=list(shape)
            )
        ],
        outputs=[kserve.ModelInferRequest.InferRequestedOutputTensor(name=out["name"]) for out in outputs],
        raw_input_contents=[data.astype("<f4").tobytes()],
    )
    sys.stdout.buffer.write(message.SerializeToString())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="serve VERSION_DIR's graphs until SIGINT/SIGTERM")
    serve_parser.add_argument("version_dir", type=Path)
    serve_parser.add_argument("--host", default="127.0.0.1", help="address of all three ports")
    serve_parser.add_argument("--grpc-port", type=int, required=True)
    serve_parser.add_argument("--http-port", type=int, required=True)
    serve_parser.add_argument("--metrics-port", type=int, required=True)
    serve_parser.add_argument("--max-batch", type=int, default=256, help="Triton max_batch_size")
    serve_parser.add_argument("--max-delay-us", type=int, default=0, help="dynamic batcher queue delay")
    serve_parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    serve_parser.set_defaults(handler=serve)
    request_parser = commands.add_parser("request", help="write a serialized ModelInferRequest to stdout")
    request_parser.add_argument("version_dir", type=Path)
    request_parser.add_argument("--graph", choices=["encoder", "decoder"], required=True)
    request_parser.add_argument("--items", type=int, required=True)
    request_parser.add_argument("--seed", type=int, default=0)
    request_parser.set_defaults(handler=request)
    args = parser.parse_args()
    args.handler(args)


if __name__ == "__main__":
    main()
