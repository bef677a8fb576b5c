"""One config key: its type, default and allowed values, and the check that turns a raw value into it.

Pure Python: the analyzer and the method catalog import this without torch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PLACEHOLDER_PATTERN = re.compile(r"PLACEHOLDER|\bTODO\b|\bTBD\b|\?\?\?|<[A-Za-z_ ]+>")


class ConfigError(ValueError):
    """A user mistake in a config: the message is one line naming key, value and what is allowed."""


@dataclass(frozen=True)
class Field:
    """One config key: its type, default and the allowed values."""

    kind: type
    default: Any
    check: Callable[[Any], bool] | None = None
    allowed: str = ""
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] = ()
    parse: Callable[[str, Any], Any] | None = None  # turns accepted spellings into `kind`, or raises ConfigError


Section = dict[str, Field]  # key inside the section (`lr`) -> field


def number(
    kind: type,
    default: Any,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> Field:
    """An int or float field within [low, high] (each end optionally open)."""

    def check(value: float) -> bool:
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return above and below

    if low == -math.inf and high == math.inf:
        return Field(kind, default)
    left, right = ("(" if low_open else "["), (")" if high_open or high == math.inf else "]")
    return Field(kind, default, check, f"a number in {left}{low:g}, {high:g}{right}")


def choice(default: str, *choices: str) -> Field:
    """A string field with a fixed set of values."""
    return Field(str, default, choices=choices)


def text(default: str = "") -> Field:
    return Field(str, default)


def flag(default: bool) -> Field:
    return Field(bool, default)


def coerce(key: str, value: Any, field: Field) -> Any:
    """Check the type of one value (ints pass as floats, 'inf' as infinity) and its range."""
    if isinstance(value, str) and PLACEHOLDER_PATTERN.search(value):
        raise ConfigError(f"key '{key}': value {value!r} is a leftover placeholder; set a real value")
    if field.parse is not None:
        value = field.parse(key, value)
    if field.kind is float and isinstance(value, str) and value.strip().lower() in ("inf", "+inf", ".inf"):
        value = math.inf
    if field.kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = isinstance(value, field.kind) and not (field.kind is not bool and isinstance(value, bool))
    if not ok:
        allowed = f", {field.allowed}" if field.allowed else ""  # e.g. "expected int, a number in [1, inf)"
        raise ConfigError(
            f"key '{key}': value {value!r} has type {type(value).__name__}; expected {field.kind.__name__}{allowed}"
        )
    if field.kind is float and math.isnan(value):
        raise ConfigError(f"key '{key}': value nan is not allowed; expected {field.allowed}")
    choices = field.choices() if callable(field.choices) else field.choices
    if choices and value not in choices:
        raise ConfigError(f"key '{key}': value {value!r} is not allowed; choose one of {', '.join(choices)}")
    if field.check and not field.check(value):
        raise ConfigError(f"key '{key}': value {value!r} is out of range; expected {field.allowed}")
    return value
