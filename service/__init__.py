"""The gRPC service: codec and validation, onnxruntime runtime, dynamic batcher, metrics, server."""
