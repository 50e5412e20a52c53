"""Training wall img/s vs in-step img/s on small datasets (issue 31): how much of a run is training.

On a tiny dataset an epoch is a few steps, so whatever a run does per epoch besides its steps
(checkpoints, sample grids, MLflow, Ray Train reports, EMA BatchNorm recalibration) decides
its speed. Each run here is one ``train_gan`` with the **default** cadence (no flags:
``checkpoint_every``, ``checkpoint_minutes``, async MLflow), 2 workers, batch 32, on a phantom
selection of 100 or 1,000 images. Rank 0 measures, over its training phase (first step → the
last checkpoint's report):

* ``train_step_s``: seconds inside the steps (what the per-epoch ``images_per_s`` measures);
* ``train_wall_s``: wall seconds, everything included.

``ratio = train_step_s / train_wall_s`` = wall img/s ÷ in-step img/s (goal ≥ 0.8 on 100
images, ≥ 0.9 on 1,000). Both numbers come from the same run, so CPU contention from other
work on the machine hits both; the runs are interleaved (every preset's 100-image run, then
every 1,000-image run). FID is off (``fid_every=0``): it is an evaluation whose cost the user
chooses (``--fid-every``, ``--fid-n``), not bookkeeping. Context, not goals: the driver's wall
time (worker start and data load included) and, for comparison, the old behaviour
(``checkpoint_every=1``: checkpoint, grid and report every epoch) on the 100-image selection.

Needs the local stack (``synthray stack up``); writes ``out/bench/train_overhead.json``.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import click
import torch
from _common import write_json

from infra.cpus import available_cpus
from infra.settings import get_settings

# Epochs per run: 30-60 s of steps each on the 2-CPU development VM (wgan-gp-knee-small's
# critic steps make it ~10x slower per image than dcgan-fracture-small).
RUNS = [("dcgan-fracture-small", 100, 120), ("wgan-gp-knee-small", 100, 12),
        ("dcgan-fracture-small", 1000, 8), ("wgan-gp-knee-small", 1000, 2)]
PER_EPOCH = ("dcgan-fracture-small", 100, 30)  # the old cadence, for comparison (context)
GOALS = {100: 0.8, 1000: 0.9}


def _dataset(n: int) -> str:
    """``bench-overhead-N``: n phantom radiographs at 64 px, published once."""
    from training.catalog.phantom import PhantomSpec
    from training.catalog.selection import catalog, publish_phantom

    name = f"bench-overhead-{n}"
    cat = catalog()
    if name in cat.datasets():
        return str(cat.resolve(name))
    return str(publish_phantom(n, PhantomSpec(size=64, seed=11), name=name, progress=lambda _: None).ref)


def one_run(arch: str, n: int, epochs: int, **overrides) -> dict:
    from mlflow import MlflowClient

    from training.gan.config import GanTrainConfig
    from training.gan.trainer import train_gan

    cfg = GanTrainConfig(dataset=_dataset(n), arch=arch, epochs=epochs, workers=2, batch_size=32, fid_every=0,
                         experiment="synthray-bench-overhead", **overrides)
    started = time.perf_counter()
    result = train_gan(cfg, progress=click.echo)
    driver_s = time.perf_counter() - started
    client = MlflowClient(get_settings().mlflow_tracking_uri)
    run = client.get_run(result.run_id).data
    m = run.metrics
    # log_image names its files images/samples+step+42+timestamp+…: the steps with a sample grid
    grids = sorted({int(a.path.split("+step+")[1].split("+")[0]) for a in client.list_artifacts(result.run_id, "images")
                    if "samples+step+" in a.path})
    out = {"arch": arch, "images": n, "epochs": epochs, "run_id": result.run_id, "driver_wall_s": driver_s,
           "train_wall_s": m["train_wall_s"], "train_step_s": m["train_step_s"], "train_images": m["train_images"],
           "wall_img_s": m["train_wall_images_per_s"], "step_img_s": m["train_step_images_per_s"],
           "ratio": m["train_step_s"] / m["train_wall_s"], "grid_epochs": grids,
           "checkpoint_every": cfg.checkpoint_every, "checkpoint_minutes": cfg.checkpoint_minutes}
    click.echo(f"overhead: {arch} on {n} images, {epochs} epochs: wall {out['wall_img_s']:.1f} img/s vs in-step "
               f"{out['step_img_s']:.1f} img/s → {out['ratio']:.3f} (driver {driver_s:.0f} s)")
    return out


@click.command()
@click.option("--scale", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="multiply every run's epochs (longer runs: steadier ratios)")
@click.option("--compare/--no-compare", default=True, show_default=True,
              help="also run the old per-epoch cadence on 100 images (context)")
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/bench/train_overhead.json"), show_default=True)
def main(scale: float, compare: bool, out: Path) -> None:
    """Wall vs in-step img/s with the default cadence, 2 presets × 100/1,000 images."""
    runs = [one_run(arch, n, max(2, round(epochs * scale))) for arch, n, epochs in RUNS]
    for r in runs:
        r["goal"] = GOALS[r["images"]]
        r["passed"] = r["ratio"] >= r["goal"]
    per_epoch = None
    if compare:
        arch, n, epochs = PER_EPOCH
        per_epoch = one_run(arch, n, max(2, round(epochs * scale)), checkpoint_every=1)
    write_json(out, {"machine": {"cpus": available_cpus(), "platform": platform.platform(), "torch": torch.__version__},
                     "runs": runs, "per_epoch_cadence": per_epoch})
    click.echo(f"→ {out}")


if __name__ == "__main__":
    main()
