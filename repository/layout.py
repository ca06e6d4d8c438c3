"""The model repository on disk: models/NAME/VERSION/{encoder.onnx, decoder.onnx, model.json}."""

from __future__ import annotations

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


def next_version(repo: Path, name: str) -> int:
    """One more than the newest version, or 1; gaps left by deleted versions are not reused."""
    model_dir = repo / validate_model_name(name)
    return max(list_versions(repo, name), default=0) + 1 if model_dir.is_dir() else 1
