"""Training throughput: Ray Train with W workers (DDP) vs a plain single-process PyTorch loop.

Both sides train the same preset with the same global batch on the same catalog images with
the same step function (:func:`training.gan.loop.train_step`); the plain loop runs in this
process, with 1 torch thread and with every usable CPU (the better one is the baseline), Ray
Train runs W single-threaded workers that all-reduce gradients every step. Reported:

* ``steady_img_s``: real images per second over the epochs after the first (warm-up), from
  the workers' own per-epoch timing for Ray and the same timing for the plain loop;
* ``wall_s``: end-to-end wall time, Ray's including worker start, data load and checkpoints;
* ``ratio_steady`` = Ray / plain steady-state img/s (the number to compare).

Needs the local stack (``synthray stack up``); writes ``out/bench/train_gan.json``.
"""

from __future__ import annotations

import contextlib
import platform
import time
from pathlib import Path

import click
import torch
from _common import bench_dataset, write_json

from infra.cpus import available_cpus
from infra.settings import get_settings
from training.catalog.selection import load_tensors
from training.gan.config import GanTrainConfig
from training.gan.loop import build_pair, train_step
from training.gan.losses import make_loss
from training.nets.presets import get_preset
from training.gan.trainer import train_gan


def plain_loop(cfg: GanTrainConfig, threads: int) -> dict:
    """The same training in one process, no Ray, no DDP."""
    torch.set_num_threads(threads)
    hp, preset = cfg.hyperparameters(), get_preset(cfg.arch)
    data = load_tensors(cfg.dataset, **cfg.selection())
    torch.manual_seed(cfg.seed)
    pair = build_pair(preset, hp, num_classes=1)
    loss = make_loss(hp["loss"], hp["gp_lambda"])
    batch = hp["batch_size"]
    steps = len(data.images) // batch
    rates, started = [], time.perf_counter()
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        order = torch.randperm(len(data.images))
        for step in range(steps):
            idx = order[step * batch : (step + 1) * batch]
            train_step(pair, loss, data.images[idx], data.labels[idx], hp, contextlib.nullcontext)
        rates.append(steps * batch / (time.perf_counter() - t0))
        click.echo(f"plain: epoch {epoch + 1}/{cfg.epochs} {rates[-1]:.1f} img/s")
    return {"steady_img_s": sum(rates[1:]) / len(rates[1:]), "epoch_img_s": rates,
            "wall_s": time.perf_counter() - started, "threads": threads}


def ray_train(cfg: GanTrainConfig) -> dict:
    from mlflow import MlflowClient

    started = time.perf_counter()
    result = train_gan(cfg, progress=click.echo)
    wall = time.perf_counter() - started
    history = MlflowClient(get_settings().mlflow_tracking_uri).get_metric_history(result.run_id, "images_per_s")
    rates = [m.value for m in sorted(history, key=lambda m: m.step)]
    return {"steady_img_s": sum(rates[1:]) / len(rates[1:]), "epoch_img_s": rates, "wall_s": wall,
            "workers": cfg.workers, "run_id": result.run_id}


@click.command()
@click.option("--arch", default="wgan-gp-knee-small", show_default=True)
@click.option("--images", type=click.IntRange(64), default=640, show_default=True)
@click.option("--epochs", type=click.IntRange(2), default=4, show_default=True)
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/bench/train_gan.json"), show_default=True)
def main(arch: str, images: int, epochs: int, workers: int, batch_size: int, out: Path) -> None:
    """Time Ray Train (W workers) against one plain PyTorch process on the same work."""
    preset = get_preset(arch)
    dataset = bench_dataset(images, preset.image_size)
    cfg = GanTrainConfig(dataset=dataset, arch=arch, epochs=epochs, workers=workers, batch_size=batch_size,
                         fid_every=0, grid_size=16, experiment="synthray-bench-train")
    # The plain baseline is the faster of 1 thread and all usable CPUs: intra-op threading of
    # these small convolutions does not always pay, and the baseline should be one process at its best.
    plains = [plain_loop(cfg, t) for t in sorted({1, available_cpus()})]
    plain = max(plains, key=lambda p: p["steady_img_s"])
    threads = plain["threads"]
    ray = ray_train(cfg)
    report = {
        "arch": arch, "dataset": dataset, "epochs": epochs, "global_batch": batch_size,
        "machine": {"cpus": available_cpus(), "platform": platform.platform(), "torch": torch.__version__},
        "plain": plain, "plain_all": plains, "ray_train": ray,
        "ratio_steady": ray["steady_img_s"] / plain["steady_img_s"],
        "ratio_wall": plain["wall_s"] / ray["wall_s"],
    }
    write_json(out, report)
    click.echo(f"plain {plain['steady_img_s']:.1f} img/s ({threads} threads) | Ray Train {ray['steady_img_s']:.1f} img/s "
               f"({workers} workers) | ratio {report['ratio_steady']:.2f} | wall {plain['wall_s']:.0f} s vs {ray['wall_s']:.0f} s"
               f" → {out}")


if __name__ == "__main__":
    main()
