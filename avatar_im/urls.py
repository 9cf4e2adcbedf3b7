"""Building the connection URL and redacting the token from it.

Pure: no I/O.  The original SDK pastes the token, app id and tenant id into
the URL unencoded; we percent-encode them, which yields the same bytes for
values made only of unreserved characters and a working URL for the rest.
"""

from __future__ import annotations

import re
from urllib.parse import quote, urlsplit

from .exceptions import InvalidArgumentError

__all__ = ["DEFAULT_URL", "build_url", "redact_url"]

#: The original SDK's default endpoint.
DEFAULT_URL = "wss://avatar-im.console.aliyun.com/ws"

_TOKEN_RE = re.compile(r"([?&]t=)[^&#]*")


def build_url(base: str, *, token: str, app_id: str, tenant_id: str) -> str:
    """Return ``<base>?t=<token>&app=<app_id>&tenant=<tenant_id>``."""
    try:
        parts = urlsplit(base)
        parts.port  # noqa: B018 - raises ValueError for a bad port or an unclosed bracket
    except ValueError as exc:
        raise InvalidArgumentError(
            f"url is not a valid URL: {redact_url(base)!r} ({exc})"
        ) from None
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise InvalidArgumentError(f"url must be a ws:// or wss:// URL, got {redact_url(base)!r}")
    query = "&".join(
        f"{key}={quote(value, safe='')}"
        for key, value in (("t", token), ("app", app_id), ("tenant", tenant_id))
    )
    separator = "&" if parts.query else "?"
    return f"{base}{separator}{query}"


def redact_url(url: str) -> str:
    """Return *url* with the token's value replaced by ``***``."""
    return _TOKEN_RE.sub(r"\1***", url)
