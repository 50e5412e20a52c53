"""Log records of the long-running services, as text or as JSON lines (``SYNTHRAY_LOG_FORMAT``).

The Serve app gets JSON from Serve itself (``LoggingConfig(encoding="JSON")``, set by
``services.serving.deploy``). Processes Serve does not configure (the batch coordinator, a
detached Ray actor) call :func:`configure` once: with ``log_format=json`` each record is one
JSON object per line,

    {"ts": "2026-11-30T15:02:11.532+00:00", "level": "INFO", "logger": "synthray.batch",
     "message": "batch b-1: shard 2/4", "batch_id": "b-1", "model_version": "3", "elapsed_s": 1.9}

with the fields a caller passes as ``extra={"fields": {...}}`` merged in at the top level (the
same convention as Serve's ``ray_serve_extra_fields``), so a log collector can index them.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path

from infra.settings import Settings

FIELDS = "fields"  # the ``extra`` key whose dict becomes top-level JSON fields


class JsonLines(logging.Formatter):
    """One JSON object per record: ts (ISO 8601, UTC), level, logger, message, ``fields``, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        out |= getattr(record, FIELDS, None) or {}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(logger: logging.Logger, settings: Settings, level: int = logging.INFO) -> logging.Logger:
    """Give ``logger`` one stderr handler in the configured format (idempotent); returns it.

    ``text`` prints the bare message; ``json`` prints :class:`JsonLines`. The logger stops
    propagating, so a root handler does not print each record a second time.
    """
    formatter = JsonLines() if settings.log_format == "json" else logging.Formatter("%(message)s")
    handler = next((h for h in logger.handlers if getattr(h, "_synthray", False)), None)
    if handler is None:
        handler = logging.StreamHandler()
        handler._synthray = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    handler.setFormatter(formatter)
    logger.setLevel(level)
    logger.propagate = False
    return logger


def route_to_file(names: list[str], settings: Settings) -> Path | None:
    """Send the records of libraries' loggers (``mlflow``, ``ray.serve``) to ``{state_dir}/logs/libraries.log``.

    The console then shows synthray's own lines only; ``--verbose`` leaves the libraries'
    handlers alone (their lines stay on the console). Returns the log file, or None if verbose.
    """
    from infra.progress import verbosity

    if verbosity() == "verbose":
        return None
    path = settings.state_dir / "logs" / "libraries.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        logger = logging.getLogger(name)
        if any(getattr(h, "baseFilename", None) == str(path) for h in logger.handlers):
            continue
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.handlers = [handler]
        logger.propagate = False
    return path


__all__ = ["FIELDS", "JsonLines", "configure", "route_to_file"]
