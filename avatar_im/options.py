"""Session options: validated, frozen values and the original SDK's defaults.

Pure: no I/O.  Values are validated when the object is made, so a bad option
raises at the call that passed it.  :meth:`SessionOptions.to_wire` gives the
camelCase, string-valued mapping the original sends.
"""

from __future__ import annotations

from typing import Any

import attrs

from .exceptions import InvalidArgumentError, InvalidArgumentTypeError

__all__ = [
    "DIALOG_MODES",
    "DUPLEX_MODES",
    "FORMATS",
    "OUTPUT_MODES",
    "SessionOptions",
]

DIALOG_MODES = ("aliYunChat", "open")
DUPLEX_MODES = ("cloud", "client", "blend")
OUTPUT_MODES = ("video", "audio")
FORMATS = ("pcm", "wav")

_WIRE_NAMES = {
    "dialog_mode": "dialogMode",
    "duplex_mode": "duplexMode",
    "output_mode": "outputMode",
    "video_open": "videoOpen",
    "format": "format",
    "sample_rate": "sampleRate",
}


def _one_of(choices: tuple[str, ...]) -> Any:
    def check(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, str):
            raise InvalidArgumentTypeError(
                f"{attribute.name} must be a str, got {type(value).__name__}"
            )
        if value not in choices:
            raise InvalidArgumentError(
                f"{attribute.name} must be one of {', '.join(map(repr, choices))}, got {value!r}"
            )

    return check


def _video_open(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if value in (0, 1, "0", "1") and not isinstance(value, float):
        return str(value)
    raise InvalidArgumentError(f"video_open must be True/False, 0/1 or '0'/'1', got {value!r}")


def _sample_rate(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidArgumentTypeError(f"sample_rate must be an int, got {type(value).__name__}")
    try:
        rate = int(value)
    except ValueError:
        raise InvalidArgumentError(f"sample_rate must be a whole number, got {value!r}") from None
    if not 8000 <= rate <= 192000:
        raise InvalidArgumentError(f"sample_rate must be between 8000 and 192000 Hz, got {rate}")
    return rate


@attrs.frozen(kw_only=True)
class SessionOptions:
    """The options of a ``start`` (and ``refreshContext``) message, with the original's defaults."""

    dialog_mode: str = attrs.field(default="aliYunChat", validator=_one_of(DIALOG_MODES))
    duplex_mode: str = attrs.field(default="cloud", validator=_one_of(DUPLEX_MODES))
    output_mode: str = attrs.field(default="video", validator=_one_of(OUTPUT_MODES))
    video_open: str = attrs.field(default="0", converter=_video_open)
    format: str = attrs.field(default="pcm", validator=_one_of(FORMATS))
    sample_rate: int = attrs.field(default=16000, converter=_sample_rate)

    @classmethod
    def from_kwargs(cls, options: dict[str, Any]) -> SessionOptions:
        """Build from keyword arguments, naming any unknown option in the error."""
        unknown = sorted(set(options) - set(_WIRE_NAMES))
        if unknown:
            raise InvalidArgumentError(
                f"unknown session option(s) {', '.join(unknown)}; known: {', '.join(_WIRE_NAMES)}"
            )
        return cls(**options)

    def to_wire(self) -> dict[str, str]:
        """Return the camelCase mapping with string values, in the original's key order."""
        return {
            "dialogMode": self.dialog_mode,
            "duplexMode": self.duplex_mode,
            "outputMode": self.output_mode,
            "videoOpen": self.video_open,
            "format": self.format,
            "sampleRate": str(self.sample_rate),
        }


def refresh_fields(options: dict[str, Any]) -> dict[str, str]:
    """Validate the options given to ``refresh_context`` and return only those, on the wire."""
    full = SessionOptions.from_kwargs(options).to_wire()
    return {_WIRE_NAMES[name]: full[_WIRE_NAMES[name]] for name in options}
