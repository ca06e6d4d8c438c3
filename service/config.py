"""The server's configuration: one frozen dataclass, loaded with precedence CLI > VAE_* environment > default.

Every field documents its flag (`--max-batch-items`) and environment variable (`VAE_MAX_BATCH_ITEMS`);
`vae serve --help` and docs/api.md list them. Invalid values raise ValueError saying how to fix them.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repository.placement import DEVICE_PATTERN
from service.event_loop import EVENT_LOOPS
from wire.channel import DEFAULT_MAX_MESSAGE_BYTES

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
# A count that follows the device unless set: `auto` (or 0) in flags, variables and fields, resolved
# once the placement is known (service/sizing.py).
AUTO = 0


def _option(default: Any, help: str, *, auto: bool = False) -> Any:
    return field(default=default, metadata={"help": help, "auto": auto})


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    """Everything `vae serve` can be told; field NAME is flag --NAME (dashes) and variable VAE_NAME."""

    repo: Path = field(
        default=Path("models"),
        metadata={"help": "model repository: NAME/VERSION/{encoder,decoder}.onnx, model.json"},
    )
    model: str = _option("mnist", "default model: answers requests that name no model")
    host: str = _option("[::]", "address to listen on")
    port: int = _option(50051, "gRPC port (0 picks a free one)")
    metrics_port: int = _option(8000, "Prometheus /metrics HTTP port (0 picks a free one)")
    device: str = _option("auto", "auto, cpu, cuda or cuda:N (auto takes CUDA when onnxruntime offers it)")
    # TF32 is the CUDA provider's own default, ~1e-3 off the CPU; exact float32 is ~1e-6 (docs/gpu.md).
    cuda_tf32: bool = _option(
        False, "on CUDA, let matmuls and convolutions round their inputs to TF32: faster, ~1e-3 off float32"
    )
    workers: int = _option(
        AUTO,
        "server processes sharing the gRPC port (SO_REUSEPORT), each with its own batchers and sessions "
        "(auto: 1 on CPU; on CUDA one per 4 cores, at most 8)",
        auto=True,
    )
    # Measured against independent workers on a GPU by benchmarks/gpu.py (docs/gpu.md).
    device_executor: bool = _option(
        False,
        "one process holds every graph's session (one CUDA context) and runs the workers' batches, "
        "joining those that wait together; the workers only serve gRPC",
    )
    # systemd's StartLimitBurst idea: replacing forever would hide a crash loop from the orchestrator.
    worker_restarts: int = _option(
        5,
        "with --workers, dead workers are replaced; more deaths than this within the window end the service",
    )
    worker_restart_window_seconds: float = _option(60.0, "the window --worker-restarts counts deaths in")
    # onnxruntime sizes its CPU pools to the host, not the container, so the counts are explicit.
    intra_op_threads: int = _option(1, "onnxruntime threads per graph run (CPU)")
    inter_op_threads: int = _option(1, "onnxruntime threads across independent nodes (CPU)")
    # Spinning threads burn the cores the gRPC event loop needs on a small machine.
    spinning: bool = _option(False, "let onnxruntime's idle CPU threads spin instead of sleeping")
    max_batch_items: int = _option(
        AUTO,
        "items per executed batch at most; larger requests are split (auto: 256 on CPU, 4096 on CUDA)",
        auto=True,
    )
    max_delay_ms: float = _option(
        0.0, "wait at most this long after the first item for more (0: run at once)"
    )
    # Measured in docs/benchmarks.md: 1 ms left one-core batches at ~2 items, 5 ms matched the
    # minimal micro-batcher; a lone caller never waits (service/batcher.py).
    max_gather_ms: float = _option(
        5.0,
        "after a batch, wait up to this long for its callers to come back and join the next one",
    )
    # Admission is by time (service/admission.py); the item count only bounds the queue's memory.
    max_queue_items: int = _option(65536, "queued items per graph at most (a memory backstop)")
    # Items of any size need a bound in bytes too; it is also the most one request's items may hold.
    max_queue_bytes: int = _option(
        256 * 2**20,
        "queued bytes per graph and item shape at most (a memory backstop); also one request's float32 items",
    )
    # One image's memory grows with its pixels: SD 1.x's decoder takes 4.4 GiB at 1024x1024 (docs/any-vae.md).
    max_image_pixels: int = _option(
        1024 * 1024,
        "height x width of an image at most, for models of any size (latents: the images they decode to)",
    )
    max_queue_delay_ms: float = _option(
        5000.0,
        "refuse a request (RESOURCE_EXHAUSTED) whose queued work ahead would take longer (0: no bound)",
    )
    max_deadline_seconds: float = _option(
        300.0, "the deadline of calls that set none or a longer one: no call runs longer unbounded"
    )
    max_request_items: int = _option(4096, "images, latents, samples or steps per unary request")
    max_stream_items: int = _option(1_000_000, "samples per SampleStream request")
    max_posterior_samples: int = _option(64, "posterior samples per image in Encode")
    max_score_samples: int = _option(1024, "importance samples per image in Score")
    max_receive_message_bytes: int = _option(
        0, "largest gRPC message received (0: what --max-request-items of the largest model needs)"
    )
    max_send_message_bytes: int = _option(DEFAULT_MAX_MESSAGE_BYTES, "largest gRPC message sent")
    grace_seconds: float = _option(10.0, "on SIGTERM/SIGINT, time admitted requests get to finish")
    reload_interval_seconds: float = _option(
        0.0, "look for new model versions this often (0: only when sent SIGHUP)"
    )
    # Empty paths switch a feature off: plaintext, no client certificates, no token.
    tls_cert: str = _option("", "PEM certificate chain: with --tls-key, serve TLS instead of plaintext")
    tls_key: str = _option("", "PEM private key of --tls-cert")
    tls_client_ca: str = _option("", "PEM CA certificates: require client certificates they signed (mTLS)")
    auth_token_file: str = _option(
        "", "file holding the bearer token every VaeService call must send (health stays open)"
    )
    timing_trailers: bool = _option(
        False, "send x-queue-ms and x-compute-ms trailing metadata with every answer (costs each call)"
    )
    log_level: str = _option("INFO", "DEBUG, INFO, WARNING or ERROR")
    log_format: str = _option("text", "text, or json: one JSON object per line (docs/observability.md)")
    # Off by default, like the two below: each costs every call (docs/observability.md measures it).
    access_log_sample: float = _option(
        0.0, "fraction of successful calls that get an access log line; failed calls always do (0: none)"
    )
    request_ids: bool = _option(
        False, "read x-request-id from each call, send it back and name it in the call's log lines"
    )
    otlp_endpoint: str = _option(
        "", "send OpenTelemetry traces over OTLP/gRPC here (http://HOST:4317); OTEL_* variables apply"
    )
    event_loop: str = _option("uvloop", "uvloop (less CPU per request) or asyncio (the standard library's)")

    @property
    def supervised(self) -> bool:
        """Served by service/workers.py's supervisor: worker processes sharing the port."""
        return self.workers > 1 or self.device_executor

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            # Frozen: the one way to store a coerced value during construction.
            object.__setattr__(
                self, spec.name, _typed(spec.name, type(spec.default), getattr(self, spec.name))
            )
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        for name in ("port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(
                    f"{name} must be in 0..65535 (0 picks a free port), got {getattr(self, name)}"
                )
        positive = (
            "workers",
            "intra_op_threads",
            "inter_op_threads",
            "max_batch_items",
            "max_queue_items",
            "max_queue_bytes",
            "max_image_pixels",
            "max_request_items",
            "max_stream_items",
            "max_posterior_samples",
            "max_score_samples",
            "max_send_message_bytes",
        )
        for name in positive:
            value = getattr(self, name)
            if name in _AUTO_FIELDS and value < 0:
                raise ValueError(f"{name} must be auto (or 0) or at least 1, got {value}")
            if name not in _AUTO_FIELDS and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.max_queue_items < self.max_batch_items:
            raise ValueError(
                f"max_queue_items ({self.max_queue_items}) must be at least max_batch_items "
                f"({self.max_batch_items}), or no batch could ever fill"
            )
        if self.max_queue_items < self.max_request_items:
            raise ValueError(
                f"max_queue_items ({self.max_queue_items}) must be at least max_request_items "
                f"({self.max_request_items}), or the largest requests could never be admitted"
            )
        for name in ("max_delay_ms", "max_gather_ms"):
            if not 0 <= getattr(self, name) <= 1000:
                raise ValueError(f"{name} must be in 0..1000, got {getattr(self, name)}")
        if self.worker_restarts < 0:
            raise ValueError(
                f"worker_restarts must be at least 0 (0: no replacement), got {self.worker_restarts}"
            )
        if not self.worker_restart_window_seconds > 0:
            raise ValueError(
                f"worker_restart_window_seconds must be more than 0, got {self.worker_restart_window_seconds}"
            )
        if self.max_receive_message_bytes < 0:
            raise ValueError(
                "max_receive_message_bytes must be at least 0 (0: derived), "
                f"got {self.max_receive_message_bytes}"
            )
        if self.max_queue_delay_ms < 0:
            raise ValueError(
                f"max_queue_delay_ms must be at least 0 (0: no bound), got {self.max_queue_delay_ms}"
            )
        if not self.max_deadline_seconds > 0:
            raise ValueError(f"max_deadline_seconds must be more than 0, got {self.max_deadline_seconds}")
        if self.grace_seconds < 0:
            raise ValueError(f"grace_seconds must be at least 0, got {self.grace_seconds}")
        if self.reload_interval_seconds < 0:
            raise ValueError(
                f"reload_interval_seconds must be at least 0 (0: reload on SIGHUP only), "
                f"got {self.reload_interval_seconds}"
            )
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError(
                f"{setting('tls_cert')} and {setting('tls_key')} go together: "
                "set both to serve TLS, or neither"
            )
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError(
                f"{setting('tls_client_ca')} (mutual TLS) needs TLS: set {setting('tls_cert')} "
                f"and {setting('tls_key')} too"
            )
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"log_level must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format must be text or json, got {self.log_format!r}")
        if not 0 <= self.access_log_sample <= 1:  # NaN fails too
            raise ValueError(
                "access_log_sample must be in 0..1 (0: no access log, 1: every call), "
                f"got {self.access_log_sample}"
            )
        if self.event_loop not in EVENT_LOOPS:
            raise ValueError(f"event_loop must be {' or '.join(EVENT_LOOPS)}, got {self.event_loop!r}")

    @classmethod
    def load(cls, cli: Mapping[str, Any], env: Mapping[str, str]) -> ServiceConfig:
        """CLI values that are not None win, then VAE_<NAME> variables, then the defaults."""
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            if cli.get(spec.name) is not None:
                values[spec.name] = cli[spec.name]
            elif (raw := env.get(env_var(spec.name))) is not None:
                values[spec.name] = _parse(spec.name, type(spec.default), raw)
        return cls(**values)


_AUTO_FIELDS = frozenset(
    spec.name for spec in dataclasses.fields(ServiceConfig) if spec.metadata.get("auto", False)
)


def config_from_flags(flags: Sequence[str], env: Mapping[str, str]) -> ServiceConfig:
    """The configuration `vae serve FLAGS` would run with, given environment `env`."""
    parser = argparse.ArgumentParser(prog="vae serve")
    add_flags(parser)
    return ServiceConfig.load(vars(parser.parse_args(list(flags))), env)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ServiceConfig field; None means "not given", so VAE_* and defaults still apply."""
    for spec in dataclasses.fields(ServiceConfig):
        kind = type(spec.default)
        default = "auto" if spec.metadata.get("auto", False) else spec.default
        help = f"{spec.metadata['help']} [{env_var(spec.name)}; default {default}]"
        if kind is bool:
            parser.add_argument(
                flag(spec.name), action=argparse.BooleanOptionalAction, default=None, help=help
            )
        elif spec.metadata.get("auto", False):
            parser.add_argument(
                flag(spec.name), type=_count_or_auto, default=None, metavar="N|auto", help=help
            )
        else:
            parser.add_argument(
                flag(spec.name), type=kind, default=None, metavar=spec.name.upper(), help=help
            )


def setting(name: str) -> str:
    """How a user sets a field: its flag and its variable, e.g. --tls-key (VAE_TLS_KEY)."""
    return f"{flag(name)} ({env_var(name)})"


def env_var(name: str) -> str:
    return f"VAE_{name.upper()}"


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _count_or_auto(raw: str) -> int:
    """A flag's text `auto` as AUTO, else its integer (argparse prints the error with the flag)."""
    if raw.strip().lower() == "auto":
        return AUTO
    try:
        return int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or auto, got {raw!r}") from None


def _parse(name: str, kind: type[Any], raw: str) -> Any:
    """An environment variable's text as the field's type."""
    if name in _AUTO_FIELDS:
        try:
            return _count_or_auto(raw)
        except argparse.ArgumentTypeError:
            raise ValueError(f"{env_var(name)} must be an integer or auto, got {raw!r}") from None
    if kind is bool:
        if raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        raise ValueError(f"{env_var(name)} must be one of 1/0, true/false, yes/no, on/off, got {raw!r}")
    if issubclass(kind, Path):
        return Path(raw)
    try:
        return kind(raw)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise ValueError(f"{env_var(name)} must be {expected}, got {raw!r}") from None


def _typed(name: str, kind: type[Any], value: Any) -> Any:
    """`value` as a field of type `kind`: a str becomes a Path, an int a float; anything else must match.

    A wrong type would otherwise pass construction and fail far from its cause (a str repo has no
    `/`, a str port fails inside grpc).
    """
    if issubclass(kind, Path):  # PosixPath or WindowsPath: the default's type
        if isinstance(value, str | Path):
            return Path(value)
        kind = Path
    # bool is an int to Python, never what an int or float field means.
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    expected = {Path: "a path (str or pathlib.Path)", bool: "a bool", int: "an int", float: "a number"}
    raise ValueError(
        f"{name} must be {expected.get(kind, f'a {kind.__name__}')}, got {type(value).__name__} {value!r}; "
        "convert it first, or use ServiceConfig.load, which parses text"
    )
