"""Joining the Ray cluster and pointing Ray Train's storage at the object store."""

from __future__ import annotations

import logging
import os
import sys

from infra.settings import Settings, get_settings
from infra.stack import ray_env


def is_local(settings: Settings) -> bool:
    return settings.ray_address.startswith("127.")


def connect(settings: Settings | None = None, namespace: str = "synthray") -> None:
    """Join the configured cluster (the local head, or ``auto`` inside a pod); idempotent.

    Driver-side environment (loopback node IP, auth mode) must match the head's, and the
    worker processes inherit the S3 and MLflow settings through the runtime env.

    Unless ``--verbose`` (:func:`infra.progress.verbosity`), workers' stdout and stderr are not
    copied to this console (``log_to_driver=False``): Ray Train's per-report
    ``Reporting training result …`` lines, their worker-prefixed duplicates and Serve's replica
    access logs stay in the session's log files, ``{state_dir}/ray/session_latest/logs``
    (``worker-*.out|err``, ``train/``, ``serve/``). Errors still arrive as exceptions, and
    training progress comes back through :mod:`training.gan.progress`, not through the logs.
    """
    from infra.progress import verbosity

    settings = settings or get_settings()
    if is_local(settings):
        use_loopback()
    import ray

    if ray.is_initialized():
        return
    ray.init(
        address=settings.ray_address,
        namespace=namespace,
        logging_level=logging.WARNING,
        log_to_driver=verbosity() == "verbose",
        runtime_env={"env_vars": worker_env(settings)},
    )


def use_loopback() -> None:
    """Make this process resolve Ray's node IP to 127.0.0.1, like the local head does.

    Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, at import; without it a driver
    rewrites ``127.0.0.1:PORT`` to the host's external address and never reaches the
    loopback-only head. When ray was imported before this call, the already-read constant
    is set too (it is consulted on every address resolution).
    """
    os.environ.update(ray_env())
    module = sys.modules.get("ray._private.ray_constants")
    if module is not None:
        module.ENABLE_RAY_CLUSTER = False


def worker_env(settings: Settings) -> dict[str, str]:
    """SYNTHRAY_* variables of this process, so workers see the same settings."""
    env = {k: v for k, v in os.environ.items() if k.startswith("SYNTHRAY_")}
    env.setdefault("SYNTHRAY_STATE_DIR", str(settings.state_dir))
    # Ray's own helper actors call ray.init() without an address (Train V2's placement-group
    # cleaner, for one); with two local clusters on one machine (a dev stack and the test
    # stack) that guess fails and the stopped trial's CPUs are never released.
    env["RAY_ADDRESS"] = settings.ray_address
    env["TORCH_HOME"] = str(settings.torch_home)
    return env


def storage(settings: Settings | None = None):
    """(storage_path, filesystem) for ``RunConfig``: checkpoints go to the object store."""
    import pyarrow.fs

    settings = settings or get_settings()
    kwargs = {
        "access_key": settings.s3_access_key.get_secret_value(),
        "secret_key": settings.s3_secret_key.get_secret_value(),
        "region": settings.s3_region,
    }
    if settings.s3_endpoint_url:
        scheme, _, host = settings.s3_endpoint_url.partition("://")
        kwargs |= {"endpoint_override": host, "scheme": scheme}
    return f"{settings.bucket}/{settings.ray_results_prefix}", pyarrow.fs.S3FileSystem(**kwargs)


def require_workers(workers: int, use_gpu: bool = False) -> None:
    """Refuse (BadInput, one line) a worker group larger than the connected cluster's CPUs or GPUs."""
    import ray

    from infra.errors import BadInput

    kind = "GPU" if use_gpu else "CPU"
    have = int(ray.cluster_resources().get(kind, 0))
    if workers > have:
        raise BadInput(f"--workers {workers} needs {workers} {kind}s but the Ray cluster has {have}")
