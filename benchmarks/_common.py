"""Shared by the benchmark scripts (run as `python benchmarks/NAME.py`, so this is importable as `_common`)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_json(path: Path, report: dict) -> None:
    """Write ``report`` atomically (a half-written result must never be tabulated by run_all.py)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, path)
