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

