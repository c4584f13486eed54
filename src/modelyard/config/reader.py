"""Typed access to one mapping of a fleet file, with the field path for error messages."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Mapping


class ConfigError(ValueError):
    """The fleet configuration is invalid; the message says where and why."""

    def __init__(self, source: str, path: str, problem: str) -> None:
        self.source = source
        self.path = path
        self.problem = problem
        where = f"{source}: {path}" if path else source
        super().__init__(f"{where}: {problem}")


class Reader:
    """Typed access to one mapping of the file, with the path for messages."""

    def __init__(self, source: str, path: str, data: Any) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(source, path, f"expected a mapping, got {show(data)}")
        self.source, self.path, self.data = source, path, data
        self.used: set[str] = set()

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.source, self.at(key), problem)

    def get(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.data.get(key, default)

    def string(self, key: str, default: str | None = None) -> str:
        value = self.get(key, default)
        if value is None:
            raise self.fail(key, "is required")
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"expected a non-empty string, got {show(value)}")
        return value

    def integer(self, key: str, default: int, minimum: int = 1) -> int:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, f"expected an integer >= {minimum}, got {show(value)}")
        return value

    def number(self, key: str, default: float, minimum: float = 0.0) -> float:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            raise self.fail(key, f"expected a number >= {minimum:g}, got {show(value)}")
        return float(value)

    def choice(self, key: str, options: tuple[str, ...], default: str) -> str:
        value = self.get(key, default)
        if value not in options:
            raise self.fail(key, f"expected one of {', '.join(options)}, got {show(value)}")
        return str(value)

    def optional_number(self, key: str, minimum: float = 0.0, maximum: float | None = None) -> float | None:
        if self.data.get(key) is None:
            self.used.add(key)
            return None
        value = self.number(key, 0.0, minimum)
        if maximum is not None and value > maximum:
            raise self.fail(key, f"expected a number <= {maximum:g}, got {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {show(value)}")
        return value

    def names(self, key: str) -> tuple[str, ...]:
        value = self.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(key, f"expected a list of names, got {show(value)}")
        return tuple(value)

    def each(self, key: str, what: str) -> Iterator[Reader]:
        """A reader for every mapping in the list at ``key`` (absent: none)."""
        raw = self.get(key) or []
        if not isinstance(raw, list):
            raise self.fail(key, f"expected a list of {what}")
        for i, body in enumerate(raw):
            yield Reader(self.source, f"{self.at(key)}[{i}]", body)

    def child(self, key: str) -> Reader:
        return Reader(self.source, self.at(key), self.get(key, {}) or {})

    def reject_unknown(self, allowed: set[str] | None = None) -> None:
        known = self.used if allowed is None else allowed
        for key in self.data:
            if key not in known:
                raise self.fail(str(key), f"unknown field (known: {', '.join(sorted(known))})")


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
