"""``synthray serve …`` (the Ray Serve app on the local Ray) and ``synthray generate`` (its HTTP client)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from infra.progress import say

from infra.settings import get_settings


@click.group("serve")
def serve() -> None:
    """The Ray Serve HTTP API (synthesis, batches, FID, classification) on the local Ray."""


@serve.command("up")
def serve_up() -> None:
    """Deploy the Serve application; prints its base URL."""
    from services.serving import deploy as serve_app

    click.echo(serve_app.up(get_settings(), progress=say))


@serve.command("down")
def serve_down() -> None:
    """Delete the application and stop Serve."""
    from services.serving import deploy as serve_app

    serve_app.down(get_settings(), progress=say)


@serve.command("status")
def serve_status() -> None:
    """Application and deployment states as JSON."""
    from services.serving import deploy as serve_app

    click.echo(json.dumps(serve_app.status(get_settings()), indent=2, default=str))


@click.command("generate")
@click.option("--model", required=True, help="NAME@alias or NAME/VERSION of a registered generator")
@click.option("--n", "n", type=click.IntRange(1), required=True, help="number of images")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True)
@click.option("--class", "cls", default=None, help="class name or index (conditional generators)")
@click.option("--labels", default=None, metavar="0/1,…",
              help="multi-hot findings of a multi-label generator, one 0/1 per finding, e.g. 1,0,1")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--url", default=None, help="API base URL [default: the local Serve address]")
@click.option("--api-key", envvar="SYNTHRAY_CLIENT_API_KEY", default=None,
              help="bearer key [default: the first configured key]")
@click.option("--format", "fmt", type=click.Choice(("png", "dicom")), default="png", show_default=True,
              help="png, or DICOM Secondary Capture files marked synthetic (ConversionType SYN)")
@click.option("--filter", "filter_name", type=click.Choice(("none", "near-copy")), default=None,
              help="near-copy: drop and deterministically replace images too close to a training image "
                   "[default: the model card's default]")
def generate(model, n, seed, cls, labels, out_dir, url, api_key, fmt, filter_name) -> None:
    """Fetch synthetic images over the HTTP API (a batch job when n exceeds the synchronous cap)."""
    from services.client import ApiClient

    multi_hot = None
    if labels is not None:
        try:
            multi_hot = [int(v) for v in labels.split(",")]
        except ValueError:
            raise click.BadParameter(f"{labels!r}: give one 0 or 1 per finding, e.g. 1,0,1",
                                     param_hint="--labels") from None
    with ApiClient(get_settings(), url=url, api_key=api_key) as client:
        client.generate(model, n, seed, out_dir, cls=cls, echo=say, fmt=fmt, labels=multi_hot, filter=filter_name)
