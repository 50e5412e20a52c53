"""MLflow tracking and registry client configuration.

The local server proxies artifacts to ``s3://{bucket}/mlflow`` (``--artifacts-destination``),
so clients need only the tracking URI, not S3 credentials.
"""

from __future__ import annotations

import os

from infra.settings import Settings, get_settings


def configure(settings: Settings | None = None):
    """Point MLflow at the configured server and return the ``mlflow`` module."""
    from infra.progress import verbosity

    settings = settings or get_settings()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # MLflow's own "View run …"/"View experiment …" lines at every run's end: synthray prints the
    # run's link once itself (e.g. "train: MLflow run …"), so they show only with --verbose.
    if verbosity() != "verbose":
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    import mlflow

    from infra.logs import route_to_file

    route_to_file(["mlflow"], settings)  # MLflow's INFO/WARNING chatter: the state dir's log, not the console
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    return mlflow


def run_url(settings: Settings, experiment_id: str, run_id: str) -> str:
    return f"{settings.mlflow_tracking_uri}/#/experiments/{experiment_id}/runs/{run_id}"



class MetricBuffer:
    """Metrics of one run collected in memory and sent with MLflow's asynchronous ``log_batch``.

    A training loop calls :meth:`add` (no I/O) and :meth:`submit` (hands the rows to MLflow's
    async logging queue, which batches and sends them from its own thread: returns at once)
    wherever it likes, and :meth:`flush` where the history must be durable (a checkpoint, the
    run's end): it submits what is left and waits for every pending batch, raising MLflow's
    error if one failed. Nothing here waits on the network except :meth:`flush`.

    Rows are ``mlflow.entities.Metric`` stamped when added (ms since the epoch), so the
    history's timestamps say when a value was measured, not when it was sent.
    """

    def __init__(self, client, run_id: str) -> None:
        self.client, self.run_id = client, run_id
        self._rows: list = []
        self._pending: list = []

    def add(self, metrics: dict[str, float], step: int, prefix: str = "") -> None:
        """Buffer every finite value of ``metrics`` at ``step`` (NaN/inf are MLflow errors)."""
        import math
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._rows += [Metric(prefix + k, float(v), now, int(step)) for k, v in metrics.items()
                       if math.isfinite(float(v))]

    def add_series(self, key: str, values, first_step: int) -> None:
        """Buffer ``values[i]`` at step ``first_step + i`` (a per-step series)."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._rows += [Metric(key, float(x), now, first_step + i) for i, x in enumerate(values)]

    def submit(self) -> None:
        """Queue the buffered rows for MLflow's async logger (≤ 1,000 metrics per batch, its limit)."""
        rows, self._rows = self._rows, []
        for start in range(0, len(rows), MLFLOW_BATCH):
            self._pending.append(self.client.log_batch(self.run_id, metrics=rows[start : start + MLFLOW_BATCH],
                                                       synchronous=False))

    def flush(self) -> None:
        """Submit what is buffered and wait until MLflow has stored every batch."""
        self.submit()
        pending, self._pending = self._pending, []
        for operations in pending:
            if operations is not None:
                operations.wait()


MLFLOW_BATCH = 1000  # MLflow's log_batch limit on metrics per call
