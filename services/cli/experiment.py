"""``synthray experiment …``: augmentation and segmentation experiments on the catalog, Ray Train and MLflow."""

from __future__ import annotations

from pathlib import Path

import click

from infra.progress import say


@click.group("experiment")
def experiment() -> None:
    """Does synthetic data help a classifier or a segmenter? Does federated GAN training match centralised? Grids of runs with confidence intervals."""


def _grid_options(model: str, configs: str):
    """The options both experiments share; ``model`` is the config's nested trainer key (classifier, segmenter)."""
    options = [
        click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     required=True, help=f"experiment YAML (see {configs})"),
        click.option("--repeats", type=click.IntRange(1, 1000), default=None, help="seeds per cell (config: repeats)"),
        click.option("--epochs", type=click.IntRange(1, 100_000), default=None, help=f"config: {model}.epochs"),
        click.option("--workers", type=click.IntRange(1, 1024), default=None,
                     help=f"Ray Train workers (config: {model}.workers)"),
        click.option("--gpu/--cpu", "use_gpu", default=None, help=f"config: {model}.use_gpu"),
        click.option("--register/--no-register", default=None, help=f"register the best {model} as champion"),
        click.option("--dry-run", is_flag=True, help="check the config, the generators and the leakage guard; "
                                                     "train nothing"),
    ]

    def apply(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


def _overrides(model: str, repeats, epochs, workers, use_gpu, register) -> dict:
    """Command-line values that were given, as dotted config fields."""
    given = {"repeats": repeats, f"{model}.epochs": epochs, f"{model}.workers": workers, f"{model}.use_gpu": use_gpu,
             "register_best": register}
    return {k: v for k, v in given.items() if v is not None}


def _plan_or_run(cfg, plan, run, dry_run: bool, model: str) -> None:
    """``--dry-run``: print the plan; else run the grid and print the parent run and the registered model."""
    if dry_run:
        for line in plan(cfg).describe():
            click.echo(line)
        return
    result = run(cfg, progress=say)
    click.echo(f"parent run: {result.run_url}")
    registered = getattr(result, model, None)
    if registered is not None:
        click.echo(f"{model}: {registered.uri} ({registered.alias_uri})")


@experiment.command("augment")
@_grid_options("classifier", "training/experiments/configs/")
def augment(config_path: Path, repeats, epochs, workers, use_gpu, register, dry_run) -> None:
    """Run an augmentation experiment (knee Table 5, fracture Table 4, spine Methods I–IV, or custom)."""

    from training.experiments.config import ExperimentConfig
    from training.experiments.runner import plan, run_experiment

    cfg = ExperimentConfig.load(config_path, _overrides("classifier", repeats, epochs, workers, use_gpu, register))
    _plan_or_run(cfg, plan, run_experiment, dry_run, "classifier")


@experiment.command("segment")
@_grid_options("segmenter", "training/experiments/configs/*-segment*.yaml")
def segment(config_path: Path, repeats, epochs, workers, use_gpu, register, dry_run) -> None:
    """Segmentation Dice on real pairs only vs real + synthetic image + mask pairs (knee-MRI paper)."""

    from training.experiments.segment_config import SegmentExperimentConfig
    from training.experiments.segment_runner import plan_segment, run_segment_experiment

    cfg = SegmentExperimentConfig.load(config_path, _overrides("segmenter", repeats, epochs, workers, use_gpu, register))
    _plan_or_run(cfg, plan_segment, run_segment_experiment, dry_run, "segmenter")


@experiment.command("federated")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="experiment YAML (see training/experiments/configs/*-federated*.yaml)")
@click.option("--repeats", type=click.IntRange(1, 1000), default=None, help="seeds per arm (config: repeats)")
@click.option("--rounds", type=click.IntRange(1, 100_000), default=None, help="config: rounds")
@click.option("--out", "output", type=click.Path(file_okay=False), default=None,
              help="folder for the table and the plot (config: output; default out/experiments/NAME)")
@click.option("--dry-run", is_flag=True, help="check the config and the dataset's sites; train nothing")
def federated(config_path: Path, repeats, rounds, output, dry_run) -> None:
    """Federated K × n vs centralised K·n vs one site's n: FID table and FID against rounds (chest paper)."""

    from training.experiments.federated_config import FederatedExperimentConfig
    from training.experiments.federated_runner import plan_federated, run_federated_experiment

    given = {"repeats": repeats, "rounds": rounds, "output": output}
    cfg = FederatedExperimentConfig.load(config_path, {k: v for k, v in given.items() if v is not None})
    _plan_or_run(cfg, plan_federated, run_federated_experiment, dry_run, "generator")
    if not dry_run:
        out = cfg.output_dir()
        click.echo(f"table: {out / 'results.md'}; plot: {out / 'fid_vs_rounds.png'}")
