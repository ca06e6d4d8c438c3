"""The server's log records: text or JSON lines, tagged with the request id of the call they are about.

`configure` sets up a server process's logging (`vae serve`, and each `--workers` process). While
a call with a request id is being answered (service/call_observer.py), CURRENT_CALL holds it in that
call's task, and every record logged there carries its request id (and its trace id when traced).
The access log is the logger `vae.access`: one record per call, with the fields of ACCESS_FIELDS.
"""

from __future__ import annotations

import contextvars
import json
import logging
from datetime import UTC, datetime
from typing import Protocol

from service.config import ServiceConfig

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(tag)s: %(message)s"
ACCESS_LOGGER = "vae.access"
# What an access record adds to a JSON line, in this order (service/call_observer.py fills them in).
ACCESS_FIELDS = ("method", "model", "version", "code", "duration_ms", "queue_ms", "compute_ms", "items")
_TAGS = ("request_id", "trace_id", "span_id")
# grpc's logger for what fails in its core while answering a call.
_GRPC_CORE_LOGGER = "grpc._cython.cygrpc"


class Tagged(Protocol):
    """A call being answered, as its log records see it (service/call_observer.py's ObservedCall)."""

    @property
    def request_id(self) -> str: ...

    def trace_ids(self) -> tuple[str, str] | None: ...


# Per task: grpc.aio answers each call in a task of its own, which copies the context.
CURRENT_CALL: contextvars.ContextVar[Tagged | None] = contextvars.ContextVar("vae_call", default=None)


class _Tags(logging.Filter):
    """Puts the current call's ids (and the worker's index) on every record the handler writes."""

    def __init__(self, worker: int | None) -> None:
        super().__init__()
        self._worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self._worker
        call = CURRENT_CALL.get()
        if call is not None:
            record.request_id = call.request_id
            if (ids := call.trace_ids()) is not None:
                record.trace_id, record.span_id = ids
        request_id = getattr(record, "request_id", None)
        record.tag = f" [{request_id}]" if request_id else ""
        return True


class _ClientGone(logging.Filter):
    """grpc's traceback for an answer it could not send: a DEBUG line, without the traceback.

    The client had cancelled, run out of time, or refused the message (over its own size limit):
    the client's ending, counted as such (service/calls.py), not a server error.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith("ExecuteBatchError"):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.exc_info, record.exc_text = None, None
        return logging.getLogger().isEnabledFor(logging.DEBUG)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: timestamp, level, logger, message and whichever ids and fields it has."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ("worker", *_TAGS, *ACCESS_FIELDS):
            if (value := getattr(record, name, None)) is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(config: ServiceConfig, worker: int | None = None) -> None:
    """The process's logging: config.log_level, in config.log_format, on standard error."""
    handler = logging.StreamHandler()
    handler.addFilter(_Tags(worker))
    if config.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        prefix = "" if worker is None else f"worker {worker}: "
        handler.setFormatter(logging.Formatter(prefix + TEXT_FORMAT))
    logging.basicConfig(level=config.log_level.upper(), handlers=[handler])
    logging.getLogger(_GRPC_CORE_LOGGER).addFilter(_ClientGone())
