"""ONNX export of encoder and decoder, parity checks, and the versioned model repository."""
