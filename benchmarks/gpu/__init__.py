"""`make bench-gpu`: the in-process sweep, parity, the `gpu` tests and the service on a GPU (docs/gpu.md)."""
