"""The service's errors, each carrying the gRPC status code its callers receive, and status_of.

Their place in the project's one error tree is drawn in repository/errors.py:

    ServiceError                 (INTERNAL; the base, never raised itself)
    ├── InvalidArgument          INVALID_ARGUMENT: the request is malformed; the message says how
    │                            (also a ValueError, so the CLI reports it as a user error)
    ├── NotFound                 NOT_FOUND: unknown model or version
    ├── FailedPrecondition       FAILED_PRECONDITION: the model cannot do this (Score of a model
    │                            whose likelihood its files do not determine)
    ├── ResourceExhausted        RESOURCE_EXHAUSTED: the batch queue is full; retry later
    ├── DeadlineExceeded         DEADLINE_EXCEEDED: the deadline passed before the work ran
    ├── Unavailable              UNAVAILABLE: not warmed up yet, or shutting down
    └── Internal                 INTERNAL: a batch failed; the client gets a generic message

status_of is the one place errors become statuses: a ServiceError carries its own, the gRPC-free
errors (the batcher's, and wire's TensorError for a malformed tensor) are mapped here, and any other
exception is logged with its traceback and answered with INTERNAL and a generic message, so no
internals leak to clients.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import grpc

from repository.errors import VaeError
from service.batch_types import BatcherClosed, BatchFailed, Expired, QueueFull
from wire.tensors import TensorError

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal error; the server log has the details"


class ServiceError(VaeError):
    """An error with a status code and a message fit for the client."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL


class InvalidArgument(ServiceError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class Internal(ServiceError):
    code = grpc.StatusCode.INTERNAL


# The statuses of the gRPC-free errors: the batcher's and the wire format's.
_STATUS: dict[type[BaseException], grpc.StatusCode] = {
    QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    BatcherClosed: grpc.StatusCode.UNAVAILABLE,
    Expired: grpc.StatusCode.DEADLINE_EXCEEDED,
    BatchFailed: grpc.StatusCode.INTERNAL,
    TensorError: grpc.StatusCode.INVALID_ARGUMENT,
}


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and message a client receives for an exception raised while answering it."""
    if isinstance(exc, ServiceError):
        return exc.code, str(exc)
    if (code := _STATUS.get(type(exc))) is not None:
        return code, str(exc)
    log.error("unexpected error while answering an RPC", exc_info=exc)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
