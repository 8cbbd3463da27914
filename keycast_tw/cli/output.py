"""Plain-text tables, timestamps and JSON for the ``keycast`` command's listings."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any


def timestamp(seconds: int | None, *, empty: str = "-") -> str:
    """Unix seconds as ``2025-01-31T12:00:00Z`` (UTC, like the daemon's logs)."""
    if seconds is None:
        return empty
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    cells = [[str(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return lines


def to_json(value: Any) -> str:
    """Stable, readable JSON for scripts (sorted keys, two-space indent)."""
    return json.dumps(value, indent=2, sort_keys=True)


def short(pubkey: str) -> str:
    """A hex pubkey shortened for tables, as in the daemon's log lines."""
    return pubkey[:12] + "…" if len(pubkey) > 12 else pubkey
