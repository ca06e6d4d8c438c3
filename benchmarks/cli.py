"""`vae bench`: closed-loop load on a running server, reported as a table or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from benchmarks import RPCS
from wire.caller_flags import (
    add_tls_flags,
    add_token_flag,
    client_tls,
    client_token,
    quiet_grpc,
    rpc_error_line,
)


def _bench(args: argparse.Namespace) -> int:
    quiet_grpc()
    import grpc

    from benchmarks import load, report, scrape, workloads
    from repository.errors import CommandError

    tls, token = client_tls(args), client_token(args)
    try:
        checked = workloads.prepare(
            args.target,
            args.rpc,
            args.items,
            model=args.model,
            version=args.version,
            output_dtype=args.output_dtype,
            tls=tls,
            token=token,
        )
    except grpc.RpcError as exc:
        raise CommandError(f"{args.target}: {rpc_error_line(exc, tls=tls is not None)}") from exc

    scrapes: dict[str, dict[str, scrape.Histogram]] = {}

    def on_window(edge: str) -> None:
        scrapes[edge] = scrape.read(args.metrics_url)

    previous: list[load.Progress] = []

    def on_progress(progress: load.Progress) -> None:
        # \r rewrites one line on a terminal; a log file gets nothing rather than hundreds of lines.
        print(
            "\r" + report.progress_line(progress, previous[-1] if previous else None), end="", file=sys.stderr
        )
        previous.append(progress)

    result = load.run(
        args.target,
        checked.workload,
        concurrency=args.concurrency,
        duration=args.duration,
        warmup=args.warmup,
        processes=args.processes,
        timeout=args.timeout,
        on_progress=on_progress if sys.stderr.isatty() else None,
        on_window=on_window if args.metrics_url else None,
        tls=tls,
        token=token,
    )
    if previous:
        print(file=sys.stderr)
    batch_sizes = scrape.difference(scrapes["start"], scrapes["end"]) if args.metrics_url else None
    summary = report.summarize(
        result,
        target=args.target,
        rpc=args.rpc,
        items=args.items,
        concurrency=args.concurrency,
        processes=args.processes,
        warmup=args.warmup,
        batch_sizes=batch_sizes,
    )
    print(json.dumps(summary.to_json(), indent=2) if args.json else report.table(summary))
    return 0


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def register(commands: Any) -> None:
    bench = commands.add_parser(
        "bench",
        help="load a running server and report throughput, latency and batch sizes",
        description=(
            "Closed-loop load: CONCURRENCY callers, each sending one request after another, spread over "
            "PROCESSES client processes. The request is built once; responses are not parsed."
        ),
        epilog=(
            "example:\n"
            "  vae bench --rpc decode --items 1 --concurrency 64 --duration 30 "
            "--metrics-url http://localhost:8000/metrics"
        ),
    )
    bench.add_argument("--target", default="localhost:50051", help="HOST:PORT of the gRPC server")
    bench.add_argument("--rpc", choices=RPCS, default="decode", help="the call to load the server with")
    bench.add_argument(
        "--items", type=_positive(int), default=1, help="latents, images or samples per request"
    )
    bench.add_argument("--concurrency", type=_positive(int), default=16, help="callers in flight")
    bench.add_argument("--duration", type=_positive(float), default=10.0, help="measured seconds")
    bench.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    bench.add_argument("--processes", type=_positive(int), default=1, help="client processes")
    bench.add_argument(
        "--output-dtype", choices=["float32", "uint8"], default="float32", help="images returned as"
    )
    bench.add_argument("--model", default="", help="model name (default: the server's default)")
    bench.add_argument("--version", type=int, default=0, help="model version (default: the newest)")
    bench.add_argument("--timeout", type=_positive(float), default=30.0, help="deadline per call, seconds")
    bench.add_argument(
        "--metrics-url",
        default=None,
        help="the server's Prometheus endpoint, e.g. http://localhost:8000/metrics",
    )
    bench.add_argument("--json", action="store_true", help="print the report as JSON")
    add_token_flag(bench)
    add_tls_flags(bench)
    bench.set_defaults(handler=_bench)
