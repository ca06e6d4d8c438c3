"""Load generation (`vae bench`) and the side-by-side suite (`make bench`); see docs/benchmarks.md."""

from typing import Literal

# Kept here, free of grpc and numpy, so that registering `vae bench` imports nothing heavy.
Rpc = Literal["decode", "encode", "sample", "reconstruct"]
RPCS: tuple[Rpc, ...] = ("decode", "encode", "sample", "reconstruct")
