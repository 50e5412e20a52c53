"""The installed environment against ``requirements.lock`` (written by ``make lock``).

Used by ``synthray doctor`` and by the lock tests, so "is this the locked environment?" has
one answer. Versions compare by their public part: the lock pins ``torch==2.13.0`` and this
machine installs the local build ``2.13.0+cpu``.
"""

from __future__ import annotations

import sysconfig
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from infra.errors import BadInput
from infra.settings import PROJECT_ROOT

LOCK_FILE = PROJECT_ROOT / "requirements.lock"
NOT_LOCKED = frozenset({"synthray", "pip", "setuptools", "wheel"})  # the project and the installer's tools


def locked_versions(path: Path = LOCK_FILE) -> dict[str, Version]:
    """``{canonical name: version}`` of every ``NAME==VERSION`` line of the lock.

    Raises:
        BadInput: a line that is not an exact ``==`` pin, or a package pinned twice.
    """
    pins: dict[str, Version] = {}
    for number, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==":
            raise BadInput(f"{path}:{number}: {line!r} is not an exact NAME==VERSION pin")
        name = canonicalize_name(req.name)
        if name in pins:
            raise BadInput(f"{path}:{number}: {name} is pinned twice")
        pins[name] = Version(specs[0].version)
    return pins


def installed_versions() -> dict[str, Version]:
    """``{canonical name: version}`` of every distribution installed in this environment's site-packages.

    Only site-packages: ``import ray`` puts its vendored ``ray/thirdparty_files`` (colorama …) on
    ``sys.path``, and those are Ray's files, not installed packages.
    """
    paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    return {canonicalize_name(d.metadata["Name"]): Version(d.version) for d in metadata.distributions(path=paths)}


def drift(path: Path = LOCK_FILE) -> dict[str, tuple[str | None, str | None]]:
    """Packages whose installed version differs from the lock: ``{name: (installed, locked)}``.

    A package installed but not locked, or locked but not installed, shows None on that side.
    The project itself and pip/setuptools/wheel are not compared.
    """
    pins, have = locked_versions(path), installed_versions()
    out: dict[str, tuple[str | None, str | None]] = {}
    for name in sorted((set(pins) | set(have)) - NOT_LOCKED):
        got, want = have.get(name), pins.get(name)
        if got is None or want is None or Version(got.public) != want:
            out[name] = (None if got is None else str(got), None if want is None else str(want))
    return out


def unlocked() -> list[str]:
    """Installed distributions the lock does not list (left by an older install): ``make setup`` removes them."""
    return sorted(name for name, (_, want) in drift().items() if want is None)


__all__ = ["LOCK_FILE", "drift", "installed_versions", "locked_versions", "unlocked"]


if __name__ == "__main__":  # `python -m infra.environment`: print what make setup must uninstall
    print("\n".join(unlocked()))
