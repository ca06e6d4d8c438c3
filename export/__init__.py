"""ONNX export of encoder and decoder: tracing, parity and fp16 checks, publishing to the repository."""
