"""Progress and console volume: a live bar on a terminal, a few lines off one, nothing but results with --quiet.

The terminal test runs the real CLI in a pseudo-terminal (stdlib ``pty``), as a user's shell
would; the others read a subprocess's pipes, as CI does.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from infra import progress
from infra.settings import Settings

CLI = [sys.executable, "-m", "services.cli.main"]
PHANTOM = ["catalog", "phantom", "--n", "64", "--size", "64", "--seed", "3"]


def _in_terminal(args: list[str], timeout_s: float = 300) -> tuple[int, str]:
    """Run ``args`` with stdin/stdout/stderr on a pseudo-terminal; (exit code, everything it drew)."""
    main, child = pty.openpty()
    env = os.environ | {"TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    proc = subprocess.Popen(args, stdin=child, stdout=child, stderr=child, env=env, close_fds=True)
    os.close(child)
    chunks, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.5)
        if ready:
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(main)
    return proc.wait(timeout=30), b"".join(chunks).decode(errors="replace")


@pytest.mark.stack
def test_ingest_draws_a_live_bar_in_a_terminal(stack: Settings) -> None:
    code, screen = _in_terminal([*CLI, *PHANTOM, "--name", "progress-tty"])
    assert code == 0, screen[-3000:]
    # rich's bar: the description, the bar glyphs, M/N counts, redrawn in place (cursor codes).
    assert "ingest: read + preprocess" in screen and "ingest: store" in screen, screen[-3000:]
    assert "━" in screen and re.search(r"64/64", screen), screen[-3000:]
    assert "\x1b[" in screen  # ANSI control: a live display, not plain lines
    assert "ingest: read + preprocess: 64/64 img (100 %)" not in screen  # not the non-terminal form


@pytest.mark.stack
def test_off_a_terminal_the_same_work_prints_a_few_lines(stack: Settings) -> None:
    proc = subprocess.run([*CLI, *PHANTOM, "--name", "progress-pipe"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Bars go to stderr; work this short (< LINE_EVERY_S) prints no progress line at all, only
    # synthray's own lines and the result (test_periodic_lines_… pins the rule for long work).
    assert proc.stderr == "", proc.stderr
    assert "\x1b[" not in proc.stdout and "━" not in proc.stdout
    assert re.search(r"^ingest: published progress-pipe@[0-9a-f]{16}: 64 images", proc.stdout, re.M), proc.stdout
    assert "ingest: read" not in proc.stdout and "ingest: store" not in proc.stdout


@pytest.mark.stack
def test_quiet_prints_only_results(stack: Settings) -> None:
    proc = subprocess.run([*CLI, "--quiet", *PHANTOM, "--name", "progress-quiet"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == ""  # no bars, no periodic lines, no Ray or MLflow chatter
    lines = proc.stdout.splitlines()
    # The ingest report (a result) is there; the step lines ("phantom: …", "ingest: …") are not.
    assert any(re.match(r"  ingested \d+ of 64 files", line) for line in lines), proc.stdout
    assert not [line for line in lines if re.match(r"(phantom|ingest|fid|train):", line)], proc.stdout
    # Errors still print.
    bad = subprocess.run([*CLI, "--quiet", "catalog", "phantom", "--n", "64", "--name", "../x"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode != 0 and "Error:" in bad.stderr


def test_quiet_and_verbose_exclude_each_other() -> None:
    proc = subprocess.run([*CLI, "--quiet", "--verbose", "stack", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "--quiet and --verbose exclude each other" in proc.stderr


def _lines_of(updates: list[tuple[float, int]], total: int, monkeypatch, capsys, level: str = "normal") -> list[str]:
    """The plain lines a bar prints for (time, done) updates, on a fake clock."""
    clock = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(progress, "is_terminal", lambda: False)
    monkeypatch.setattr(progress, "_chosen", [level])
    with progress.bar("work", total=total, unit="img") as shown:
        for t, done in updates:
            clock[0] = t
            shown.update(done)
    return capsys.readouterr().err.splitlines()


def test_periodic_lines_every_30_s_and_20_percent(monkeypatch, capsys) -> None:
    # Work shorter than 30 s: no line (the caller's result line follows).
    assert _lines_of([(0.01 * i, i) for i in range(1, 1001)], 1000, monkeypatch, capsys) == []
    # An hour of work, updated every second: a line per 30 s would be 120; the 20 % rule keeps it to 5.
    lines = _lines_of([(float(i), i) for i in range(1, 3601)], 3600, monkeypatch, capsys)
    assert lines == [f"work: {720 * k}/3600 img ({20 * k} %)" for k in range(1, 6)], lines
    # Slow work with few items: 30 s between lines, even when 10 % passes sooner.
    lines = _lines_of([(10.0 * i, i) for i in range(1, 11)], 10, monkeypatch, capsys)
    assert lines == ["work: 3/10 img (30 %)", "work: 6/10 img (60 %)", "work: 9/10 img (90 %)",
                     "work: 10/10 img (100 %)"]
    # Ended short of its total (a failure): the last count is still printed.
    assert _lines_of([(40.0, 1)], 10, monkeypatch, capsys) == ["work: 1/10 img (10 %)"]
    # --verbose: a line per 5 %, however fast; --quiet: nothing.
    lines = _lines_of([(0.01 * i, i) for i in range(1, 1001)], 1000, monkeypatch, capsys, "verbose")
    assert lines == [f"work: {50 * k}/1000 img ({5 * k} %)" for k in range(1, 21)]
    assert _lines_of([(0.01 * i, i) for i in range(1, 1001)], 1000, monkeypatch, capsys, "quiet") == []


def test_the_line_interval_is_a_setting(monkeypatch, capsys) -> None:
    from infra.settings import get_settings

    monkeypatch.setenv("SYNTHRAY_PROGRESS_LINE_EVERY_S", "5")
    get_settings.cache_clear()
    try:
        # 10 s of work: silent under the default 30 s; under 5 s, a line at 5 s and one at the end.
        lines = _lines_of([(0.5 * i, i) for i in range(1, 21)], 20, monkeypatch, capsys)
    finally:
        monkeypatch.delenv("SYNTHRAY_PROGRESS_LINE_EVERY_S")
        get_settings.cache_clear()
    assert lines == ["work: 10/20 img (50 %)", "work: 20/20 img (100 %)"], lines
    assert _lines_of([(0.5 * i, i) for i in range(1, 21)], 20, monkeypatch, capsys) == []
