"""The project's one error tree. Every error a user can act on derives from VaeError:

    VaeError                          an error whose message says what to fix; the CLI prints it
    ├── CommandError                  vae_cli: a command cannot run as asked (`vae ...` exits 2)
    ├── RepositoryError               repository: a model repository, model or version is wrong
    │   ├── ModelNotFoundError        no such model, or no such version of it
    │   ├── ManifestError             model.json is missing, unreadable or not format_version 1, 2 or 3
    │   └── VerificationError         a version failed `vae verify` (repository/verify.py)
    ├── ScoringUnsupported            repository/scoring.py: the model's likelihood cannot be scored
    ├── DataError                     training/data.py: a data set is missing, corrupt or mis-shaped
    ├── ExportError                   export: a checkpoint cannot be exported (export/errors.py)
    ├── TensorError                   wire/tensors.py: a malformed vae.v1.Tensor (also a ValueError);
    │                                 service/errors.py answers it INVALID_ARGUMENT
    ├── BatchError                    service/batch_types.py, gRPC-free; service/errors.py maps each
    │   ├── QueueFull                 the batch queue would overflow
    │   ├── BatcherClosed             shutting down or reloading
    │   ├── Expired                   the request's deadline passed while it queued
    │   └── BatchFailed               run_batch raised; the log has the traceback
    └── ServiceError                  service/errors.py: carries the gRPC status its callers receive
        ├── InvalidArgument           INVALID_ARGUMENT (also a ValueError)
        ├── NotFound                  NOT_FOUND
        ├── FailedPrecondition        FAILED_PRECONDITION
        ├── ResourceExhausted         RESOURCE_EXHAUSTED
        ├── DeadlineExceeded          DEADLINE_EXCEEDED
        ├── Unavailable               UNAVAILABLE
        └── Internal                  INTERNAL, with a generic message

Each class lives with the layer that raises it; the roots that lower layers share live here, so no
layer imports upward to catch them. Anything not a VaeError is a bug: it is logged with its traceback.
"""

from __future__ import annotations


class VaeError(Exception):
    """An error whose message tells the user what to fix."""


class CommandError(VaeError):
    """A `vae` command cannot run as asked; printed without a traceback."""


class RepositoryError(VaeError):
    """Something is wrong with a model repository, a model or a version."""


class ModelNotFoundError(RepositoryError):
    """The model or version asked for is not in the repository."""


class ManifestError(RepositoryError):
    """model.json is missing, is not valid JSON, or does not follow format_version 1, 2 or 3."""


class VerificationError(RepositoryError):
    """A version failed `verify_version`; the message lists every failed check."""
