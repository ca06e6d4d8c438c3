"""docs/gpu.md: findings filled from the latest `make bench-gpu`, its tables, and the 2026-12-04 baseline."""

from __future__ import annotations

import textwrap
from typing import Any

from benchmarks.gpu.inprocess import EXECUTOR, GRAPH_METHODS, METHODS, PLAIN, RESIDENT
from benchmarks.gpu.service import LOADS, LOADS_BY_NAME, cell, workers

INTRO = """# GPU serving

What the service does with a GPU, measured. `make bench-gpu` runs on a machine with onnxruntime-gpu
and writes this page and [gpu.json](gpu.json) in under four minutes: the in-process sweep of both
graphs of models/mnist/2, CPU/CUDA parity per precision setting, the tests marked `gpu`, and the
service on CUDA under issue 29's loads with one worker and with several. Without a GPU,
`python3 -m benchmarks.gpu --device cpu --out DIR` runs the same sections on the CPU (the suite tests
it so). `../shared/gpu/README.md` says how to bring onnxruntime-gpu to a machine without internet.

```sh
source .gpu/device-env.sh   # onnxruntime-gpu and the CUDA libraries on the paths
make bench-gpu              # python3 -m benchmarks.gpu --out docs; BENCH_GPU_ARGS="--budget-s 200"
```"""

BASELINE = """## Baseline (2026-12-04, by hand, before this benchmark existed)

One NVIDIA H200 (16 cores, driver 580, CUDA 13), onnxruntime-gpu 1.31.1, models/mnist/2, the code
of that day: `Graph` bound its outputs to the host with IO binding, and the CUDA provider ran with
its default, TF32 on. Issue 29 has the whole account.

In-process decoder, items/s (median of back-to-back runs, random latents):

| batch | 1 | 16 | 64 | 256 | 1,024 | 4,096 | 16,384 |
|---|--:|--:|--:|--:|--:|--:|--:|
| ORT CPU, 16 threads | 7.8k | 15k | 18k | 18k | 17k | 17k | — |
| ORT CUDA, plain `session.run` | 7.0k | 98k | 389k | 862k | 1.47M | 1.95M | 2.10M |
| `Graph` on CUDA (IO binding, outputs bound to `cpu`) | 8.3k | 82k | 311k | 512k | 910k | 1.06M | 0.65M |
| torch-CUDA eager, same weights, host copies in and out | 4.3k | 58k | 200k | 518k | 1.28M | 1.71M | 0.34M |
| ORT CUDA, input and output left on the device | — | — | — | 1.57M | — | 4.02M | 4.60M |

A second pass at 256 / 4,096 / 16,384: plain run 0.95M / 2.05M / 2.23M; outputs bound to `cpu`
0.62M / 1.13M / 0.79M; outputs bound to `cuda`, then copied back, 0.93M / 2.01M / 0.87M. The encoder
behaves alike (plain 0.80M at 256, 1.65M at 4,096; `Graph` 0.73M / 1.52M).

Precision, CUDA against CPU, max abs difference at 256 items: TF32 on (the provider's default)
encoder 1.6–1.9e-3, decoder 1.2–1.5e-3; `use_tf32=0` 3.3e-6 and 8.9e-7. TF32 off cost nothing
measurable at 256 and 0.69x (decoder) / 0.84x (encoder) at 4,096.

The service (`vae serve --device cuda`, `vae bench`, 4 s after 1 s of warm-up):

| load | CUDA, 1 process | the same service on the 16 CPU cores | CUDA `--workers 4` |
|---|--:|--:|--:|
| Decode 1 latent, 64 callers | 4,487 req/s, p99 29 ms | 4,691 req/s | 11,600 req/s, p99 19 ms |
| Sample n=256, 16 callers, float32 | 199k items/s | 9.2k | 527k (32 callers) |
| Sample n=256, 16 callers, uint8 | 250k items/s | — | 661k (32 callers) |
| Encode 256 images, 16 callers | 229k items/s | 9.0k | — |
| Sample n=4,096, 1 caller | p50 66 ms (the decoder's share: ~2 ms) | 608 ms | — |
| Decode 1,024 latents, 8 callers | 1,807 of 2,116 calls RESOURCE_EXHAUSTED | 9,736 of 9,770 refused | — |
| Decode 1 latent, 1 caller, p50 | 1.35 ms | 1.61 ms | — |

Every session creation also logged `No registered plugin EP device found for 'CUDAExecutionProvider'
with device_id=0` (onnxruntime 1.31's plugin lookup on its default logger)."""

DATA_PATH_BASELINE = (
    "On the baseline's H200, IO binding with outputs bound to the host ran at 0.31–0.84x a plain "
    "`session.run` from batch 16 up, and outputs bound to the device then copied back at 0.39–0.98x "
    "(256 to 16,384): "
    "binding pays only where data stays on the device (onnxruntime#10000). `Graph.run` therefore "
    "takes the plain path on every provider; the bindings stay selectable (`Graph.data_path`) so that "
    "this page measures them side by side. On a 2-core CPU the three paths are within 1% of each other "
    "from batch 16 up, and the bindings 3% slower at batch 1. Images cross the bus as float32 and "
    "become uint8 on the host, after the batch, for the callers that ask: one batch serves callers of "
    "both kinds, and the conversion costs 0.70 ms per 4,096 MNIST images on the 2-core CPU (`python3 -m "
    'timeit -s "import numpy as np; x = np.random.rand(4096, 1, 28, 28).astype(np.float32)" '
    '"(x * np.float32(255) + np.float32(0.5)).astype(np.uint8)"`, best of 5). Converting on the '
    "device would save that and three quarters of the copy back, about 0.8 ms of the ~1 ms the "
    "baseline's plain run spent copying 12.8 MB at 4,096: not worth a second decoder graph and a "
    "batcher per output type while the baseline's Sample n=4,096 took 66 ms. Between the graphs "
    "(Reconstruct's posterior means into the decoder, Score's k draws) only latents cross, 32 floats "
    "an item against the image's 784, and Score draws them on the host with numpy's seeded generator "
    "so that every device scores the same draws: nothing is kept on the device between graphs."
)
PRECISION_BASELINE = (
    "TF32 (the CUDA provider's default) rounds the inputs of matmuls and convolutions to a 10-bit "
    "mantissa: on the baseline's H200 that put CUDA ~1.5e-3 off the CPU; with `use_tf32=0` it is "
    "within ~1e-6, and the difference in speed showed only at large batches (0.69x decoder, 0.84x "
    "encoder at 4,096). The service therefore runs exact float32 unless asked: `vae serve --cuda-tf32` "
    "(`VAE_CUDA_TF32=1`) trades 1.2–1.45x at 4,096 items for outputs ~1.5e-3 off, under one grey "
    "level of an 8-bit image (1/255) but 15 times export's parity bound (1e-4). The startup log says per "
    "graph which it runs (`TF32 off`). `vae verify VERSION --device cuda` runs the version's check "
    "batch through both graphs (and a prior flow's two) on CUDA and on the CPU and fails past 1e-4 "
    "(exact float32; logits and log_det relative to their scale, as export's parity), printing the "
    "difference; with `--cuda-tf32` the "
    "bound is 1e-2, float16's, since TF32 keeps float16's 10-bit mantissa. On the H200 host with this "
    "code (2026-12-04), `vae verify models/mnist/2 --device cuda` found mu 2.3e-6, logvar 1.3e-6, probs "
    "6.0e-7 and logits 1.9e-5 off the CPU, and with `--cuda-tf32` 1.0e-3, 6.6e-4, 8.2e-4 and 5.8e-3."
)
BATCHING = (
    "`--max-batch-items auto`, the default, is 256 on the CPU and 4,096 on CUDA. On the CPU the cost "
    "per item is flat from a few dozen items up (the baseline's 16 threads: 17–18k items/s from 64 to "
    "4,096; 2 cores: [benchmarks.md](benchmarks.md)), so a larger batch only makes callers wait. The "
    "baseline's plain CUDA run went from 0.86M items/s at 256 to 1.95M at 4,096 and 2.10M at 16,384: "
    "4,096 takes most of the gain at a quarter of the largest batch. The warm-up times every power of "
    "two up to the limit, and the batcher starts a batch at once from its knee (the smallest size "
    "within 5% of the cheapest cost per item), so small loads do not wait for company. The startup "
    "log says per graph its provider, precision, batch limit, knee and measured cost per item of a "
    "full batch: admission (`service/admission.py`) turns that cost into the wait ahead of a request, "
    "against its deadline and `--max-queue-delay-ms`; the item bound, 65,536 queued items, is a memory "
    "backstop that must hold one batch."
)
WORKERS = (
    "`--workers auto`, the default, is 1 on the CPU and, on CUDA, one per 4 usable cores (its CPU "
    "affinity, or its cgroup's CPU quota where lower), at most 8: 4 on the baseline's 16 cores. One "
    "grpc.aio process answered at most ~4.5k small calls/s there, on CUDA as on the CPU: its event "
    "loop is the wall, not the device. Four independent workers, each with its own sessions and CUDA "
    "context, answered 2.6x as many Decode calls (11,600/s) and 2.6x the Sample n=256 items/s (32 "
    "callers against 16), with the load generator on the same cores. Each worker runs an event loop, "
    "grpc's threads and a thread per batcher: 4 cores each is the measured configuration, scaled with "
    "the host. The same H200 host with this code (2026-12-04, `python3 -m benchmarks.gpu --sections "
    "service --workers 1 auto 8`, 3 s per load after 1 s, the load generator's 4 processes on the same "
    "16 cores): Decode 1 latent x 64 callers 3,900 calls/s with 1 worker, 10,744 with auto (4), 4,774 "
    "with 8; Sample n=256 uint8 x 16 callers 228k, 546k and 483k items/s; Decode 1,024 latents x 8 "
    "callers refused none of 452, 682 and 692 calls. An earlier run of 2 s per load gave 3,860 and "
    "5,360 Decode calls/s for 1 and auto: windows this short vary. Eight workers ran slower than four on "
    "these 16 cores shared with the clients; the cap of 8 also bounds the CUDA contexts and the copies "
    "of every version that each worker holds. On the CPU the workers' sessions would take the cores "
    "their front ends need, so auto stays 1 there."
)
EXECUTOR_TEXT = (
    "`--device-executor` makes the workers front ends of one process that holds every graph's session "
    "(`service/executor.py`): one CUDA context and one copy of each version, however many workers. The "
    "workers keep all of a request (gRPC, validation, admission, their batchers, metrics, drain, reload, "
    "health) and run each batch there; the executor joins the batches of one graph that wait at the "
    "same time (same item shape and outputs, up to the batch limit) into one run, so that the device "
    "sees batches formed across every worker's callers, and a batch that finds its graph idle runs at "
    "once on the thread that received it. Arrays cross through shared memory, and the messages on a "
    "Unix socket carry only their layout. Each batcher's thread has a segment for its inputs and the "
    "executor one for its outputs, each its largest batch rounded up to a power of two (1 MiB at "
    "least): with models/mnist/2 at 4,096 items, 16 + 1 MiB for the encoder and 1 + 16 MiB for each of "
    "the decoder's two batchers (Decode, Score), 51 MiB per worker and loaded version, so 4 workers "
    "serving the 3 bundled versions need 612 MiB of `/dev/shm` (Docker gives 64 MB: set `shm_size`); a "
    "full one fails that batch with the reason, not the process. A dead worker "
    "gives its graphs back; the executor's death ends the service (exit 1, docs/reliability.md). "
    "Independent workers stay the default until a GPU has measured both: this page's service section "
    "runs `auto` both ways (`--executor-workers`), and no GPU has been lent since the executor was "
    "built. On the project's 2-core CPU (2026-12-05, `python3 -m benchmarks.gpu --device cpu --sections "
    "service --workers 1 2 --executor-workers 1 2 --loads decode-1-c64 sample-256-c16-uint8 decode-1-c1 "
    "sample-4096-c1 decode-1024-c8 --load-s 5 --load-warmup-s 1`, the load generator on the same cores), "
    "2 workers through the executor against 2 independent ones: Decode 1 latent x 64 callers 4,935 "
    "against 5,306 calls/s (0.93x), Sample n=256 uint8 x 16 callers 17.7k against 18.8k items/s "
    "(0.94x), Decode 1,024 latents x 8 callers 17.0k against 18.6k items/s (0.91x), none refused; Sample "
    "n=4,096 p50 250 ms both ways; a lone Decode's p50 0.98 against 0.68 ms. The hop itself, in the "
    "sweep's `graph-in-executor` row (`python3 -m benchmarks.gpu --device cpu --sections sweep --batches "
    "1 64 256 --cell-s 2`): the decoder took 203 µs a run at batch 1 against 105 µs in the same process, "
    "and ran at 0.96x and 0.94x the plain run at 64 and 256. On a CPU the device is the cores the front ends "
    "need, so the executor cannot gain there."
)


def render(document: dict[str, Any] | None) -> str:
    """The whole page; `document` is what the benchmark wrote to gpu.json, or None before any run."""
    parts = [INTRO, _findings(document)]
    if document is None:
        parts.append("## Measured\n\nNot yet: run `make bench-gpu` on a machine with a GPU.")
    else:
        parts.append(_measured(document))
    parts.append(BASELINE)
    return "\n\n".join(parts) + "\n"


def _findings(document: dict[str, Any] | None) -> str:
    sections = (document or {}).get("sections", {})
    sweep, parity = sections.get("sweep", {}), sections.get("parity", {})
    data_path = _data_path_text(sweep) if sweep.get("status") == "ok" else None
    precision = _precision_text(parity) if parity.get("status") == "ok" else None
    serving = sections.get("service", {})
    scaling = _workers_text(serving) if serving.get("status") == "ok" else None
    paragraphs = [
        "**Data path.** " + DATA_PATH_BASELINE,
        *([f"Measured below: {data_path}"] if data_path else []),
        "**Precision.** " + PRECISION_BASELINE,
        *([f"Measured below: {precision}"] if precision else []),
        "**Batch limit.** " + BATCHING,
        "**Workers.** " + WORKERS,
        "**One device executor.** " + EXECUTOR_TEXT,
        *([f"Measured below: {scaling}"] if scaling else []),
    ]
    return "\n\n".join(["## Findings", *(textwrap.fill(text, 100) for text in paragraphs)])


def _ratios(cells: list[dict[str, Any]], method: str, against: str) -> list[float]:
    """method's items/s over against's, per (graph, batch) where both have a figure."""
    figures = {(c["graph"], c["batch"], c["method"]): c.get("items_per_s") for c in cells}
    out = []
    for (graph, batch, name), value in figures.items():
        other = figures.get((graph, batch, against))
        if name == method and value and other:
            out.append(value / other)
    return out


def _span(values: list[float]) -> str:
    return "—" if not values else f"{min(values):.2f}–{max(values):.2f}x"


def _data_path_text(sweep: dict[str, Any]) -> str:
    cells = sweep["cells"]
    paths = "; ".join(f"`{m}` {_span(_ratios(cells, m, PLAIN))}" for m in GRAPH_METHODS)
    return (
        f"`Graph.run` against a bare `session.run` on the same session, over both graphs and every "
        f"batch: {paths}. The device-resident ceiling (no copy across the bus) ran at "
        f"{_span(_ratios(cells, RESIDENT, PLAIN))} the plain run; the same graph run from another "
        f"process through the device executor, at {_span(_ratios(cells, EXECUTOR, PLAIN))}."
    )


def _precision_text(parity: dict[str, Any]) -> str:
    by_tf32 = {s["tf32_asked"]: s for s in parity["settings"]}
    off, on = by_tf32[False], by_tf32[True]
    diffs = "; ".join(
        f"TF32 {'on' if s['tf32_asked'] else 'off'}: encoder {s['max_abs_diff']['encoder']:.1e}, "
        f"decoder {s['max_abs_diff']['decoder']:.1e}"
        for s in (off, on)
    )
    speed = "; ".join(
        f"{role} at {size}: {off['items_per_s'][role][size] / on['items_per_s'][role][size]:.2f}x"
        for role in off["items_per_s"]
        for size in off["items_per_s"][role]
    )
    return (
        f"max abs difference from the CPU at {parity['batch']} items: {diffs}. TF32 off against on, "
        f"items/s of `Graph.run`: {speed}."
    )


def _workers_text(service: dict[str, Any]) -> str | None:
    """`auto` workers against one, and through the executor against independent ones.

    Per load whose figure is a rate; None without both configurations of either comparison.
    """
    served = {
        (c["workers"], c.get("device_executor", False)): c for c in service["configs"] if "started_s" in c
    }
    comparisons = [
        _ratios_text(served[key], served[base], against)
        for key, base, against in (
            (("auto", False), (1, False), "1"),
            (("auto", True), ("auto", False), "independent workers"),
        )
        if key in served and base in served
    ]
    return " ".join(comparisons) or None


def _ratios_text(config: dict[str, Any], base: dict[str, Any], against: str) -> str:
    ratios = []
    for load in LOADS:
        key = {"calls": "requests_per_s", "items": "items_per_s"}.get(load.figure)
        one, many = base["loads"].get(load.name, {}), config["loads"].get(load.name, {})
        if key and one.get(key) and many.get(key):
            ratios.append(f"{load.title} {many[key] / one[key]:.2f}x")
    return (
        f"`--workers {workers(config)}` against {against}: "
        + ("; ".join(ratios) or "no load ran in both")
        + "."
    )


def _measured(document: dict[str, Any]) -> str:
    env = document["sections"].get("environment", {})
    gpu = env.get("gpu") or "a host where nvidia-smi found no GPU"
    lines = [
        f"## Measured {document['started'][:10]} on {gpu} ({env.get('cpus', '?')} cores)",
        "",
        f"- command: `{document['command']}`, {document['seconds']:.0f} s in all "
        f"(budget {document['settings']['budget_s']:.0f} s)",
        f"- onnxruntime {env.get('onnxruntime', '?')} (providers: {', '.join(env.get('providers', []))}), "
        f"Python {env.get('python', '?')}, torch {env.get('torch', 'not importable')}",
    ]
    problems = [
        f"- section {name}: {section['status']}"
        + (f" ({_brief(section.get('error') or section.get('reason'))})" if section["status"] != "ok" else "")
        for name, section in document["sections"].items()
        if section.get("status") != "ok"
    ]
    parts = ["\n".join(lines + problems)]
    for name, render_section in (
        ("sweep", _sweep),
        ("parity", _parity),
        ("service", _service),
        ("tests", _tests),
    ):
        section = document["sections"].get(name, {})
        if section.get("status") == "ok":
            parts.append(render_section(section))
    return "\n\n".join(parts)


def _items(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    return f"{value / 1e3:.1f}k" if value >= 1e3 else f"{value:.0f}"


def _sweep(sweep: dict[str, Any]) -> str:
    cells = sweep["cells"]
    batches = sorted({c["batch"] for c in cells})
    parts = [
        f"### In-process, items/s (median run of {sweep['cell_s']} s back to back per cell)",
        "Sessions: " + "; ".join(sweep["sessions"].values()) + f". torch: {_torch(sweep['torch'])}.",
    ]
    for graph in ("encoder", "decoder"):
        rows = [
            f"| {graph} | " + " | ".join(f"{b:,}" for b in batches) + " |",
            "|---|" + "--:|" * len(batches),
        ]
        for method in METHODS:
            by_batch = {c["batch"]: c for c in cells if c["graph"] == graph and c["method"] == method}
            row = [_items(by_batch[b].get("items_per_s")) if b in by_batch else "—" for b in batches]
            rows.append(f"| {method} | " + " | ".join(row) + " |")
        parts.append("\n".join(rows))
    return "\n\n".join(parts)


def _torch(about: dict[str, Any]) -> str:
    if "skipped" in about:
        return f"skipped ({about['skipped']})"
    diffs = ", ".join(f"{role} {diff:.1e}" for role, diff in about["max_abs_diff_vs_onnx"].items())
    return (
        f"{about['torch']} on {about['device']}, TF32 matmul {about['tf32_matmul']}, cuDNN "
        f"{about['tf32_cudnn']}; max abs difference from the graphs at 16 items: {diffs}"
    )


def _parity(parity: dict[str, Any]) -> str:
    rows = [
        f"### Precision: device against CPU, max abs difference at {parity['batch']} items, and items/s",
        "",
        "| setting | encoder diff | decoder diff | items/s of `Graph.run` | sessions |",
        "|---|--:|--:|---|---|",
    ]
    for s in parity["settings"]:
        speed = ", ".join(
            f"{role} {size}: {_items(value)}"
            for role, sizes in s["items_per_s"].items()
            for size, value in sizes.items()
        )
        rows.append(
            f"| TF32 {'on' if s['tf32_asked'] else 'off'} asked | {s['max_abs_diff']['encoder']:.1e} | "
            f"{s['max_abs_diff']['decoder']:.1e} | {speed} | {'; '.join(s['sessions'].values())} |"
        )
    return "\n".join(rows)


def _service(service: dict[str, Any]) -> str:
    configs = service["configs"]
    header = " | ".join(f"{service['device']}, {workers(c)} worker(s)" for c in configs)
    rows = [
        f"### The service (`vae serve --device {service['device']}`; each load "
        f"{service['seconds_per_load']} s after {service['warmup']} s of warm-up)",
        "",
        f"| load | {header} |",
        "|---|" + "--:|" * len(configs),
    ]
    for name in [load["name"] for load in service["loads"]]:
        load = LOADS_BY_NAME[name]
        row = []
        for config in configs:
            record = config["loads"].get(name)
            failed = config.get("error") or config.get("skipped")
            row.append(cell(load, record) if record else f"not run ({_brief(failed)})" if failed else "—")
        rows.append(f"| {load.title} | " + " | ".join(row) + " |")
    notes = [
        f"- {workers(c)} worker(s): "
        + (
            f"serving {c['started_s']:.1f} s after start; {c['plugin_ep_log_lines']} plugin-EP log lines"
            if "started_s" in c
            else f"did not serve: {_brief(c.get('error') or c.get('skipped'))}"
        )
        for c in configs
    ]
    return "\n".join(rows) + "\n\n" + "\n".join(notes)


def _brief(text: str) -> str:
    """An error's last line, which names its cause: a table cell holds one line."""
    return text.strip().splitlines()[-1][:200]


def _tests(tests: dict[str, Any]) -> str:
    counts = ", ".join(f"{n} {kind}" for kind, n in tests["counts"].items())
    failures = "".join(f"\n- {failure}" for failure in tests["failures"])
    return f"### Tests marked `gpu`\n\n`{tests['command']}`: {counts}.{failures}"
