"""``synthray train …``."""

from __future__ import annotations

import click

from infra.catalog import CatalogError


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
