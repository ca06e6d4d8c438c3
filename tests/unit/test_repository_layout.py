"""The repository on disk: model and version listing, version numbers never reused, staged publishing."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any

import pytest

from repository.errors import ModelNotFoundError, RepositoryError
from repository.layout import (
    HIGHEST_VERSION_FILE,
    check_new_version,
    highest_version,
    list_models,
    list_versions,
    next_version,
    publish_version,
    record_version,
    stage_version,
    validate_model_name,
    version_dir,
)


def test_versions_are_canonical_positive_integers(tmp_path: Path) -> None:
    for name in ("1", "2", "10", "01", "0", "latest", ".staging-x"):
        (tmp_path / "toy" / name).mkdir(parents=True)
    (tmp_path / "toy" / "7").write_text("a file, not a version")
    (tmp_path / ".staging-abc").mkdir()
    assert list_models(tmp_path) == ["toy"]
    assert list_versions(tmp_path, "toy") == [1, 2, 10]
    assert next_version(tmp_path, "toy") == 11
    assert next_version(tmp_path, "new") == 1
    assert version_dir(tmp_path, "toy", 10) == tmp_path / "toy" / "10"


def test_deleting_the_newest_version_does_not_free_its_number(tmp_path: Path) -> None:
    for version in (1, 2, 3):
        (tmp_path / "toy" / str(version)).mkdir(parents=True)
        record_version(tmp_path, "toy", version)
    (tmp_path / "toy" / "3").rmdir()
    assert list_versions(tmp_path, "toy") == [1, 2]
    assert (highest_version(tmp_path, "toy"), next_version(tmp_path, "toy")) == (3, 4)
    # The record is a hidden file: neither a model nor a version.
    assert (tmp_path / "toy" / HIGHEST_VERSION_FILE).read_text() == "3\n"
    assert list_models(tmp_path) == ["toy"]


def test_a_repository_without_the_record_numbers_from_its_newest_version(tmp_path: Path) -> None:
    # The bundled models/mnist and repositories from before the record: the directories decide.
    (tmp_path / "toy" / "4").mkdir(parents=True)
    assert (highest_version(tmp_path, "toy"), next_version(tmp_path, "toy")) == (4, 5)
    assert highest_version(tmp_path, "new") == 0
    # A record behind the directories (written by hand, or restored) never lowers the number.
    (tmp_path / "toy" / HIGHEST_VERSION_FILE).write_text("2\n")
    assert next_version(tmp_path, "toy") == 5
    record_version(tmp_path, "toy", 1)
    assert (tmp_path / "toy" / HIGHEST_VERSION_FILE).read_text() == "4\n"


def test_an_issued_number_is_refused_even_after_its_version_is_gone(tmp_path: Path) -> None:
    (tmp_path / "toy" / "2").mkdir(parents=True)
    (tmp_path / "toy" / HIGHEST_VERSION_FILE).write_text("5\n")
    with pytest.raises(RepositoryError, match=r"toy/2 already exists; versions are immutable.*\(6\)"):
        check_new_version(tmp_path, "toy", 2)
    for gone in (5, 3):
        with pytest.raises(
            RepositoryError, match=rf"version {gone} of 'toy' is at or below 5.*never reused.*\(6\)"
        ):
            check_new_version(tmp_path, "toy", gone)
    with pytest.raises(RepositoryError, match="positive integer"):
        check_new_version(tmp_path, "toy", 0)
    check_new_version(tmp_path, "toy", 6)
    check_new_version(tmp_path, "new", 1)


def test_a_corrupt_record_is_refused_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / HIGHEST_VERSION_FILE).write_text("three")
    with pytest.raises(RepositoryError, match=r"\.highest-version must hold .*'three'.*delete it"):
        next_version(tmp_path, "toy")
    # Serving lists versions too: it goes on, and leaves the record for the export to refuse.
    (tmp_path / "toy" / "1").mkdir()
    assert list_versions(tmp_path, "toy") == [1]
    assert (tmp_path / "toy" / HIGHEST_VERSION_FILE).read_text() == "three"


def test_missing_model_or_version_names_what_exists(tmp_path: Path) -> None:
    (tmp_path / "toy" / "1").mkdir(parents=True)
    with pytest.raises(ModelNotFoundError, match=r"no model 'mnist' in .* \(models there: toy\)"):
        list_versions(tmp_path, "mnist")
    with pytest.raises(ModelNotFoundError, match=r"has no version 2 \(versions: \[1\]\)"):
        version_dir(tmp_path, "toy", 2)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        list_models(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "..", "-x", "a b", "x" * 65])
def test_invalid_model_names_are_refused(name: str) -> None:
    with pytest.raises(RepositoryError, match="invalid model name"):
        validate_model_name(name)


def test_a_version_published_by_rename_keeps_its_number_after_it_is_deleted(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    (repo / "toy" / "1").mkdir(parents=True)
    record_version(repo, "toy", 1)
    staged = tmp_path / "staging" / "toy" / "7"
    staged.mkdir(parents=True)
    staged.rename(repo / "toy" / "7")  # docs/api.md's publish by `mv`, which bypasses the record
    assert list_versions(repo, "toy") == [1, 7]  # as the server's loader lists them on every (re)load
    shutil.rmtree(repo / "toy" / "7")
    assert (highest_version(repo, "toy"), next_version(repo, "toy")) == (7, 8)
    assert (repo / "toy" / HIGHEST_VERSION_FILE).read_text() == "7\n"


def test_listing_a_read_only_repository_still_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "toy" / "1").mkdir(parents=True)
    (tmp_path / "toy" / "7").mkdir()
    (tmp_path / "toy" / HIGHEST_VERSION_FILE).write_text("1\n")

    def read_only(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    # The service mounts repositories read-only (docker-compose.yml): recording is best effort there.
    monkeypatch.setattr(Path, "write_text", read_only)
    assert list_versions(tmp_path, "toy") == [1, 7]
    assert version_dir(tmp_path, "toy", 7) == tmp_path / "toy" / "7"
    assert next_version(tmp_path, "toy") == 8  # the directory still counts while it is there
    monkeypatch.undo()
    assert (tmp_path / "toy" / HIGHEST_VERSION_FILE).read_text() == "1\n"


def test_deleting_the_record_and_the_version_frees_the_number_on_purpose(tmp_path: Path) -> None:
    # `make model` rebuilds the bundled version 2 this way (docs/export.md).
    for version in (1, 2):
        (tmp_path / "toy" / str(version)).mkdir(parents=True)
    assert list_versions(tmp_path, "toy") == [1, 2]
    shutil.rmtree(tmp_path / "toy" / "2")
    (tmp_path / "toy" / HIGHEST_VERSION_FILE).unlink()
    check_new_version(tmp_path, "toy", 2)
    assert next_version(tmp_path, "toy") == 2


def test_a_staged_version_is_published_by_one_rename_and_recorded(tmp_path: Path) -> None:
    with stage_version(tmp_path, "toy") as staged:
        assert staged.version == 1
        assert staged.path.parent.parent.parent == tmp_path  # hidden: the service skips .staging-*
        assert staged.path.parent.parent.name.startswith(".staging-")
        (staged.path / "model.json").write_text("{}")
        published = publish_version(staged)
    assert published == tmp_path / "toy" / "1"
    assert (published / "model.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]
    assert (tmp_path / "toy" / HIGHEST_VERSION_FILE).read_text() == "1\n"


def test_a_failed_stage_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="the export failed"), stage_version(tmp_path, "toy", 3) as staged:
        (staged.path / "encoder.onnx").write_bytes(b"half a graph")
        raise RuntimeError("the export failed")
    assert list(tmp_path.iterdir()) == []


def test_publishing_checks_the_number_again(tmp_path: Path) -> None:
    with stage_version(tmp_path, "toy") as staged:
        (tmp_path / "toy" / "1").mkdir(parents=True)  # another export took the number meanwhile
        with pytest.raises(RepositoryError, match=r"already exists.*\(changed during the export; nothing"):
            publish_version(staged)
    assert list((tmp_path / "toy" / "1").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]
