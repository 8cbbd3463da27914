"""``--expires WHEN``: a duration from now (30d, 12h, 1w2d) or an ISO-8601 date/time."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(?:\d+[smhdw])+")
_PART = re.compile(r"(\d+)([smhdw])")


def parse_when(text: str, now: float) -> int:
    """Unix seconds for ``text``; ValueError with a usage hint when it is neither form.

    Durations add up their parts (``1d12h`` = 36 hours). A date or time without a zone is
    taken as UTC, the zone of the daemon's logs, so the result does not depend on the host.
    """
    value = text.strip().lower()
    if _DURATION.fullmatch(value):
        seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(value))
        if seconds <= 0:
            raise ValueError(f"duration {text!r} must be longer than zero")
        return int(now) + seconds
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (30d, 12h, 1w, 90m, 1d12h) nor an ISO-8601 "
            "date/time (2030-01-31, 2030-01-31T18:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())
