"""Argument checks shared by the client and the relay: a typed error at the call site.

Pure: no I/O.
"""

from __future__ import annotations

import math
import threading

from .exceptions import InvalidArgumentError, InvalidArgumentTypeError

__all__ = [
    "require_callable",
    "require_count",
    "require_seconds",
    "require_str",
    "require_text",
    "require_timeout",
]


def require_str(name: str, value: object, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidArgumentTypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value and not empty_ok:
        raise InvalidArgumentError(f"{name} must not be empty")
    return value


def require_timeout(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentTypeError(
            f"{name} must be a number or None, got {type(value).__name__}"
        )
    if not math.isfinite(value) or value > threading.TIMEOUT_MAX:
        raise InvalidArgumentError(
            f"{name} must be a finite number of seconds (or None for no limit), got {value!r}"
        )
    if value < 0:
        raise InvalidArgumentError(f"{name} must be >= 0, got {value!r}")
    return float(value)


def require_count(name: str, value: object) -> int:
    """A whole number >= 1 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentTypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise InvalidArgumentError(f"{name} must be >= 1, got {value!r}")
    return value


def require_seconds(name: str, value: object, *, positive: bool = False) -> float:
    """A finite number of seconds >= 0 (> 0 with *positive*), not None."""
    if value is None:
        raise InvalidArgumentTypeError(f"{name} must be a number of seconds, not None")
    seconds = require_timeout(name, value)
    assert seconds is not None
    if positive and seconds <= 0:
        raise InvalidArgumentError(f"{name} must be > 0, got {value!r}")
    return seconds


def require_callable(name: str, value: object) -> None:
    if value is not None and not callable(value):
        raise InvalidArgumentTypeError(f"{name} must be callable or None")


def require_text(text: object) -> str:
    """A non-empty str that encodes as UTF-8 (no lone surrogates): what may be sent as text."""
    require_str("text", text)
    assert isinstance(text, str)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgumentError(f"text is not valid Unicode: {exc.reason}") from None
    return text
