"""Session options: validated, frozen values and the original SDK's defaults.

Pure: no I/O.  Values are validated when the object is made, so a bad option
raises at the call that passed it.  :meth:`SessionOptions.to_wire` gives the
camelCase, string-valued mapping the original sends.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
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
#: Options the original passes through unchecked, by their Python names.
PASS_THROUGH = {
    "voice": "voice",
    "emotion": "emotion",
    "character_code": "characterCode",
    "ext_info": "extInfo",
}
#: How deeply a pass-through value may nest.
MAX_DEPTH = 32


def check_json_value(name: str, value: object, depth: int = 0) -> None:
    """Refuse what is not a JSON value: non-finite numbers, non-string keys, other types."""
    if depth > MAX_DEPTH:
        raise InvalidArgumentError(f"{name} nests deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgumentError(f"{name} must be a finite number, got {value!r}")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidArgumentTypeError(f"{name} has a key that is not a str: {key!r}")
            check_json_value(f"{name}[{key!r}]", item, depth + 1)
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_json_value(f"{name}[{index}]", item, depth + 1)
        return
    raise InvalidArgumentTypeError(f"{name} must be a JSON value, got {type(value).__name__}")


def _extra(value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidArgumentTypeError(f"extra must be a mapping, got {type(value).__name__}")
    reserved = {"type", "sessionId", *_WIRE_NAMES.values()}
    for key in value:
        if not isinstance(key, str) or not key:
            raise InvalidArgumentTypeError(f"extra keys must be non-empty str, got {key!r}")
        if key in reserved:
            raise InvalidArgumentError(
                f"extra[{key!r}] is set by the client: use the matching option instead"
            )
    check_json_value("extra", value)
    return MappingProxyType(dict(value))


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
    #: Pass-through keys, sent after the six as given (``voice``, ``characterCode``, ...).
    extra: Mapping[str, Any] = attrs.field(factory=dict, converter=_extra)

    @classmethod
    def from_kwargs(cls, options: dict[str, Any]) -> SessionOptions:
        """Build from keyword arguments, naming any unknown option in the error.

        Beside the six checked options: ``voice``, ``emotion``,
        ``character_code`` and ``ext_info`` (sent as ``voice``, ``emotion``,
        ``characterCode``, ``extInfo``), and ``extra``, a mapping of any other
        wire keys.  Their values must be JSON values.
        """
        options = dict(options)
        extra = dict(_extra(options.pop("extra", {})))
        for name, wire in PASS_THROUGH.items():
            if name in options:
                if wire in extra:
                    raise InvalidArgumentError(f"{name} is given twice: as {name}= and in extra")
                extra[wire] = options.pop(name)
        unknown = sorted(set(options) - set(_WIRE_NAMES))
        if unknown:
            known = [*_WIRE_NAMES, *PASS_THROUGH, "extra"]
            raise InvalidArgumentError(
                f"unknown session option(s) {', '.join(unknown)}; known: {', '.join(known)}"
            )
        return cls(**options, extra=extra)

    def to_wire(self) -> dict[str, Any]:
        """Return the camelCase mapping, in the original's key order, pass-through keys last."""
        wire: dict[str, Any] = {
            "dialogMode": self.dialog_mode,
            "duplexMode": self.duplex_mode,
            "outputMode": self.output_mode,
            "videoOpen": self.video_open,
            "format": self.format,
            "sampleRate": str(self.sample_rate),
        }
        wire.update(self.extra)
        return wire


def refresh_fields(options: dict[str, Any]) -> dict[str, Any]:
    """Validate the options given to ``refresh_context`` and return only those, on the wire."""
    parsed = SessionOptions.from_kwargs(options)
    full = parsed.to_wire()
    fields = {_WIRE_NAMES[name]: full[_WIRE_NAMES[name]] for name in options if name in _WIRE_NAMES}
    fields.update(parsed.extra)
    return fields
