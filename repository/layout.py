"""The model repository on disk: models/NAME/VERSION/{encoder.onnx, decoder.onnx, model.json}.

Also the numbering of versions (never reused) and publishing a staged version into place.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from repository.errors import ModelNotFoundError, RepositoryError
from repository.manifest import NAME_PATTERN

# "01" would alias version 1; only canonical positive integers count.
_NUMBER = re.compile(r"[1-9][0-9]*")


def validate_model_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise RepositoryError(
            f"invalid model name {name!r}: use 1-64 letters, digits, '_', '.' or '-', not starting with "
            "'.', '_' or '-'"
        )
    return name


def list_models(repo: Path) -> list[str]:
    """Model names in a repository, sorted; hidden directories (export staging) are skipped."""
    if not repo.is_dir():
        raise ModelNotFoundError(f"model repository {repo} does not exist")
    return sorted(p.name for p in repo.iterdir() if p.is_dir() and NAME_PATTERN.fullmatch(p.name))


def list_versions(repo: Path, name: str) -> list[int]:
    """Version numbers of a model, ascending; only positive integer directory names count.

    A number above the record of issued numbers is recorded, where the repository is writable, so
    that a version published by hand (`mv`) keeps its number retired after its directory is deleted.
    """
    model_dir = repo / validate_model_name(name)
    if not model_dir.is_dir():
        known = ", ".join(list_models(repo)) or "none"
        raise ModelNotFoundError(f"no model {name!r} in {repo} (models there: {known})")
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and _NUMBER.fullmatch(p.name))
    if versions:
        # Best effort: listing serves models, and must work on a read-only mount or beside a corrupt
        # record (which the next export refuses, with the fix).
        with contextlib.suppress(OSError, RepositoryError):
            _raise_record(model_dir, versions[-1])
    return versions


def version_dir(repo: Path, name: str, version: int) -> Path:
    """The directory of an existing version; raises ModelNotFoundError listing the versions there."""
    versions = list_versions(repo, name)
    if version not in versions:
        raise ModelNotFoundError(f"model {name!r} in {repo} has no version {version} (versions: {versions})")
    return repo / name / str(version)


# Versions are immutable names: a number, once issued, always means the same graphs, even after its
# directory is deleted. The highest number ever issued or seen is kept beside the versions, because
# the directories alone forget a deleted newest version.
HIGHEST_VERSION_FILE = ".highest-version"


def highest_version(repo: Path, name: str) -> int:
    """The highest version number ever issued or seen for a model, 0 for none.

    The larger of the record and the newest directory, so a repository without the record (one
    written before it existed, or by hand, or mounted read-only) still works.
    """
    model_dir = repo / validate_model_name(name)
    if not model_dir.is_dir():
        return 0
    return max([*list_versions(repo, name), _recorded(model_dir)])


def next_version(repo: Path, name: str) -> int:
    """One more than the highest version ever issued, or 1: numbers of deleted versions stay retired."""
    return highest_version(repo, name) + 1


def check_new_version(repo: Path, name: str, version: int) -> None:
    """Raise RepositoryError unless `version` is a number never issued before and above all others."""
    if version < 1:
        raise RepositoryError(f"version must be a positive integer, got {version}")
    highest = highest_version(repo, name)
    if (repo / name / str(version)).exists():
        raise RepositoryError(
            f"{repo / name / str(version)} already exists; versions are immutable, so pick another "
            f"--version or omit it to get the next free one ({highest + 1})"
        )
    if version <= highest:
        raise RepositoryError(
            f"version {version} of {name!r} is at or below {highest}, the highest version ever issued; "
            "numbers are never reused, so that a version always names the same model: pick a higher "
            f"--version or omit it to get the next free one ({highest + 1})"
        )


def record_version(repo: Path, name: str, version: int) -> None:
    """Record `version` as issued (the record only grows); written atomically, by rename."""
    _raise_record(repo / validate_model_name(name), version)


def _recorded(model_dir: Path) -> int:
    """The number in the record, 0 when there is none; RepositoryError when it is not a number."""
    record = model_dir / HIGHEST_VERSION_FILE
    if not record.is_file():
        return 0
    text = record.read_text(encoding="utf-8").strip()
    if not _NUMBER.fullmatch(text):
        raise RepositoryError(
            f"{record} must hold the highest version number ever issued, got {text[:20]!r}; restore "
            "it, or delete it to fall back to the newest version directory"
        )
    return int(text)


def _raise_record(model_dir: Path, version: int) -> None:
    """Raise the record to `version` unless it is already there or above."""
    with _exclusive(model_dir):
        if version <= _recorded(model_dir):
            return
        temporary = model_dir / f"{HIGHEST_VERSION_FILE}.{os.getpid()}.tmp"
        temporary.write_text(f"{version}\n", encoding="utf-8")
        temporary.replace(model_dir / HIGHEST_VERSION_FILE)


@contextlib.contextmanager
def _exclusive(model_dir: Path) -> Iterator[None]:
    """Hold the model directory's lock, so that two writers of the record cannot lower it."""
    descriptor = os.open(model_dir, os.O_RDONLY)
    try:
        # Where directories cannot be locked (NFS emulates flock with write locks), the last writer
        # wins: it can only lower the record to a number whose directory it has just seen, and the
        # next listing raises it again.
        with contextlib.suppress(OSError):
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # and with it the lock


@dataclass(frozen=True)
class StagedVersion:
    """A new version being written in a hidden staging directory of its repository (stage_version)."""

    repo: Path
    name: str
    version: int
    path: Path  # where the version's files go


@contextlib.contextmanager
def stage_version(repo: Path, name: str, version: int | None = None) -> Iterator[StagedVersion]:
    """A hidden `.staging-*` directory in `repo` for a new version (default: the next free number).

    Write the version's files into `path`, then publish_version it. The staging directory is removed
    on leaving, whatever happened: the service skips hidden directories, so it never sees half a version.
    """
    validate_model_name(name)
    version = next_version(repo, name) if version is None else version
    check_new_version(repo, name, version)
    repo.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=repo))
    try:
        path = staging / name / str(version)
        path.mkdir(parents=True)
        yield StagedVersion(repo, name, version, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish_version(staged: StagedVersion) -> Path:
    """Move a staged version into place with one rename, and record its number; returns its path."""
    repo, name, version = staged.repo, staged.name, staged.version
    target = repo / name / str(version)
    target.parent.mkdir(exist_ok=True)
    try:  # again: another export may have taken this number, or a higher one, while this one was staged
        check_new_version(repo, name, version)
    except RepositoryError as exc:
        raise RepositoryError(f"{exc} (changed during the export; nothing was written)") from exc
    staged.path.rename(target)
    record_version(repo, name, version)
    return target
