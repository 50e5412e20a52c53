"""The one console entry point, ``synthray``.

Groups follow the layers: ``stack`` (infra), ``catalog``, ``train``, ``sweep``, ``registry``,
``eval`` and ``experiment`` (training),
``serve`` and ``demo`` (services). Heavy imports happen inside commands so ``--help``
stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from services.cli.stack import fid_weights, stack
from infra.settings import get_settings
from services.cli.catalog import catalog
from services.cli.train import sweep, train
from services.cli.eval import eval_group
from services.cli.experiment import experiment
from services.cli.registry import registry


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="synthray")
def main() -> None:
    """synthray: synthetic radiographs from GANs, on Ray, MLflow and S3."""


@click.group("serve")
def serve() -> None:
    """The Ray Serve HTTP API (synthesis, batches, FID, classification) on the local Ray."""


@serve.command("up")
def serve_up() -> None:
    """Deploy the Serve application; prints its base URL."""
    from services.serving import deploy as serve_app

    try:
        click.echo(serve_app.up(get_settings(), progress=click.echo))
    except serve_app.ServeError as err:
        raise click.ClickException(str(err)) from None


@serve.command("down")
def serve_down() -> None:
    """Delete the application and stop Serve."""
    from services.serving import deploy as serve_app

    try:
        serve_app.down(get_settings(), progress=click.echo)
    except serve_app.ServeError as err:
        raise click.ClickException(str(err)) from None


@serve.command("status")
def serve_status() -> None:
    """Application and deployment states as JSON."""
    from services.serving import deploy as serve_app

    try:
        click.echo(json.dumps(serve_app.status(get_settings()), indent=2, default=str))
    except serve_app.ServeError as err:
        raise click.ClickException(str(err)) from None


@click.command("generate")
@click.option("--model", required=True, help="NAME@alias or NAME/VERSION of a registered generator")
@click.option("--n", "n", type=click.IntRange(1), required=True, help="number of images")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True)
@click.option("--class", "cls", default=None, help="class name or index (conditional generators)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--url", default=None, help="API base URL [default: the local Serve address]")
@click.option("--api-key", envvar="SYNTHRAY_CLIENT_API_KEY", default=None,
              help="bearer key [default: the first configured key]")
def generate(model, n, seed, cls, out_dir, url, api_key) -> None:
    """Fetch synthetic images over the HTTP API (a batch job when n exceeds the synchronous cap)."""
    from services.client import ApiClient, ApiError

    try:
        with ApiClient(get_settings(), url=url, api_key=api_key) as client:
            client.generate(model, n, seed, out_dir, cls=cls, echo=click.echo)
    except ApiError as err:
        raise click.ClickException(str(err)) from None


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
    from services.cli.cluster import ClusterError, JobRequest, submit_kube, submit_ray

    request = JobRequest(list(command), workers=workers, gpus=gpus, release=release, namespace=namespace,
                         values_files=list(values_files))
    try:
        status = submit_ray(request, ray_address, click.echo) if ray_address else submit_kube(request, click.echo)
    except ClusterError as err:
        raise click.ClickException(str(err)) from None
    if status != "SUCCEEDED":
        raise click.ClickException(f"the job ended {status}")


@click.command("demo")
@click.option("--images", type=click.IntRange(64, 100_000), default=1000, show_default=True)
@click.option("--image-size", type=click.IntRange(32, 512), default=64, show_default=True)
@click.option("--epochs", type=click.IntRange(1, 1000), default=5, show_default=True)
@click.option("--steps-per-epoch", type=click.IntRange(1), default=400, show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--fid-n", type=click.IntRange(2, 50_000), default=300, show_default=True)
@click.option("--batch-n", type=click.IntRange(1, 256), default=16, show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("out/demo"),
              show_default=True)
@click.option("--max-floor-ratio", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="the demo's promotion gate: FID <= this x the real-vs-real floor at n = --fid-n")
def demo(**kwargs) -> None:
    """Stack up → phantom → Ray Train GAN → FID → registry → Serve batch, with a summary."""
    from services.cli.demo import DemoOptions, run_demo

    run_demo(DemoOptions(**kwargs), get_settings(), echo=click.echo)


for command in (stack, fid_weights, catalog, train, sweep, registry, eval_group, experiment, serve, generate,
                cluster, demo):
    main.add_command(command)


if __name__ == "__main__":
    main()
