"""Print pyproject.toml's dependencies plus the named extras, one per line (the images' pip layer).

The images install these before copying the source, so editing the code does not re-download
onnxruntime or torch: `python docker/requirements.py serve > /tmp/requirements.txt`.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def requirements(extras: list[str]) -> list[str]:
    """The base dependencies and those of each extra, in order, without repeats."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    known = project["optional-dependencies"]
    unknown = [extra for extra in extras if extra not in known]
    if unknown:
        raise SystemExit(f"unknown extra(s) {unknown}; pyproject.toml defines {sorted(known)}")
    lines = [*project["dependencies"], *(line for extra in extras for line in known[extra])]
    return list(dict.fromkeys(lines))


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1:])))
