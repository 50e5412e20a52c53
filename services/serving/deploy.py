"""``synthray serve up|down|status``: the synthesis API on the configured Ray cluster.

``up`` deploys ``serve_config.yaml`` exactly as a RayService would: the file is validated
as a ``ServeDeploySchema`` and applied declaratively through the Serve controller, so the
controller builds the app from ``import_path`` and applies the per-deployment options. Only
two things are added at deploy time, neither of which belongs in the shared file:

* HTTP host/port from Settings (``serve.start``; Serve fixes them at its first start);
* the application ``runtime_env.env_vars``: this process's SYNTHRAY_* settings (replicas
  need the MLflow URI) plus a fingerprint of the project's source, so ``up`` after a code
  change rebuilds the app, while ``up`` with nothing changed leaves it running untouched.

Quirk: Ray 2.60's only public way to apply a config file is the dashboard's REST API
(``serve deploy``), which needs the dashboard and its port. ``_client()`` instead uses the
controller client that ``serve run config.yaml`` itself uses
(``ServeControllerClient.deploy_apps``, a private API): it works with or without the
dashboard, over the same Ray connection as everything else.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import yaml

from infra.settings import PROJECT_ROOT, Settings, get_settings
from infra.errors import SynthrayError
from infra.logs import route_to_file
from infra.progress import Bar, Progress, bar

CONFIG_PATH = Path(__file__).with_name("serve_config.yaml")
CODE_VERSION_VAR = "SYNTHRAY_SERVE_CODE_VERSION"
_SOURCE_PACKAGES = ("infra", "training", "services")
_POLL_S = 0.5


class ServeError(SynthrayError):
    """Serve could not be started, deployed, reached or stopped; the message says why."""


def load_config(path: Path = CONFIG_PATH):
    """``serve_config.yaml`` validated as a Ray Serve ``ServeDeploySchema``."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    try:
        return ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise ServeError(f"invalid Serve config {path}: {exc}") from exc


def app_name(path: Path = CONFIG_PATH) -> str:
    """The (single) application name in the config: ``synthray``."""
    (app,) = load_config(path).applications
    return app.name


def code_version() -> str:
    """Hash of the project's Python sources: changes whenever replica code would."""
    digest = hashlib.sha256()
    for package in _SOURCE_PACKAGES:
        for file in sorted((PROJECT_ROOT / package).rglob("*.py")):
            digest.update(str(file.relative_to(PROJECT_ROOT)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def deploy_config(settings: Settings, path: Path = CONFIG_PATH):
    """The config to apply: the file, plus SYNTHRAY_* env vars and the code fingerprint."""
    from infra.ray_runtime import worker_env

    config = load_config(path)
    env = worker_env(settings) | {
        # Explicit, in case ``settings`` differs from this process's environment.
        "SYNTHRAY_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "SYNTHRAY_LOG_FORMAT": settings.log_format,  # the Api's request lines and batch coordinators
        CODE_VERSION_VAR: code_version(),
    }
    for app in config.applications:
        runtime_env = dict(app.runtime_env or {})
        runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **env}
        app.runtime_env = runtime_env
        app.logging_config = logging_config(settings)
    check_batching(config)
    return config


def logging_config(settings: Settings):
    """Serve's ``LoggingConfig`` for the app: ``SYNTHRAY_LOG_FORMAT`` json → JSON lines.

    Access logs stay on, in the replicas' log files (``{state_dir}/ray/session_latest/logs/serve/``);
    they reach a console only with ``--verbose`` (:func:`infra.ray_runtime.connect`). In JSON
    each record carries Serve's request id, route, deployment and replica, plus the fields the
    Api adds to its one request line (model, model version, status, duration_ms).
    """
    from ray.serve.schema import LoggingConfig

    return LoggingConfig(encoding="JSON" if settings.log_format == "json" else "TEXT", enable_access_log=True)


def check_batching(config) -> None:
    """The Synthesizer must admit as many requests as its batch holds images (see serve_config.yaml).

    Raises:
        ServeError: ``max_ongoing_requests`` < ``max_batch_images`` (Ray would warn and cap batches).
    """
    for app in config.applications:
        images = (app.args or {}).get("max_batch_images")
        for deployment in app.deployments:
            if deployment.name == "Synthesizer" and images and deployment.max_ongoing_requests < images:
                raise ServeError(f"Serve config: Synthesizer max_ongoing_requests ({deployment.max_ongoing_requests}) "
                                 f"is below max_batch_images ({images}); a batch of small requests could never fill")


def base_url(settings: Settings) -> str:
    """Where clients reach the API (a wildcard bind is reached over loopback)."""
    host = "127.0.0.1" if settings.serve_host in ("0.0.0.0", "::", "") else settings.serve_host
    return f"http://{host}:{settings.serve_port}"


def _connect(settings: Settings) -> None:
    from infra.ray_runtime import connect, is_local
    from infra.stack import port_in_use

    if is_local(settings) and not port_in_use(settings.bind_host, settings.ray_port):
        raise ServeError(f"Ray is not running at {settings.ray_address}; start the local stack first: synthray stack up")
    connect(settings)


def _client(required: bool = True):
    """Serve's controller client, or None when Serve is not running (and not ``required``)."""
    from ray.serve.context import _get_global_client

    return _get_global_client(raise_if_no_controller_running=required)


def up(settings: Settings | None = None, progress: Progress = print, timeout_s: float = 180.0) -> str:
    """Start Serve (if needed), deploy serve_config.yaml, wait until healthy; the base URL.

    Idempotent: with unchanged config and code nothing restarts; a changed config or
    source tree is rolled out. Raises :class:`ServeError` if Serve already listens on
    another host/port, the app fails to deploy, or it is not healthy within ``timeout_s``.
    """
    from services.serving.auth import ensure_local_key

    settings = settings or get_settings()
    config = deploy_config(settings)
    (app,) = config.applications
    key_file = ensure_local_key(settings)
    if key_file:
        progress(f"no API key configured: wrote a random one to {key_file} (clients on this machine read it)")
    url = base_url(settings)
    _connect(settings)
    from ray import serve

    route_to_file(["ray.serve"], settings)  # Serve's driver-side INFO lines ("Started Serve …") unless --verbose
    serve.start(http_options={"host": settings.serve_host, "port": settings.serve_port})
    client = _client()
    running = client.http_config
    if (running.host, running.port) != (settings.serve_host, settings.serve_port):
        raise ServeError(
            f"Ray Serve already runs on {running.host}:{running.port}, not {settings.serve_host}:{settings.serve_port}; "
            "run 'synthray serve down' first"
        )
    progress(f"deploying application {app.name!r} ({CONFIG_PATH.name}) on Ray Serve at "
             f"{settings.serve_host}:{settings.serve_port}")
    client.deploy_apps(config)
    with bar(f"serve: {app.name} deployments healthy", total=len(app.deployments), unit="deployment") as shown:
        _wait_running(app.name, shown, deadline=time.monotonic() + timeout_s)
    _wait_http(url, progress, deadline=time.monotonic() + timeout_s)
    progress(f"{app.name} is RUNNING at {url} (OpenAPI: {url}/docs)")
    return url


def _wait_running(name: str, shown: Bar, deadline: float) -> None:
    """Poll Serve until every deployment is HEALTHY; ``shown`` counts the healthy ones (states as info)."""
    from ray import serve

    while True:
        overview = serve.status().applications.get(name)
        state = _app_summary(overview) if overview else {"status": "NOT_STARTED", "message": "", "deployments": {}}
        waiting = ", ".join(f"{d} {s['status']}" for d, s in sorted(state["deployments"].items())
                            if s["status"] != "HEALTHY")
        healthy = sum(s["status"] == "HEALTHY" for s in state["deployments"].values())
        shown.update(healthy, info=state["status"] + (f" ({waiting})" if waiting else ""))
        if state["status"] == "RUNNING" and all(d["status"] == "HEALTHY" for d in state["deployments"].values()):
            return
        if state["status"] == "DEPLOY_FAILED":
            raise ServeError(f"application {name!r} failed to deploy:\n{_message(state)}")
        if time.monotonic() > deadline:
            raise ServeError(f"application {name!r} not running in time (status {state['status']}):\n{_message(state)}")
        time.sleep(_POLL_S)


def _wait_http(url: str, progress: Progress, deadline: float) -> None:
    import httpx

    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=5).is_success:
                return
            reason = "healthz not OK yet"
        except httpx.HTTPError as exc:
            reason = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            raise ServeError(f"{url}/healthz unreachable: {reason}")
        time.sleep(_POLL_S)


def _message(state: dict[str, Any]) -> str:
    lines = [state["message"]] if state["message"] else []
    lines += [f"{name}: {d['message']}" for name, d in state["deployments"].items() if d["message"]]
    return "\n".join(lines) or "(no message from Serve)"


def _app_summary(overview) -> dict[str, Any]:
    return {
        "status": str(overview.status.value),
        "message": overview.message,
        "deployments": {
            name: {
                "status": str(dep.status.value),
                "replicas": {str(getattr(k, "value", k)): n for k, n in dep.replica_states.items()},
                "message": dep.message,
            }
            for name, dep in overview.deployments.items()
        },
    }


def down(settings: Settings | None = None, progress: Progress = print) -> None:
    """Delete the application and shut Serve down; a no-op when Serve is not running."""
    settings = settings or get_settings()
    _connect(settings)
    from ray import serve

    if _client(required=False) is None:
        progress("Ray Serve is not running")
        return
    name = app_name()
    if name in serve.status().applications:
        progress(f"deleting application {name!r}")
        serve.delete(name)
    progress("shutting down Ray Serve")
    serve.shutdown()


def status(settings: Settings | None = None) -> dict[str, Any]:
    """Serve's state, JSON-ready: ``running``, ``url``, ``healthy`` (HTTP), proxies, applications."""
    import httpx

    settings = settings or get_settings()
    _connect(settings)
    from ray import serve

    url = base_url(settings)
    if _client(required=False) is None:
        return {"running": False, "url": url, "healthy": False, "proxies": {}, "applications": {}}
    current = serve.status()
    try:
        healthy = httpx.get(f"{url}/healthz", timeout=5).is_success
    except httpx.HTTPError:
        healthy = False
    return {
        "running": True,
        "url": url,
        "healthy": healthy,
        "proxies": {node: str(getattr(s, "value", s)) for node, s in current.proxies.items()},
        "applications": {name: _app_summary(app) for name, app in current.applications.items()},
    }
