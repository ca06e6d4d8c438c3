"""The service's error hierarchy: each class carries the gRPC status code its callers receive.

    ServiceError                 (INTERNAL; the base, never raised itself)
    ├── InvalidArgument          INVALID_ARGUMENT: the request is malformed; the message says how
    │                            (also a ValueError, so the CLI reports it as a user error)
    ├── NotFound                 NOT_FOUND: unknown model or version
    ├── ResourceExhausted        RESOURCE_EXHAUSTED: the batch queue is full; retry later
    ├── DeadlineExceeded         DEADLINE_EXCEEDED: the deadline passed before the work ran
    ├── Unavailable              UNAVAILABLE: not warmed up yet, or shutting down
    └── Internal                 INTERNAL: a batch failed; the client gets a generic message

The servicer turns a ServiceError into its status in one place; any other exception is logged with
its traceback and answered with INTERNAL and a generic message, so no internals leak to clients.
"""

from __future__ import annotations

from typing import ClassVar

import grpc


class ServiceError(Exception):
    """An error with a status code and a message fit for the client."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL


class InvalidArgument(ServiceError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class Internal(ServiceError):
    code = grpc.StatusCode.INTERNAL
