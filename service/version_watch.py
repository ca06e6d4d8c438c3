"""Whether a version directory's files changed since the server last looked: loaded and refused versions.

A reload looks at every version directory. Hashing every file of every version each time would cost
seconds, so each look first compares a signature (name, size and modification time of each file)
with the one seen last; only a loaded version whose signature moved is hashed, and only a refused
version whose signature moved is tried again.
"""

from __future__ import annotations

from pathlib import Path

from repository.errors import ManifestError
from repository.manifest import Manifest, file_sha256, read_manifest

# Name, size and modification time of each file in a version directory.
FileSignature = tuple[tuple[str, int, int], ...]


def file_signature(path: Path) -> FileSignature:
    """Name, size and modification time of each file in a version directory."""
    try:
        return tuple(
            sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.iterdir() if f.is_file())
        )
    except OSError:  # removed while we looked: nothing to compare with
        return ()


class VersionWatch:
    """The signatures last seen of loaded versions and of refused ones, by (name, version)."""

    def __init__(self) -> None:
        # Loaded versions: their files when they loaded, or when a touch was found to change nothing
        # (then they are hashed again only if touched again).
        self._loaded: dict[tuple[str, int], FileSignature] = {}
        # Versions that failed to load or changed after loading: skipped (no new log line or metric
        # every reload) until their files change.
        self._refused: dict[tuple[str, int], FileSignature] = {}

    def loaded(self, manifest: Manifest, files: FileSignature) -> None:
        """`files`: the signature taken before verifying, so that a change after it is seen next time."""
        self._loaded[manifest.name, manifest.version] = files

    def changed(self, path: Path, manifest: Manifest, files: FileSignature) -> bool:
        """Whether a loaded version's files on disk now hold something else (not merely touched)."""
        key = (manifest.name, manifest.version)
        if files == self._loaded[key]:
            return False
        if _content_changed(path, manifest):
            del self._loaded[key]
            return True
        self._loaded[key] = files
        return False

    def refuse(self, name: str, version: int, files: FileSignature) -> None:
        self._refused[name, version] = files

    def refused_as_is(self, name: str, version: int, files: FileSignature) -> bool:
        """Whether the version was refused with these very files: then trying it again is pointless."""
        return self._refused.get((name, version)) == files


def _content_changed(path: Path, manifest: Manifest) -> bool:
    try:
        if read_manifest(path) != manifest:
            return True
        return any(file_sha256(path / file) != digest for file, digest in manifest.files().items())
    except (OSError, ManifestError):
        return True  # a file it was loaded from is gone, or model.json no longer reads
