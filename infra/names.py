"""One rule for user-supplied names that end up in a path or an object key.

Label and class names, subset names, ``--merge`` targets, model names, study (experiment)
names: each is checked with :func:`safe_name` where it enters (CLI option, CSV cell, folder
name, HTTP field, config file), and every filesystem path built from one is built with
:func:`confined`, which resolves it and refuses anything that leaves its root. Both raise
:class:`~infra.errors.BadInput` naming the field or file at fault, so the CLI prints one
``Error:`` line and the API answers 422.

The rule is deliberately narrow about structure and generous about spelling: Unicode
letters, spaces and punctuation are fine (``KL 2``, ``négatif``), but a name is one path
component, never a path.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from infra.errors import BadInput

MAX_NAME = 128  # characters; also keeps names well inside a 255-byte path component


def name_problem(value: object, max_length: int = MAX_NAME) -> str | None:
    """Why ``value`` cannot be used as a name inside a path or object key, or None if it can."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value or not value.strip():
        return "is empty"
    if len(value) > max_length:
        return f"is {len(value)} characters long (at most {max_length})"
    if value in (".", ".."):
        return "names the current or parent folder"
    if "/" in value or "\\" in value:
        return "contains a path separator ('/' or '\\')"
    if value != value.strip():
        return "starts or ends with whitespace"
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") for ch in value):
        return "contains a control, format or unassigned character"
    if os.path.isabs(value) or (len(value) >= 2 and value[1] == ":" and value[0].isalpha()):
        return "is an absolute path"  # a drive letter ('C:') counts, whatever the platform
    return None


def safe_name(value: object, field: str, max_length: int = MAX_NAME) -> str:
    """``value`` when it is a safe single name; :class:`BadInput` naming ``field`` otherwise.

    Args:
        value: the user-supplied name (label, class, subset, merge target, model, study …).
        field: what the user typed it into, e.g. ``"--merge"``, ``"labels.csv:7 label"``.
        max_length: longest accepted name.

    Raises:
        BadInput: empty, over-long, ``.``/``..``, a path separator, an absolute path, a
            leading/trailing blank, or a control/format/unassigned character.
    """
    problem = name_problem(value, max_length)
    if problem is not None:
        raise BadInput(f"{field} {value!r} {problem}: a name is one path component "
                       f"(no '/', '\\', '..', control characters; 1-{max_length} characters)", field=field)
    return value  # type: ignore[return-value]


def confined(root: str | Path, *parts: str) -> Path:
    """``root / parts…`` resolved, refusing any result outside ``root`` (``..``, absolute, symlink).

    Checked where a path is built from stored or user-supplied names, so a name that slipped
    past :func:`safe_name` (an old manifest, a tampered one, a server's zip) still cannot
    write outside ``root``.

    Raises:
        BadInput: the resolved path is not under the resolved root.
    """
    base = Path(root).expanduser().resolve()
    path = base.joinpath(*parts).resolve()
    if not path.is_relative_to(base):
        shown = "/".join(str(p) for p in parts)
        raise BadInput(f"path {shown!r} would leave {base} (resolves to {path}); refusing to write outside it",
                       field=str(root))
    return path


__all__ = ["MAX_NAME", "confined", "name_problem", "safe_name"]
