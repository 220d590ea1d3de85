"""Text helpers for the page: HTML escaping, truncating untrusted strings, and number and time formats."""

from __future__ import annotations

import datetime as dt
import html
import math
import posixpath
from typing import Any

MAX_TEXT = 400  # characters of one untrusted string (URI, message) shown in the page


def esc(value: Any) -> str:
    """``value`` HTML-escaped (quotes too), None as the empty string."""
    return html.escape("" if value is None else str(value), quote=True)


def shorten(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def pct(part: int, whole: int) -> str:
    """``part`` as a percentage of ``whole``, or a dash when ``whole`` is 0."""
    return f"{100.0 * part / whole:.1f}%" if whole else "\u2013"


def fmt_score(score: float | None) -> str:
    """A score with 3 decimals, or a dash when missing."""
    return "\u2013" if score is None or math.isnan(score) else f"{score:.3f}"


def plural(count: int, noun: str) -> str:
    """``count`` with thousands separators and ``noun``, plural unless 1."""
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def fmt_time(value: Any) -> str:
    """A timestamp in UTC, as the page shows it."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if value.tzinfo else str(value)
    return str(value)


def basename(uri: str) -> str:
    """The last path component of ``uri`` (the URI itself when it has none)."""
    return posixpath.basename(uri.rstrip("/")) or uri
