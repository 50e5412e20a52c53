"""``synthray stack …``: the local stack of real services on loopback."""

from __future__ import annotations

import sys

import click

from infra.progress import say

from infra.settings import get_settings
from infra.stack import LocalStack


@click.group("stack")
def stack() -> None:
    """Local SeaweedFS (S3), MLflow server and Ray head on 127.0.0.1."""


@stack.command("up")
def stack_up() -> None:
    """Start every service that is not running (a no-op when all are up)."""
    LocalStack(get_settings()).up(progress=say)


@stack.command("down")
def stack_down() -> None:
    """Stop exactly the processes `stack up` started."""
    LocalStack(get_settings()).down(progress=say)


@stack.command("status")
def stack_status() -> None:
    """One line per service: state, pid and URL. Exit code 1 if any is not ready."""
    rows = LocalStack(get_settings()).status()
    for row in rows:
        click.echo(f"{row['service']:<10} {row['state']:<8} pid {row['pid']:<8} {row['url']}")
    sys.exit(0 if all(r["state"] == "ready" for r in rows) else 1)


@click.command("fid-weights")
@click.option("--from-store", is_flag=True,
              help="download the copy published in the object store (cluster pods: nothing is baked into the image)")
@click.option("--sha256", default=None, help="with --from-store: which copy (default: the only one)")
@click.option("--publish", is_flag=True, help="also upload the provisioned weights to the object store")
def fid_weights(from_store: bool, sha256: str | None, publish: bool) -> None:
    """Provision pytorch-fid's Inception weights offline into the state directory."""
    from infra.errors import NotFound
    from infra.object_store import ObjectNotFoundError, ObjectStore
    from training.evaluate.inception_weights import fetch_from_store, provision, publish_to_store

    settings = get_settings()
    try:
        if from_store:
            weights = fetch_from_store(ObjectStore(settings), settings.torch_home, sha256)
        else:
            weights = provision(settings.torch_home)
        click.echo(f"FID weights: {weights.path}\nsha256: {weights.sha256}\nsource: {weights.source}")
        if publish:
            click.echo(f"published: {publish_to_store(ObjectStore(settings), weights)}")
    except ObjectNotFoundError as err:
        raise NotFound(f"not in the object store: {err}") from None
