"""The suite's results as Markdown: conditions, every system per scenario, targets, the in-process sweep."""

from __future__ import annotations

from typing import Any

from benchmarks.analysis import Ceiling, inprocess_items_per_s
from benchmarks.scenarios import INPROCESS_BATCHES, SCENARIOS, SYSTEMS


def render(document: dict[str, Any]) -> str:
    summary = document["summary"]
    parts = [
        _conditions(document["conditions"], document["settings"]),
        _load_table(summary["load"], summary["inprocess"]),
    ]
    if summary["load_pinned"]:  # only when the pinned mode ran
        parts += [
            "Pinned: each server on one CPU, its client on the others.",
            _load_table(summary["load_pinned"], {}),
        ]
    parts += [_targets(summary["targets"]), _inprocess(summary["inprocess"])]
    return "\n\n".join(parts) + "\n"


def _num(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _conditions(conditions: dict[str, Any], settings: dict[str, Any]) -> str:
    machine = conditions["machine"]
    lines = [
        f"- run: {conditions['started']} to {conditions['finished']}, `{conditions['command']}`",
        f"- machine: {machine['cpus']} CPUs ({machine['cpu_model']}), Linux {machine['kernel']}, "
        f"Python {machine['python']}",
        f"- load average (1, 5, 15 min) before: {_loads(conditions['load_average_before'])}, "
        f"after: {_loads(conditions['load_average_after'])}",
        f"- busiest processes before (% CPU): {'; '.join(conditions['busiest_processes_before'])}",
        f"- busiest processes after (% CPU): {'; '.join(conditions['busiest_processes_after'])}",
        f"- settings: {settings['rounds']} rounds; per run {settings['duration']} s measured after "
        f"{settings['warmup']} s of warmup; {settings['processes']} client process(es); Triton's batcher "
        f"delay {settings['triton_delay_us']} µs",
        f"- extra `vae serve` flags: {settings.get('service_flags') or 'none'}",
        f"- modes: {', '.join(settings.get('modes', ['unpinned']))}",
    ]
    return "\n".join(lines)


def _loads(averages: list[float]) -> str:
    return " / ".join(f"{x:.2f}" for x in averages)


def _load_table(load: dict[str, Any], ceiling_table: Ceiling) -> str:
    """Every system per scenario; the in-process ceiling first, where `ceiling_table` has it."""
    rows = [
        "| scenario | system | req/s | items/s | p50 ms | p99 ms | server CPU ms/call | mean batch "
        "| errors |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for scenario in SCENARIOS:
        medians = load.get(scenario.key, {})
        ceiling = inprocess_items_per_s(ceiling_table, scenario.rpc, scenario.items)
        if ceiling is not None:
            calls = ceiling / scenario.items
            # One intra-op thread: a call's CPU is its time.
            call_ms = 1e3 / calls
            rows.append(
                f"| {scenario.title} | in-process, batch {scenario.items} | {_num(calls)} | "
                f"{_num(ceiling)} | {_num(call_ms, 2)} | — | {_num(call_ms, 3)} | {scenario.items} | — |"
            )
        for system in SYSTEMS:
            m = medians.get(system)
            if m is None:
                continue
            batch = ", ".join(f"{g[:3]} {v:.1f}" for g, v in m.get("mean_batch", {}).items()) or "—"
            rows.append(
                f"| {scenario.title} | {system} | {_num(m['requests_per_s'])} | {_num(m['items_per_s'])} | "
                f"{_num(m['p50_ms'], 2)} | {_num(m['p99_ms'], 2)} | "
                f"{_num(m.get('server_cpu_ms_per_call'), 3)} | {batch} | {_errors(m)} |"
            )
    return "\n".join(rows)


def _errors(median: dict[str, Any]) -> str:
    failed = median.get("failed_runs", 0)
    return f"{median['errors']}" + (f"; {failed} run(s) failed" if failed else "")


def _targets(targets: list[dict[str, Any]]) -> str:
    rows = ["| measure | value | goal | met |", "|---|--:|---|---|"]
    for t in targets:
        met = {True: "yes", False: "**no**", None: ""}[t["met"]]
        rows.append(f"| {t['what']} | {_num(t['value'], 2)} | {t['goal']} | {met} |")
    return "\n".join(rows)


def _inprocess(table: Ceiling) -> str:
    rows = [
        "| batch | encoder items/s | encoder ms | decoder items/s | decoder ms |",
        "|--:|--:|--:|--:|--:|",
    ]
    for batch in INPROCESS_BATCHES:
        cells = []
        for graph in ("encoder", "decoder"):
            point = table.get(graph, {}).get(batch)
            cells += [_num(point["items_per_s"]), _num(point["ms_per_batch"], 3)] if point else ["—", "—"]
        rows.append(f"| {batch} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
