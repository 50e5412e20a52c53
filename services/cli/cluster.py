"""Sending training to a cluster: ``synthray cluster train -- train gan …`` (``make train-cluster``).

Two ways in, both followed to the end (status changes and a log tail; the exit code is the job's):

- **kube** (default): render the chart's RayJob template (``charts/synthray``, rayJob.enabled)
  with the command as its entrypoint, ``kubectl apply`` it in the current context and watch
  ``.status.jobStatus``. KubeRay starts a Ray cluster for the job and removes it afterwards.
- **ray**: ``--ray-address http://HEAD:8265`` submits to an existing Ray cluster's job API.

The command is parsed with the real ``synthray`` CLI first, and the target is probed with a
short timeout, so a typo or an unreachable cluster fails in seconds with one line.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import click

from infra.progress import say

from infra.errors import SynthrayError

CHART = Path(__file__).resolve().parents[2] / "charts" / "synthray"
RAYJOB_TEMPLATE = "synthray/templates/rayjob.yaml"
PROBE_TIMEOUT_S = 5
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
Echo = Callable[[str], None]


class ClusterError(SynthrayError):
    """The job could not be submitted or did not succeed; the message is one line."""


def _cli_root() -> click.Group:
    """The ``synthray`` root group, found through its console-script entry point (pyproject.toml).

    The CLI registers this module's ``cluster`` group, so importing the CLI here would make the
    two modules import each other; the entry point is the installed CLI itself.
    """
    from importlib.metadata import entry_points

    (entry,) = entry_points(group="console_scripts", name="synthray")
    return entry.load()


def parse_command(args: Sequence[str]) -> click.Command:
    """Parse ``synthray ARGS`` with the real CLI, without running it; the leaf command.

    Unknown commands, unknown options, bad types and missing required options raise
    ``click.UsageError``, exactly as the job's driver would fail, minutes later, on the cluster.
    """
    root = _cli_root()
    ctx = root.make_context("synthray", list(args))
    command: click.Command = root
    while isinstance(command, click.Group):
        name, sub, rest = command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        if sub is None:
            raise click.UsageError(f"no such command {name!r}", ctx)
        ctx = sub.make_context(name, rest, parent=ctx)
        command = sub
    return command


def check_training_command(args: Sequence[str]) -> str:
    """The entrypoint ``synthray …`` of a training/sweep/experiment command, after a dry parse."""
    if not args or args[0] not in {"train", "sweep", "experiment"}:
        raise ClusterError(f"expected a `train …`, `sweep …` or `experiment …` command, got {' '.join(args) or 'nothing'!r}")
    try:
        parse_command(args)
    except click.UsageError as err:
        raise ClusterError(f"synthray {' '.join(args)}: {err.format_message()}") from None
    return shlex.join(["synthray", *args])


@dataclass
class JobRequest:
    """What to run and on what: the command, workers and GPUs per worker, chart values."""

    args: list[str]
    workers: int = 2
    gpus: int = 0
    release: str = "synthray"
    namespace: str | None = None
    values_files: list[Path] = field(default_factory=list)
    suffix: str = field(default_factory=lambda: time.strftime("train-%Y%m%d-%H%M%S"))

    def values(self) -> dict:
        """Chart values for the job: the RayJob on, its entrypoint, the worker group sized."""
        import yaml

        merged: dict = {}
        for path in self.values_files:
            _merge(merged, yaml.safe_load(Path(path).read_text()) or {})
        group = "gpuWorkers" if self.gpus else "cpuWorkers"
        sizing = {"replicas": self.workers, "minReplicas": self.workers, "maxReplicas": self.workers}
        if self.gpus:
            sizing["gpusPerWorker"] = self.gpus
        _merge(merged, {"serve": {"enabled": False}, "ray": {group: sizing},
                        "rayJob": {"enabled": True, "entrypoint": check_training_command(self.args),
                                   "useGpu": bool(self.gpus), "suffix": self.suffix}})
        return merged


def _merge(into: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def render_rayjob(request: JobRequest) -> str:
    """The RayJob manifest of ``request`` (only that object, not the rest of the release)."""
    import helm_python

    chart = helm_python.Chart.load(str(CHART))
    try:
        rendered = chart.render(request.values(), name=request.release, namespace=request.namespace or "default")
    finally:
        chart.close()
    return rendered[RAYJOB_TEMPLATE]


def _kubectl(*args: str, stdin: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"kubectl {args[0]} did not answer within {timeout:.0f} s") from None


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "no output")


def submit_kube(request: JobRequest, echo: Echo = print, poll_s: float = 5.0) -> str:
    """Apply the RayJob in the current kube context and follow it; the final job status."""
    import yaml

    entrypoint = check_training_command(request.args)  # a typo fails before anything is contacted
    if shutil.which("kubectl") is None:
        raise ClusterError("kubectl not found on PATH: install it, or submit to a Ray cluster with --ray-address")
    ns = ["--namespace", request.namespace] if request.namespace else []
    probe = _kubectl("version", f"--request-timeout={PROBE_TIMEOUT_S}s", "-o", "json", timeout=PROBE_TIMEOUT_S + 5)
    if probe.returncode or "serverVersion" not in probe.stdout:
        raise ClusterError(f"no reachable Kubernetes cluster in the current context: {_first_line(probe.stderr)}")
    manifest = render_rayjob(request)
    name = yaml.safe_load(manifest)["metadata"]["name"]
    applied = _kubectl("apply", *ns, "-f", "-", stdin=manifest)
    if applied.returncode:
        raise ClusterError(f"kubectl apply: {_first_line(applied.stderr)}")
    echo(f"cluster: RayJob {name} submitted: {entrypoint}")
    status = ""
    while status not in TERMINAL:
        time.sleep(poll_s)
        got = _kubectl("get", "rayjob", name, *ns, "-o", "json")
        if got.returncode:
            raise ClusterError(f"kubectl get rayjob {name}: {_first_line(got.stderr)}")
        state = json.loads(got.stdout).get("status", {})
        now = f"{state.get('jobDeploymentStatus', '?')}/{state.get('jobStatus', 'PENDING')}"
        if now != status:
            echo(f"cluster: {name} {now}")
        status = state.get("jobStatus", "")
        if state.get("jobDeploymentStatus") == "Failed":
            status = "FAILED"
    logs = _kubectl("logs", f"job/{name}", *ns, "--tail=40")
    for line in (logs.stdout or logs.stderr).splitlines():
        echo(f"  {line}")
    return status


def submit_ray(request: JobRequest, address: str, echo: Echo = print, poll_s: float = 2.0) -> str:
    """Submit to an existing Ray cluster's job API and follow it; the final job status."""
    import httpx

    entrypoint = check_training_command(request.args)
    try:
        httpx.get(f"{address.rstrip('/')}/api/version", timeout=PROBE_TIMEOUT_S).raise_for_status()
    except httpx.HTTPError as err:
        raise ClusterError(f"no Ray job API at {address}: {type(err).__name__}: {err}") from None
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    job_id = client.submit_job(entrypoint=entrypoint, metadata={"submitted_by": "synthray cluster train"})
    echo(f"cluster: Ray job {job_id} submitted to {address}: {entrypoint}")
    seen, status = 0, None
    while status is None or not status.is_terminal():
        time.sleep(poll_s)
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        for line in logs[seen:].splitlines():
            echo(f"  {line}")
        seen = len(logs)
    echo(f"cluster: Ray job {job_id} {status.value}")
    return status.value


@click.group("cluster")
def cluster() -> None:
    """Run training on a Kubernetes cluster (KubeRay RayJob) or an existing Ray cluster."""


@cluster.command("train", context_settings={"allow_interspersed_args": False})
@click.option("--workers", type=click.IntRange(1, 1024), default=2, show_default=True,
              help="worker pods of the job's Ray cluster (match the command's --workers)")
@click.option("--gpus", type=click.IntRange(0, 16), default=0, show_default=True,
              help="GPUs per worker; > 0 uses the chart's GPU worker group")
@click.option("--ray-address", default=None, help="submit to this Ray job API (http://HEAD:8265) instead of kubectl")
@click.option("--release", default="synthray", show_default=True, help="Helm release name (object names, Services)")
@click.option("--namespace", default=None, help="Kubernetes namespace [default: the context's]")
@click.option("--values", "values_files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="chart values files, as given to helm install (image, S3, MLflow)")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
def cluster_train(workers, gpus, ray_address, release, namespace, values_files, command) -> None:
    """Submit `synthray COMMAND…` (train/sweep/experiment) and follow it; exit 1 unless it succeeds."""
    request = JobRequest(list(command), workers=workers, gpus=gpus, release=release, namespace=namespace,
                         values_files=list(values_files))
    status = submit_ray(request, ray_address, say) if ray_address else submit_kube(request, say)
    if status != "SUCCEEDED":
        raise click.ClickException(f"the job ended {status}")
