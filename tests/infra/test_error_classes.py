"""Every exception class synthray defines is a SynthrayError, so both front ends map it by class.

Walks every module of ``infra``, ``training`` and ``services`` (importing each), so a new error
class on a built-in base (``ValueError``, ``RuntimeError`` …) fails here rather than surfacing
as a 500 or a CLI traceback.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from infra.errors import SynthrayError

PACKAGES = ("infra", "training", "services")

# Exceptions that are not domain errors, each with the reason it may not be a SynthrayError.
CARRIERS = {
    # click's vehicle for a SynthrayError on its way to the one "Error: …" line (it wraps one).
    "services.cli.main.UserError",
    # An HTTPException by necessity: FastAPI's body parsing re-raises only those, and the
    # BodyLimit middleware catches it at once and answers 413 itself.
    "services.serving.body_limit._TooLarge",
}


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        root = importlib.import_module(package)
        names.append(package)
        for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
            if not info.name.endswith("__main__"):  # running it would run the CLI
                names.append(info.name)
    return names


def test_every_exception_class_derives_from_synthray_error() -> None:
    found, stray = [], []
    for name in _modules():
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != name or not issubclass(cls, BaseException):
                continue
            qualified = f"{name}.{cls.__qualname__}"
            found.append(qualified)
            if not issubclass(cls, SynthrayError) and qualified not in CARRIERS:
                stray.append(f"{qualified} ({', '.join(b.__name__ for b in cls.__mro__[1:-2])})")
    assert not stray, f"exception classes outside the error vocabulary (infra/errors.py): {stray}"
    assert set(CARRIERS) <= set(found), f"stale CARRIERS entries: {set(CARRIERS) - set(found)}"
    # The walk saw the vocabulary's users, not an empty tree.
    assert {"services.batches.api.BatchNotFound", "training.catalog.store.DatasetNotFound",
            "infra.object_store.ObjectStoreUnavailable"} <= set(found)
