"""Typed access to model.json's JSON objects, with errors that name the field's path."""

from __future__ import annotations

from typing import Any, cast

from repository.errors import ManifestError


def is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class Fields:
    """One JSON object of model.json: its fields by type, or a ManifestError naming the field."""

    def __init__(self, data: Any, source: str, where: str) -> None:
        if not isinstance(data, dict):
            raise ManifestError(f"{source}: {where or 'the top level'} must be a JSON object")
        self.data = cast(dict[str, Any], data)
        self.source = source
        self.where = where

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, *kinds: type[Any]) -> Any:
        if key not in self.data:
            raise ManifestError(f"{self.source}: missing field {self.path(key)!r}")
        value = self.data[key]
        # bool is an int in Python, but a JSON true is never a valid count or size.
        if not isinstance(value, kinds) or isinstance(value, bool):
            expected = " or ".join(kind.__name__ for kind in kinds)
            raise ManifestError(f"{self.source}: field {self.path(key)!r} must be {expected}, got {value!r}")
        return value

    def flag(self, key: str) -> bool:
        if not isinstance(self.data.get(key), bool):
            raise ManifestError(f"{self.source}: field {self.path(key)!r} must be true or false")
        return cast(bool, self.data[key])

    def child(self, key: str) -> Fields:
        return Fields(self.get(key, dict), self.source, self.path(key))

    def positive_int(self, key: str) -> int:
        value = self.get(key, int)
        if value < 1:
            raise ManifestError(f"{self.source}: field {self.path(key)!r} must be positive, got {value}")
        return cast(int, value)

    def number(self, key: str) -> float:
        return float(self.get(key, int, float))

    def positive_int_list(self, key: str) -> list[int]:
        values = self.get(key, list)
        if not all(is_positive_int(v) for v in values):
            raise ManifestError(
                f"{self.source}: field {self.path(key)!r} must list positive integers, got {values}"
            )
        return cast(list[int], values)
