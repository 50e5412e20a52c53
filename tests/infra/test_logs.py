"""Service log records as text or JSON lines, and libraries' chatter routed to the state dir."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from infra import logs, progress
from infra.settings import Settings


def test_json_lines_parse_and_carry_the_fields(tmp_path: Path, capsys) -> None:
    logger = logs.configure(logging.getLogger("synthray.test-json"), Settings(state_dir=tmp_path, log_format="json"))
    logger.info("batch %s: shard %d", "b-1", 2, extra={logs.FIELDS: {"request_id": "b-1", "model_version": "3",
                                                                      "elapsed_s": 1.25}})
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed", extra={logs.FIELDS: {"request_id": "b-2"}})
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert first["message"] == "batch b-1: shard 2" and first["level"] == "INFO"
    assert (first["request_id"], first["model_version"], first["elapsed_s"]) == ("b-1", "3", 1.25)
    assert first["logger"] == "synthray.test-json" and first["ts"].endswith("+00:00")
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exc"]
    # Text: the bare message, once (the handler is not added twice).
    logs.configure(logger, Settings(state_dir=tmp_path, log_format="text"))
    logs.configure(logger, Settings(state_dir=tmp_path, log_format="text"))
    logger.info("plain %d", 1, extra={logs.FIELDS: {"request_id": "x"}})
    assert capsys.readouterr().err == "plain 1\n"


@pytest.mark.parametrize("level", ["normal", "verbose"])
def test_library_logs_go_to_the_state_dir_unless_verbose(level: str, tmp_path: Path, monkeypatch, capsys) -> None:
    name = f"synthray-test-lib-{level}"
    library = logging.getLogger(name)
    library.addHandler(logging.StreamHandler())  # the library's own console handler
    monkeypatch.setattr(progress, "_chosen", [level])
    path = logs.route_to_file([name], Settings(state_dir=tmp_path))
    library.warning("View run … chatter")
    console = capsys.readouterr().err
    if level == "verbose":
        assert path is None and "chatter" in console
    else:
        assert path == tmp_path / "logs" / "libraries.log" and console == ""
        assert "WARNING " + name + ": View run … chatter" in path.read_text()
