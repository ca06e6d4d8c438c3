"""The suite's figures as PNG: throughput and p99 against callers, latency distributions, large requests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on a server

import matplotlib.pyplot as plt

from benchmarks.analysis import inprocess_items_per_s
from benchmarks.scenarios import INPROCESS_BATCHES, QUANTILES, SCENARIOS, SYSTEMS

FILES = ("throughput_vs_concurrency.png", "latency_distribution.png", "large_requests.png")
_DECODE = [s for s in SCENARIOS if s.rpc == "decode" and s.items == 1]
_STYLE = {
    "service": "C0",
    "service, batching off": "C1",
    "triton": "C2",
    "echo": "C7",
    "minimal micro-batcher": "C3",
    "minimal, no batching": "C4",
}


def draw(summary: dict[str, Any], out: Path) -> None:
    _throughput(summary["load"], out / FILES[0])
    _latency(summary["load"], out / FILES[1])
    _large(summary, out / FILES[2])


def _throughput(load: dict[str, Any], path: Path) -> None:
    fig, (rate, tail) = plt.subplots(1, 2, figsize=(10, 4))
    for system in SYSTEMS:
        points = [(s.concurrency, load[s.key][system]) for s in _DECODE if system in load.get(s.key, {})]
        if not points:
            continue
        callers = [c for c, _ in points]
        rate.plot(callers, [m["requests_per_s"] for _, m in points], "o-", color=_STYLE[system], label=system)
        tail.plot(callers, [m["p99_ms"] for _, m in points], "o-", color=_STYLE[system], label=system)
    rate.set(
        title="Decode, 1 latent per request", xlabel="concurrent callers", ylabel="requests/s", xscale="log"
    )
    tail.set(title="p99 latency", xlabel="concurrent callers", ylabel="ms", xscale="log", yscale="log")
    for ax in (rate, tail):
        ax.set_xticks([s.concurrency for s in _DECODE], [str(s.concurrency) for s in _DECODE])
        ax.grid(alpha=0.3)
    rate.legend()
    _save(fig, path)


def _latency(load: dict[str, Any], path: Path) -> None:
    shown = [s for s in SCENARIOS if s.key in ("decode-c1", "decode-c64", "encode-c64")]
    fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 4), squeeze=False)
    for ax, scenario in zip(axes[0], shown, strict=True):
        for system, median in load.get(scenario.key, {}).items():
            if median["latency_quantiles_ms"]:
                ax.plot(median["latency_quantiles_ms"], QUANTILES, color=_STYLE[system], label=system)
        ax.set(title=scenario.title, xlabel="latency, ms", ylabel="percentile", xscale="log")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].legend()
    _save(fig, path)


def _large(summary: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ceiling = summary["inprocess"]
    graphs = (
        ("decode", "decoder", "-"),
        ("encode", "encoder", "--"),
        ("reconstruct", "encoder + decoder", ":"),
    )
    for rpc, label, line in graphs:
        curve = [
            (b, v) for b in INPROCESS_BATCHES if (v := inprocess_items_per_s(ceiling, rpc, b)) is not None
        ]
        ax.plot([b for b, _ in curve], [v for _, v in curve], "k" + line, label=f"in-process {label}")
    for scenario in SCENARIOS:
        if scenario.items == 1:
            continue
        for system, median in summary["load"].get(scenario.key, {}).items():
            if system == "echo":  # computes nothing: its items/s would only squash the scale
                continue
            ax.plot(scenario.items, median["items_per_s"], "o", color=_STYLE[system])
            ax.annotate(f" {scenario.rpc}: {system}", (scenario.items, median["items_per_s"]), fontsize=7)
    ax.set(title="Items/s against batch size", xlabel="items per batch (request)", ylabel="items/s")
    ax.set(xscale="log", yscale="log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
