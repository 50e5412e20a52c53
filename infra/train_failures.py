"""Ray Train retries only what a retry can fix.

``FailureConfig(max_failures=k)`` restarts the worker group after *any* worker error. A
worker that fails on its input (a missing checkpoint, a shard smaller than a batch: a
:class:`~infra.errors.SynthrayError` other than :class:`~infra.errors.Unavailable`) fails
the same way on every attempt, so :func:`torch_trainer` builds a ``TorchTrainer`` whose
failure policy raises at once for such an error, and :func:`input_error` digs that error
out of the ``TrainingFailedError`` for the driver to re-raise as one ``Error:`` line.

Most such inputs never reach a worker: the drivers check them first
(:mod:`training.gan.preflight`, :func:`training.classify.trainer.check_inputs`); this is the
backstop for what only a worker can see. Killed workers, lost nodes and outages
(``Unavailable``) are retried as before.

The policy hooks into Ray Train V2's controller through ``_initialize_and_run_controller``
(Ray 2.60); with another Ray the trainer falls back to the default policy, and
``tests/gan/test_train_gan.py`` notices.
"""

from __future__ import annotations

from infra.errors import SynthrayError, Unavailable

__all__ = ["fit_or_input_error", "input_error", "is_input_error", "torch_trainer"]


def _unwrap(exc: BaseException | None) -> BaseException | None:
    """The user exception inside Ray's wrappers (UserExceptionWithTraceback, RayTaskError)."""
    seen = 0
    while exc is not None and seen < 8:
        seen += 1
        if isinstance(exc, SynthrayError):
            return exc
        inner = getattr(exc, "_base_exc", None) or getattr(exc, "cause", None)
        if inner is None or inner is exc:
            return exc
        exc = inner
    return exc


def is_input_error(exc: BaseException | None) -> bool:
    """A worker error that no retry can fix: a SynthrayError that is not an outage."""
    err = _unwrap(exc)
    return isinstance(err, SynthrayError) and not isinstance(err, Unavailable)


def input_error(exc: BaseException) -> SynthrayError | None:
    """The first non-retryable SynthrayError of a failed training run (by worker rank), or None."""
    failures = getattr(exc, "worker_failures", None) or {}
    for rank in sorted(failures):
        if is_input_error(failures[rank]):
            return _unwrap(failures[rank])  # type: ignore[return-value]
    return _unwrap(exc) if is_input_error(exc) else None


def _policy_class():
    from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy
    from ray.train.v2.api.exceptions import WorkerGroupError

    class InputErrorsAreFinal(DefaultFailurePolicy):
        """Ray's default policy, except that a worker's input error is never retried."""

        def _is_retryable_error(self, training_failed_error) -> bool:
            if isinstance(training_failed_error, WorkerGroupError) and any(
                    is_input_error(e) for e in training_failed_error.worker_failures.values()):
                return False
            return super()._is_retryable_error(training_failed_error)

    return InputErrorsAreFinal


def torch_trainer(*args, **kwargs):
    """A ``ray.train.torch.TorchTrainer`` (same arguments) whose failure policy does not retry input errors."""
    from ray.train.torch import TorchTrainer

    try:
        policy_class = _policy_class()
    except ImportError:  # another Ray: the default policy, retries and all
        return TorchTrainer(*args, **kwargs)

    class FailFastTorchTrainer(TorchTrainer):
        def _initialize_and_run_controller(self, **controller_kwargs):
            if "failure_policy" in controller_kwargs:
                controller_kwargs["failure_policy"] = policy_class(self.run_config.failure_config)
            return super()._initialize_and_run_controller(**controller_kwargs)

    return FailFastTorchTrainer(*args, **kwargs)


def fit_or_input_error(trainer):
    """``trainer.fit()``; a run that failed on a worker's input error raises that error itself."""
    try:
        return trainer.fit()
    except Exception as exc:
        err = input_error(exc)
        if err is None:
            raise
        raise err from None
