"""Progress of long work, and how loud the console is: defined once, used everywhere.

Two kinds of callback travel through the code:

* ``Progress`` receives one human-readable line (``print``, ``click.echo`` and :func:`say` are
  Progress);
* ``CountProgress`` receives counts of a known total (catalog blobs, Inception features), with
  the rate in items per second where the caller measures it. :meth:`Bar.count` is one.

and one facility draws long work: :func:`bar` (``rich.progress``, the one progress library of
the project). Bars go to stderr, as tqdm's do, so stdout carries results only (``--json | jq``
works). On a terminal a bar is live; when stderr is not a terminal (CI, a log file, ``2>&1 |
tee``) the same bar prints a few plain lines instead: at most one per :data:`LINE_EVERY_S`
seconds (``SYNTHRAY_PROGRESS_LINE_EVERY_S`` sets it), and only after at least
:data:`LINE_EVERY_FRACTION` more of the total is done, plus one when the work ends. Work shorter
than that interval prints no line at all (its caller's result line follows), and a bar prints at
most five lines however long it runs.

Verbosity (``synthray --quiet`` / ``--verbose``, or ``SYNTHRAY_VERBOSITY``):

* ``quiet``: no bars and no :func:`say` lines; only results and errors are printed.
* ``normal`` (default): bars and synthray's own lines; Ray's and MLflow's chatter goes to the
  log files under the state dir (see :func:`infra.ray_runtime.connect`).
* ``verbose``: everything, Ray's worker output and Serve's access logs included; off a
  terminal a bar prints a line per :data:`VERBOSE_LINE_FRACTION` of its work.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, Protocol

from infra.settings import PROGRESS_LINE_EVERY_S, get_settings

Verbosity = Literal["quiet", "normal", "verbose"]
VERBOSITIES: tuple[Verbosity, ...] = ("quiet", "normal", "verbose")
#: Non-terminal output: at most one line per this many seconds while a bar runs (the default of
#: the ``progress_line_every_s`` setting) ...
LINE_EVERY_S = PROGRESS_LINE_EVERY_S
#: ... and only after at least this fraction more of the total is done (the end always prints).
LINE_EVERY_FRACTION = 0.2
#: ``--verbose`` off a terminal: a line per update that adds at least this fraction, without the time gate.
VERBOSE_LINE_FRACTION = 0.05


class Progress(Protocol):
    """``progress(message)``: one line about long work."""

    def __call__(self, message: str, /) -> None: ...


class CountProgress(Protocol):
    """``progress(done, total[, rate])``: items done of ``total``; ``rate`` in items per second."""

    def __call__(self, done: int, total: int, /, *rate: float) -> None: ...


_chosen: list[Verbosity] = []  # set by the CLI's --quiet/--verbose; else the settings' value


def set_verbosity(level: Verbosity) -> None:
    """Set this process's verbosity (the CLI's ``--quiet``/``--verbose``)."""
    if level not in VERBOSITIES:
        raise ValueError(f"verbosity must be one of {VERBOSITIES}, got {level!r}")
    _chosen[:] = [level]


def verbosity() -> Verbosity:
    """The process's verbosity: :func:`set_verbosity`'s, else ``SYNTHRAY_VERBOSITY`` (settings)."""
    if _chosen:
        return _chosen[0]
    return get_settings().verbosity


def say(message: str, /) -> None:
    """A :class:`Progress` that prints synthray's own line unless ``--quiet``."""
    if verbosity() != "quiet":
        print(message, flush=True)  # while a live bar runs, rich prints it above the bar


def is_terminal() -> bool:
    """Whether the bars' stream (stderr) is a terminal (rich's test: ``FORCE_TERMINAL``, ``TERM=dumb`` … apply)."""
    return _console().is_terminal


def _console():
    from rich.console import Console

    return Console(file=sys.stderr)  # this moment's stderr (pytest and click swap it)


class Bar:
    """One unit of long work with a known (or later known) total; see :func:`bar`.

    ``update(done, total=None, info="")`` sets the count; ``advance(n)`` adds to it; ``info`` is
    free text after the numbers (``"epoch 2/5 · 31 img/s · last FID 45.2"``). :meth:`count` is
    a :class:`CountProgress` for functions that report ``(done, total[, rate])``.
    """

    def __init__(self, description: str, total: int | None, unit: str) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.done, self.info = 0, ""
        self._lock = threading.Lock()

    def update(self, done: int, total: int | None = None, info: str | None = None) -> None:
        with self._lock:
            self.done = done
            self.total = total if total is not None else self.total
            self.info = info if info is not None else self.info
            self._draw()

    def advance(self, n: int = 1, info: str | None = None) -> None:
        self.update(self.done + n, info=info)

    def count(self, done: int, total: int, /, *rate: float) -> None:
        """``CountProgress``: ``rate`` (items per second) goes into the info text."""
        self.update(done, total, f"{rate[0]:.0f} {self.unit}/s" if rate else None)

    def _draw(self) -> None: ...

    def close(self) -> None: ...


class _Silent(Bar):
    """``--quiet``: counts, prints nothing."""


class _Lines(Bar):
    """Not a terminal: a few plain lines (see the module docstring for when)."""

    def __init__(self, description: str, total: int | None, unit: str, every_s: float = LINE_EVERY_S,
                 fraction: float = LINE_EVERY_FRACTION) -> None:
        super().__init__(description, total, unit)
        self._started = self._last_t = time.monotonic()
        self._last_done, self._printed = 0, -1
        self._every_s, self._fraction = every_s, fraction

    def line(self) -> str:
        of = f"/{self.total}" if self.total else ""
        pct = f" ({100 * self.done / self.total:.0f} %)" if self.total else ""
        info = f", {self.info}" if self.info else ""
        return f"{self.description}: {self.done}{of} {self.unit}{pct}{info}"

    def _draw(self) -> None:
        now = time.monotonic()
        step = self._fraction * (self.total or 0)
        if (self.total and self.done >= self.total) or (
                now - self._last_t >= self._every_s and self.done - self._last_done >= step):
            self._emit(now)

    def _emit(self, now: float) -> None:
        # Work shorter than every_s prints nothing: the caller's own result line says it is done.
        if self._printed != self.done and (self._printed >= 0 or now - self._started >= self._every_s):
            print(self.line(), file=sys.stderr, flush=True)
            self._last_t, self._last_done, self._printed = now, self.done, self.done

    def close(self) -> None:
        if self.done and self._printed != self.done:  # ended short of its total (or without one)
            self._emit(time.monotonic())


class _Live(Bar):
    """A terminal: one task of the process's shared ``rich.progress.Progress`` display."""

    def __init__(self, description: str, total: int | None, unit: str) -> None:
        super().__init__(description, total, unit)
        self._task = _Display.add(description, total)

    def _draw(self) -> None:
        _Display.progress.update(self._task, completed=self.done, total=self.total, info=self.info)

    def close(self) -> None:
        _Display.remove(self._task)


class _Display:
    """The one live display: bars running at the same time (nested or threaded) stack in it."""

    progress = None
    tasks = 0
    lock = threading.Lock()

    @classmethod
    def add(cls, description: str, total: int | None):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TaskProgressColumn,
                                   TextColumn, TimeElapsedColumn, TimeRemainingColumn)

        with cls.lock:
            if cls.progress is None:
                cls.progress = RichProgress(
                    TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                    console=_console())
                cls.progress.start()
            cls.tasks += 1
            return cls.progress.add_task(description, total=total, info="")

    @classmethod
    def remove(cls, task) -> None:
        with cls.lock:
            cls.tasks -= 1
            if cls.tasks == 0 and cls.progress is not None:
                cls.progress.refresh()
                cls.progress.stop()  # the finished bars stay on screen, one line each
                cls.progress = None


@contextmanager
def bar(description: str, total: int | None = None, unit: str = "it") -> Iterator[Bar]:
    """A progress bar for the ``with`` block: live on a terminal, a few lines otherwise, silent if quiet.

    Args:
        description: what runs, e.g. ``"ingest: read"``.
        total: items in all (``None`` until known; :meth:`Bar.update` may set it).
        unit: what an item is (``"img"``, ``"step"``, ``"shard"``).

    Yields:
        the :class:`Bar` to update.
    """
    level = verbosity()
    if level == "quiet":
        handle: Bar = _Silent(description, total, unit)
    elif is_terminal():
        handle = _Live(description, total, unit)
    elif level == "verbose":  # everything: a line per update of at least 5 %, at once
        handle = _Lines(description, total, unit, every_s=0.0, fraction=VERBOSE_LINE_FRACTION)
    else:
        handle = _Lines(description, total, unit, every_s=get_settings().progress_line_every_s)
    try:
        yield handle
    finally:
        handle.close()


__all__ = ["Bar", "CountProgress", "LINE_EVERY_FRACTION", "LINE_EVERY_S", "Progress", "VERBOSITIES", "Verbosity",
           "bar", "is_terminal", "say", "set_verbosity", "verbosity"]
