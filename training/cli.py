"""``synthray catalog …`` and ``synthray train …``."""

from __future__ import annotations

import click

from infra.catalog import CatalogError
from infra.settings import get_settings


@click.group("catalog")
def catalog() -> None:
    """Datasets in the object store, addressed as name@version."""


@catalog.command("phantom")
@click.option("--n", "n", type=click.IntRange(1, 1_000_000), default=1000, show_default=True, help="images")
@click.option("--size", type=click.IntRange(32, 1024), default=210, show_default=True, help="side in pixels")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--name", default="phantom-knee", show_default=True, help="dataset name")
def catalog_phantom(n: int, size: int, seed: int, name: str) -> None:
    """Publish the procedural knee-radiograph PHANTOM (not medical data) as a dataset."""
    from training.datasets import publish_phantom
    from training.phantom import PhantomSpec

    try:
        manifest = publish_phantom(n, PhantomSpec(size=size, seed=seed), name=name, progress=click.echo)
    except (CatalogError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(str(manifest.ref))


@catalog.command("list")
def catalog_list() -> None:
    """Every dataset with its latest version and image count."""
    from training.datasets import catalog as open_catalog

    cat = open_catalog(get_settings())
    for name in cat.datasets():
        manifest = cat.manifest(name)
        click.echo(f"{manifest.ref}  {len(manifest.records)} images  classes={','.join(manifest.classes)}")


@catalog.command("show")
@click.argument("ref")
def catalog_show(ref: str) -> None:
    """Counts per split and class of REF (name@version or name)."""
    from collections import Counter

    from training.datasets import catalog as open_catalog

    try:
        manifest = open_catalog(get_settings()).manifest(ref)
    except CatalogError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"{manifest.ref}: {manifest.description}")
    counts = Counter((r.split, r.label_name) for r in manifest.records)
    for (split, label), count in sorted(counts.items()):
        click.echo(f"  {split:<6} {label:<8} {count}")


@click.group("train")
def train() -> None:
    """Distributed training on Ray Train, tracked in MLflow."""


@train.command("gan")
@click.option("--dataset", required=True, help="catalog dataset, name@version or name")
@click.option("--arch", default="wgan-gp-knee-small", show_default=True, help="GAN preset name")
@click.option("--epochs", type=click.IntRange(1, 100_000), default=5, show_default=True)
@click.option("--workers", type=click.IntRange(1, 1024), default=2, show_default=True)
@click.option("--gpu/--cpu", "use_gpu", default=False, show_default=True)
@click.option("--class", "class_label", type=click.IntRange(0), default=None, help="train on one class")
@click.option("--limit", type=click.IntRange(1), default=None, help="use the first N training images")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="global batch (preset default)")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--register/--no-register", default=True, show_default=True,
              help="register the generator and point alias champion at it")
def train_gan_cmd(dataset, arch, epochs, workers, use_gpu, class_label, limit, batch_size, seed, register) -> None:
    """Train a GAN preset on DATASET and (optionally) register the generator."""
    from pydantic import ValidationError

    from training.model_registry import register_generator, registered_name
    from training.models.registry import get_preset
    from training.train_gan import GanTrainConfig, train_gan

    try:
        get_preset(arch)
        cfg = GanTrainConfig(dataset=dataset, arch=arch, epochs=epochs, workers=workers, use_gpu=use_gpu,
                             class_label=class_label, limit=limit, batch_size=batch_size, seed=seed)
        result = train_gan(cfg, progress=click.echo)
    except (CatalogError, ValueError, ValidationError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"run: {result.run_url}\ncheckpoint: {result.checkpoint_path}")
    if register:
        name = registered_name(result.dataset, arch, None if class_label is None else f"class{class_label}")
        reg = register_generator(result.sampler, name, run_id=result.run_id,
                                 tags={"dataset": result.dataset, "epoch": str(epochs)})
        click.echo(f"model: {reg.uri} (version {reg.version})")
