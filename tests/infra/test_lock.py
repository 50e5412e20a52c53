"""requirements.lock is complete, agrees with pyproject.toml, and is what this environment holds.

`make setup` installs the lock with ``--no-deps`` (nothing is resolved at install time), so two
clones install the same versions. These tests fail when a dependency is added to or changed in
pyproject.toml without `make lock`, and when the installed environment drifts from the lock.
"""

from __future__ import annotations

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from infra.environment import drift, locked_versions
from infra.settings import PROJECT_ROOT

EXTRAS = ("test", "cluster")  # what `make lock` resolves


def _pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in EXTRAS:
        reqs += project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


def test_every_pyproject_requirement_is_pinned_within_its_range() -> None:
    pins = locked_versions()
    for req in _pyproject_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is in pyproject.toml but not in requirements.lock: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside pyproject.toml's {req}: run `make lock`")


def test_constraints_agree_with_the_lock() -> None:
    pins = locked_versions()
    for line in (PROJECT_ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            assert req.specifier.contains(pins[canonicalize_name(req.name)], prereleases=True), line


def test_the_environment_is_the_lock() -> None:
    """Every installed distribution is locked at its installed version (local labels such as +cpu aside)."""
    assert drift() == {}


def test_lock_parser_rejects_loose_and_double_pins(tmp_path) -> None:
    import pytest

    from infra.errors import BadInput

    loose = tmp_path / "loose.lock"
    loose.write_text("numpy>=1\n")
    with pytest.raises(BadInput, match="not an exact"):
        locked_versions(loose)
    double = tmp_path / "double.lock"
    double.write_text("numpy==2.0.0\nNumPy==2.0.1\n")
    with pytest.raises(BadInput, match="pinned twice"):
        locked_versions(double)
