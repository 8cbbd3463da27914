"""Locate and load the shared test vectors in ../shared/vectors (never copied into the repo).

When the folder is missing the calling test is skipped with the reason, except under CI=true,
where a missing vector file is a failure: CI must never pass by skipping the official vectors.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from unittest import SkipTest

VECTORS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "vectors"


def vector_path(
    name: str, *, directory: Path = VECTORS_DIR, environ: Mapping[str, str] = os.environ
) -> Path:
    """The path of one vector file; SkipTest (or, under CI, FileNotFoundError) when absent."""
    path = directory / name
    if not path.is_file():
        reason = f"test vectors not found at {path} (expected ../shared/vectors beside the repo)"
        if environ.get("CI") == "true":
            raise FileNotFoundError(reason)
        raise SkipTest(reason)
    return path


def load_json(name: str) -> Any:
    """Parse a JSON vector file."""
    with vector_path(name).open(encoding="utf-8") as handle:
        return json.load(handle)


def load_csv(name: str) -> list[dict[str, str]]:
    """Read a CSV vector file with a header row into dicts."""
    with vector_path(name).open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))
