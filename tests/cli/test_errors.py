"""The one error vocabulary (infra/errors.py) seen from the CLI: one ``Error:`` line, the error's exit code.

Unit tests pin the table (class → HTTP status, exit code) and :func:`infra.errors.classify`;
the stack tests walk the CLI's error paths against the real SeaweedFS and MLflow server:
a malformed and an unknown dataset reference, an unknown model, and an object store and a
registry that cannot be reached.
"""

from __future__ import annotations

import pickle

import pytest
from click.testing import CliRunner

from infra.errors import BadInput, Conflict, NotFound, SynthrayError, Unavailable, classify
from infra.settings import get_settings
from services.cli.main import main

TABLE = [(SynthrayError, 400), (BadInput, 422), (NotFound, 404), (Conflict, 409), (Unavailable, 503)]


@pytest.mark.parametrize(("cls", "status"), TABLE)
def test_table_status_and_exit_code(cls: type[SynthrayError], status: int) -> None:
    err = cls("x: bad", field="x")
    assert err.http_status == status and err.exit_code == 1
    assert str(err) == "x: bad" and err.field == "x"
    back = pickle.loads(pickle.dumps(err))  # deployments return these across Ray
    assert type(back) is cls and str(back) == "x: bad" and back.field == "x"


def test_domain_errors_sit_in_the_table() -> None:
    from infra.object_store import ObjectNotFoundError, ObjectStoreUnavailable
    from training.catalog.store import CatalogError, DatasetNotFound
    from training.registry.models import KindConflict, RegistryError

    assert DatasetNotFound.http_status == 404 and issubclass(DatasetNotFound, CatalogError)
    assert CatalogError.http_status == 422 and issubclass(CatalogError, ValueError)
    assert ObjectNotFoundError.http_status == 404 and issubclass(ObjectNotFoundError, KeyError)
    assert str(ObjectNotFoundError("object not found: s3://b/k")) == "object not found: s3://b/k"  # not KeyError's quotes
    assert ObjectStoreUnavailable.http_status == 503
    assert RegistryError.http_status == 422 and KindConflict.http_status == 409


def test_classify_pydantic_and_os_errors() -> None:
    from pydantic import BaseModel, ValidationError

    class M(BaseModel):
        n: int

    with pytest.raises(ValidationError) as caught:
        M(n="many")
    err = classify(caught.value)
    assert isinstance(err, BadInput) and err.field == "n" and err.message.startswith("n: ")
    missing = classify(FileNotFoundError(2, "No such file or directory", "/nope/x.yaml"))
    assert isinstance(missing, BadInput) and "/nope/x.yaml" in str(missing)
    assert classify(KeyError("bug")) is None  # not a user error: keeps its traceback


def test_unclassified_exception_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    import services.cli.registry as registry_cli

    def boom(_name: str):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("training.registry.promotion.rollback", boom)
    result = CliRunner().invoke(main, ["registry", "rollback", "x"])
    assert registry_cli is not None and isinstance(result.exception, ZeroDivisionError)


def _cli(*args: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(main, list(args))
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, lines


@pytest.mark.stack
def test_cli_error_paths_on_the_real_stack(stack, monkeypatch: pytest.MonkeyPatch) -> None:
    code, errors = _cli("catalog", "show", "Bad Name@zz")
    assert code == BadInput.exit_code and len(errors) == 1 and "dataset name 'Bad Name' is invalid" in errors[0]

    code, errors = _cli("catalog", "show", "no-such-dataset")
    assert code == NotFound.exit_code and errors == ["Error: dataset 'no-such-dataset' does not exist in the catalog"]

    code, errors = _cli("registry", "show", "no-such-model@champion")
    assert code == NotFound.exit_code and len(errors) == 1 and "not found" in errors[0], errors

    code, errors = _cli("registry", "show", "not a model ref")
    assert code == BadInput.exit_code and len(errors) == 1 and "NAME@alias" in errors[0]


@pytest.mark.stack
def test_cli_names_an_unreachable_object_store_and_registry(stack, monkeypatch: pytest.MonkeyPatch) -> None:
    from infra.stack import port_in_use

    closed = next(p for p in range(29990, 29999) if not port_in_use("127.0.0.1", p))
    monkeypatch.setenv("SYNTHRAY_S3_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    monkeypatch.setenv("SYNTHRAY_MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast; the default retries for minutes
    get_settings.cache_clear()
    try:
        code, errors = _cli("catalog", "list")
        assert code == Unavailable.exit_code and len(errors) == 1
        assert "cannot reach the object store" in errors[0] and str(closed) in errors[0]

        code, errors = _cli("registry", "list")
        assert code == Unavailable.exit_code and len(errors) == 1 and "cannot reach the MLflow server" in errors[0], errors
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
