"""The model repository on disk: models/NAME/VERSION/{encoder.onnx, decoder.onnx, model.json}."""

from __future__ import annotations

import os
import re
from pathlib import Path

from repository.errors import ModelNotFoundError, RepositoryError
from repository.manifest import NAME_PATTERN


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
    """Version numbers of a model, ascending; only positive integer directory names count."""
    model_dir = repo / validate_model_name(name)
    if not model_dir.is_dir():
        known = ", ".join(list_models(repo)) or "none"
        raise ModelNotFoundError(f"no model {name!r} in {repo} (models there: {known})")
    # "01" would alias version 1; only canonical positive integers count.
    return sorted(
        int(p.name) for p in model_dir.iterdir() if p.is_dir() and re.fullmatch(r"[1-9][0-9]*", p.name)
    )


def version_dir(repo: Path, name: str, version: int) -> Path:
    """The directory of an existing version; raises ModelNotFoundError listing the versions there."""
    versions = list_versions(repo, name)
    if version not in versions:
        raise ModelNotFoundError(f"model {name!r} in {repo} has no version {version} (versions: {versions})")
    return repo / name / str(version)


# Versions are immutable names: a number, once issued, always means the same graphs, even after its
# directory is deleted. The highest number ever issued is kept beside the versions, because the
# directories alone forget a deleted newest version.
HIGHEST_VERSION_FILE = ".highest-version"


def highest_version(repo: Path, name: str) -> int:
    """The highest version number ever issued for a model, 0 for none.

    The larger of the record and the newest directory, so a repository without the record (one
    written before it existed, or by hand) still works.
    """
    model_dir = repo / validate_model_name(name)
    if not model_dir.is_dir():
        return 0
    record = model_dir / HIGHEST_VERSION_FILE
    recorded = 0
    if record.is_file():
        text = record.read_text(encoding="utf-8").strip()
        if not re.fullmatch(r"[1-9][0-9]*", text):
            raise RepositoryError(
                f"{record} must hold the highest version number ever issued, got {text[:20]!r}; restore "
                "it, or delete it to fall back to the newest version directory"
            )
        recorded = int(text)
    return max([recorded, *list_versions(repo, name)])


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
    model_dir = repo / validate_model_name(name)
    highest = max(highest_version(repo, name), version)
    temporary = model_dir / f"{HIGHEST_VERSION_FILE}.{os.getpid()}.tmp"
    temporary.write_text(f"{highest}\n", encoding="utf-8")
    temporary.replace(model_dir / HIGHEST_VERSION_FILE)
