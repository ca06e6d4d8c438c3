"""What the suite measures: the systems, the scenarios and the in-process batch sizes."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks import Rpc

SYSTEMS = (
    "service",
    "service, batching off",
    "triton",
    "echo",
    "minimal micro-batcher",
    "minimal, no batching",
)
# The minimal servers of benchmarks/baselines.py (name -> whether it batches) and what they answer.
BASELINES = {"minimal micro-batcher": True, "minimal, no batching": False}
BASELINE_RPCS = ("decode", "encode")
# unpinned: servers and client share every core, as in production on a small machine; pinned: the
# server on one core and the client on the others, so a system's capacity per core is measured
# without the client competing.
MODES = ("unpinned", "pinned")
TRITON_INFER = "/inference.GRPCInferenceService/ModelInfer"
# Reconstruct needs both graphs in one call: Triton would need an ensemble, which is not the same load.
TRITON_GRAPH = {"decode": "decoder", "sample": "decoder", "encode": "encoder"}
INPROCESS_BATCHES = tuple(1 << i for i in range(10))  # 1 .. 512
# The graphs each RPC runs, in order: what its in-process ceiling adds up.
GRAPHS_OF = {
    "decode": ("decoder",),
    "sample": ("decoder",),
    "encode": ("encoder",),
    "reconstruct": ("encoder", "decoder"),
}
QUANTILES = (*range(0, 100), 99.5, 99.9, 100)
# `vae serve` flags that turn batching off: every batch is one item.
NO_BATCHING = ("--max-batch-items", "1")


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    rpc: Rpc
    items: int
    concurrency: int


SCENARIOS = (
    Scenario("decode-c1", "Decode 1 latent, 1 caller", "decode", 1, 1),
    Scenario("decode-c16", "Decode 1 latent, 16 callers", "decode", 1, 16),
    Scenario("decode-c64", "Decode 1 latent, 64 callers", "decode", 1, 64),
    Scenario("encode-c64", "Encode 1 image, 64 callers", "encode", 1, 64),
    Scenario("sample-256", "Sample n=256, 4 callers", "sample", 256, 4),
    Scenario("reconstruct-32", "Reconstruct 32 images, 4 callers", "reconstruct", 32, 4),
)
# Pinned mode measures these only: capacity per core is about the per-request cost, which
# single-item calls from many callers show best (one caller leaves the server idle between calls),
# and the suite stays within about 15 minutes.
PINNED_SCENARIOS = tuple(s for s in SCENARIOS if s.items == 1 and s.concurrency > 1)
