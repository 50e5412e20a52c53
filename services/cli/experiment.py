"""``synthray experiment …``: augmentation experiments on the catalog, Ray Train and MLflow."""

from __future__ import annotations

from pathlib import Path

import click

from infra.progress import say


@click.group("experiment")
def experiment() -> None:
    """Does synthetic data help a classifier or a segmenter? Grids of runs with confidence intervals."""


@experiment.command("augment")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="experiment YAML (see training/experiments/configs/)")
@click.option("--repeats", type=click.IntRange(1, 1000), default=None, help="seeds per cell (config: repeats)")
@click.option("--epochs", type=click.IntRange(1, 100_000), default=None, help="classifier epochs (config: classifier.epochs)")
@click.option("--workers", type=click.IntRange(1, 1024), default=None, help="Ray Train workers (config: classifier.workers)")
@click.option("--gpu/--cpu", "use_gpu", default=None, help="config: classifier.use_gpu")
@click.option("--register/--no-register", default=None, help="register the best classifier as champion")
@click.option("--dry-run", is_flag=True, help="check the config, the splits and the leakage guard; train nothing")
def augment(config_path: Path, repeats, epochs, workers, use_gpu, register, dry_run) -> None:
    """Run an augmentation experiment (knee Table 5, fracture Table 4, spine Methods I–IV, or custom)."""

    from training.experiments.config import ExperimentConfig
    from training.experiments.runner import plan, run_experiment

    overrides = {k: v for k, v in {"repeats": repeats, "classifier.epochs": epochs, "classifier.workers": workers,
                                   "classifier.use_gpu": use_gpu, "register_best": register}.items() if v is not None}
    cfg = ExperimentConfig.load(config_path, overrides)
    if dry_run:
        for line in plan(cfg).describe():
            click.echo(line)
        return
    result = run_experiment(cfg, progress=say)
    click.echo(f"parent run: {result.run_url}")
    if result.classifier is not None:
        click.echo(f"classifier: {result.classifier.uri} ({result.classifier.alias_uri})")


@experiment.command("segment")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="segmentation experiment YAML (see training/experiments/configs/*-segment.yaml)")
@click.option("--repeats", type=click.IntRange(1, 1000), default=None, help="seeds per cell (config: repeats)")
@click.option("--epochs", type=click.IntRange(1, 100_000), default=None, help="U-Net epochs (config: segmenter.epochs)")
@click.option("--workers", type=click.IntRange(1, 1024), default=None, help="Ray Train workers (config: segmenter.workers)")
@click.option("--gpu/--cpu", "use_gpu", default=None, help="config: segmenter.use_gpu")
@click.option("--register/--no-register", default=None, help="register the best segmenter as champion")
@click.option("--dry-run", is_flag=True, help="check the config, the generators and the leakage guard; train nothing")
def segment(config_path: Path, repeats, epochs, workers, use_gpu, register, dry_run) -> None:
    """Segmentation Dice on real pairs only vs real + synthetic image + mask pairs (knee-MRI paper)."""

    from training.experiments.segment_config import SegmentExperimentConfig
    from training.experiments.segment_runner import plan_segment, run_segment_experiment

    overrides = {k: v for k, v in {"repeats": repeats, "segmenter.epochs": epochs, "segmenter.workers": workers,
                                   "segmenter.use_gpu": use_gpu, "register_best": register}.items() if v is not None}
    cfg = SegmentExperimentConfig.load(config_path, overrides)
    if dry_run:
        for line in plan_segment(cfg).describe():
            click.echo(line)
        return
    result = run_segment_experiment(cfg, progress=say)
    click.echo(f"parent run: {result.run_url}")
    if result.segmenter is not None:
        click.echo(f"segmenter: {result.segmenter.uri} (champion)")
