"""The reconnect policy: exponential backoff with full jitter, as an immutable value.

Modelled on urllib3's ``Retry``: :meth:`ReconnectPolicy.delay` and
:meth:`ReconnectPolicy.is_exhausted` are pure functions of the attempt number;
the caller counts attempts, draws the random number and does the waiting.
"""

from __future__ import annotations

import attrs

from .exceptions import InvalidArgumentError

__all__ = ["ReconnectPolicy"]


def _non_negative(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise InvalidArgumentError(f"{attribute.name} must be >= 0, got {value!r}")


def _attempts(_: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and value < 0:
        raise InvalidArgumentError(f"{attribute.name} must be None or >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class ReconnectPolicy:
    """When and how often to reconnect after the connection is lost.

    Attempt *n* (0 for the first retry after a loss) waits a random time in
    ``[0, min(max_delay, initial_delay * multiplier**n)]`` ("full jitter").
    ``max_attempts=None`` retries for ever; ``0`` never reconnects.
    """

    initial_delay: float = attrs.field(default=0.5, validator=_non_negative)
    multiplier: float = attrs.field(default=2.0, validator=_non_negative)
    max_delay: float = attrs.field(default=30.0, validator=_non_negative)
    max_attempts: int | None = attrs.field(default=None, validator=_attempts)

    def cap(self, attempt: int) -> float:
        """The largest delay attempt *attempt* may wait."""
        if attempt > 64:  # the cap has long been reached; avoid float overflow
            return self.max_delay
        return min(self.max_delay, self.initial_delay * self.multiplier**attempt)

    def delay(self, attempt: int, random: float) -> float:
        """The delay before attempt *attempt*, given a uniform *random* number in [0, 1)."""
        return self.cap(attempt) * random

    def is_exhausted(self, attempt: int) -> bool:
        """True when attempt *attempt* (0-based) is beyond the limit."""
        return self.max_attempts is not None and attempt >= self.max_attempts

    @classmethod
    def never(cls) -> ReconnectPolicy:
        """A policy that never reconnects."""
        return cls(max_attempts=0)
