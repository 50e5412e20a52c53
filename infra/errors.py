"""The one error vocabulary of synthray: every error a user can trigger is a :class:`SynthrayError`.

Each class carries what the two front ends need, so neither guesses from message text:

- ``exit_code``: what ``synthray`` exits with after printing one ``Error: …`` line
  (:func:`services.cli.main.main` is the only place that prints it);
- ``http_status``: what the Serve ingress answers (one FastAPI exception handler,
  :mod:`services.serving.app`), with ``Retry-After`` for :class:`Unavailable`;
- ``field``: the request field or CLI option at fault, when there is one (a 422 then has
  FastAPI's own validation shape, naming that field).

| class | HTTP | CLI exit | meaning |
|---|---|---|---|
| :class:`SynthrayError` | 400 | 1 | a user error that fits no narrower class |
| :class:`BadInput` | 422 | 1 | an input is malformed or out of range (also a ``ValueError``) |
| :class:`NotFound` | 404 | 1 | a named dataset, model, version, batch or object does not exist |
| :class:`Conflict` | 409 | 1 | the thing exists but is in the wrong state (batch not finished …) |
| :class:`Unavailable` | 503 | 1 | a dependency is down or overloaded; retrying later can succeed |

:func:`classify` turns the few library errors that cross our boundary (pydantic validation,
MLflow's REST errors, botocore connection errors) into this vocabulary, by their error codes
and types, never by message text. The pattern follows mlflow's ``MlflowException``, which
carries its HTTP status.
"""

from __future__ import annotations

from typing import Any, ClassVar

RETRY_AFTER_S = 2  # seconds a client should wait after a 503 (Retry-After)


class SynthrayError(Exception):
    """Base of every user-facing synthray error.

    Args:
        message: one line for the user; names the field, file or reference at fault.
        field: the request field / CLI option at fault, or None.
    """

    http_status: ClassVar[int] = 400
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str = "", *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # picklable across Ray (keyword-only field)
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type, args: tuple, state: dict[str, Any]) -> SynthrayError:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class BadInput(SynthrayError, ValueError):
    """An input is malformed or out of range (HTTP 422). Also a ``ValueError``, so code and
    pydantic validators that expect one keep working."""

    http_status = 422


class NotFound(SynthrayError):
    """A named thing does not exist (HTTP 404)."""

    http_status = 404


class Conflict(SynthrayError):
    """The thing exists but is not in a state that allows the request (HTTP 409)."""

    http_status = 409


class Unavailable(SynthrayError):
    """A dependency (S3, MLflow, Ray, a replica) is down or overloaded (HTTP 503 + Retry-After)."""

    http_status = 503

    def __init__(self, message: str = "", *, field: str | None = None, retry_after_s: float = RETRY_AFTER_S) -> None:
        super().__init__(message, field=field)
        self.retry_after_s = retry_after_s


# MLflow's REST error codes (mlflow.protos.databricks_pb2 names) → our classes.
_MLFLOW_NOT_FOUND = frozenset({"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "ENDPOINT_NOT_FOUND"})
_MLFLOW_BAD_INPUT = frozenset({"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "INVALID_STATE"})
_MLFLOW_CONFLICT = frozenset({"RESOURCE_ALREADY_EXISTS", "RESOURCE_CONFLICT"})


def classify(exc: BaseException, what: str = "") -> SynthrayError | None:
    """The :class:`SynthrayError` a library error means, or None when it is not a user error.

    Args:
        exc: the caught exception.
        what: what was being looked up or done, prefixed to the message (e.g. ``"model 'x@champion'"``).

    Returns:
        ``exc`` itself when it already is a SynthrayError; a new one for pydantic's
        ``ValidationError`` (BadInput), MLflow's ``MlflowException`` (by ``error_code``:
        NotFound, BadInput, Conflict; connection failures Unavailable), botocore/requests/httpx
        connection errors (Unavailable), an ``OSError`` naming a file (BadInput); otherwise None.
    """
    if isinstance(exc, SynthrayError):
        return exc
    prefix = f"{what}: " if what else ""
    name = type(exc).__name__
    module = type(exc).__module__ or ""
    if name == "ValidationError" and module.startswith("pydantic"):
        errors = exc.errors()  # type: ignore[attr-defined]
        first = errors[0] if errors else {}
        loc = ".".join(str(p) for p in first.get("loc", ()))
        msg = first.get("msg", str(exc))
        return BadInput(f"{prefix}{loc + ': ' if loc else ''}{msg}", field=loc or None)
    if module.startswith("mlflow"):
        code = getattr(exc, "error_code", "") or ""
        if code in _MLFLOW_NOT_FOUND:
            return NotFound(f"{prefix}not found ({_first_line(exc)})")
        if code in _MLFLOW_CONFLICT:
            return Conflict(f"{prefix}{_first_line(exc)}")
        if code in _MLFLOW_BAD_INPUT:
            return BadInput(f"{prefix}{_first_line(exc)}")
        if _is_connection_error(exc.__cause__ or exc.__context__):
            return Unavailable(f"{prefix}cannot reach the MLflow server ({_first_line(exc)})")
        return None
    if _is_connection_error(exc):
        return Unavailable(f"{prefix}cannot reach {_first_line(exc)}")
    if isinstance(exc, OSError) and getattr(exc, "filename", None) is not None:
        # a file or folder the user named: missing, unreadable, not a directory…
        return BadInput(f"{prefix}{exc.filename}: {exc.strerror or exc}")
    return None


_CONNECTION_ERRORS = {
    ("botocore.exceptions", "EndpointConnectionError"), ("botocore.exceptions", "ConnectionClosedError"),
    ("botocore.exceptions", "ReadTimeoutError"), ("botocore.exceptions", "ConnectTimeoutError"),
    ("requests.exceptions", "ConnectionError"), ("requests.exceptions", "ConnectTimeout"),
    ("urllib3.exceptions", "MaxRetryError"), ("urllib3.exceptions", "NewConnectionError"),
    ("httpx", "ConnectError"), ("httpx", "ConnectTimeout"),
}


def _is_connection_error(exc: BaseException | None) -> bool:
    while exc is not None:
        for cls in type(exc).__mro__:
            if (cls.__module__, cls.__name__) in _CONNECTION_ERRORS or cls is ConnectionError:
                return True
        exc = exc.__cause__ or exc.__context__
    return False


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


__all__ = ["RETRY_AFTER_S", "BadInput", "Conflict", "NotFound", "SynthrayError", "Unavailable", "classify"]
