"""The progress callbacks of long work, defined once.

``Progress`` receives one human-readable line (``print`` and ``click.echo`` are Progress);
``CountProgress`` receives counts of a known total, for work that reports in items (catalog
blobs, Inception features), with the rate in items per second where the caller measures it.
Every long-running function takes one of these instead of printing, so the CLI, the demo,
tests and Ray workers decide where the lines go.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """``progress(message)``: one line about long work."""

    def __call__(self, message: str, /) -> None: ...


class CountProgress(Protocol):
    """``progress(done, total[, rate])``: items done of ``total``; ``rate`` in items per second."""

    def __call__(self, done: int, total: int, /, *rate: float) -> None: ...


__all__ = ["CountProgress", "Progress"]
