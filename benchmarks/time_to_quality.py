"""Time to quality: training seconds until the EMA generator's FID ≤ 5× its real-vs-real floor.

On the demo's phantom (1,000 images, 64 px, the train split), one plain process (one intra-op
thread, the training loop's own ``train_step``, EMA and augmentation) trains each recipe for at
most ``--budget`` CPU seconds of training steps (``time.process_time`` of the one-thread
process: on a shared machine the wall clock measures the other jobs too; both are recorded). Every ``--check-every`` steps the EMA generator's
FID against the first n = 300 real images is measured (not counted in the training time) and
compared with the real-vs-real floor at the same n (:mod:`training.evaluate.floor`). A recipe
that never gets there is reported as such, with the budget it used and its best FID.

It also reports training img/s against the FLOP limit of one training step: the FLOPs of one
step (:func:`train_flops.step_flops`: D step on real + fake, G step through D, a multiply-add
= 2 FLOPs) per image, against the machine's one-thread fp32 matmul rate. ``train_limit.py``
does the same for every ``-small`` preset and ``wgan-gp-knee`` without training to a FID.

Recipes: ``dcgan-knee-cpu`` (the demo's, DiffAugment + EMA) and ``wgan-gp-knee-small`` (the
previous demo's: WGAN-GP, 3 critic steps, no augmentation; EMA as every preset now has).
Needs the local stack (catalog, reference cache). JSON in ``out/bench/time_to_quality.json``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import click
import torch
from _common import write_json
from generator_forward import matmul_gflops
from train_flops import step_flops

from training.catalog.phantom import PhantomSpec
from training.catalog.selection import load_tensors, publish_phantom
from training.evaluate import reference_statistics
from training.evaluate.floor import derive_reference, real_floor
from training.evaluate.generator import fakes_like
from training.evaluate.reference import fid_to_reference
from training.gan.config import GanTrainConfig
from training.gan.ema import Ema
from training.gan.loop import latent_inputs, build_pair, make_augment, train_step
from training.gan.losses import make_loss
from training.nets.sampler import GeneratorSampler

OUT = Path(__file__).resolve().parents[1] / "out" / "bench" / "time_to_quality.json"
RECIPES = ("dcgan-knee-cpu", "wgan-gp-knee-small")
N = 300
FACTOR = 5.0


def run_recipe(arch: str, dataset: str, ref, floor, budget: float, check_every: int, seed: int) -> dict:
    cfg = GanTrainConfig(dataset=dataset, arch=arch, workers=1, seed=seed)
    hp, preset = cfg.hyperparameters(), cfg.preset()
    data = load_tensors(dataset, split="train")
    augment, ada = make_augment(hp)
    loss = make_loss(hp["loss"], hp["gp_lambda"])
    batch = hp["batch_size"]
    flops = step_flops(build_pair(preset, hp, 1), loss, data.images[:batch], data.labels[:batch], hp, augment)
    torch.manual_seed(seed)
    pair = build_pair(preset, hp, 1)
    ema = Ema(pair.gen, hp["ema_kimg"], hp["ema_rampup"])
    trained, wall, steps, checks, reached = 0.0, 0.0, 0, [], None
    while trained < budget:
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(check_every):
            idx = torch.randint(0, len(data.images), (batch,))
            train_step(pair, loss, data.images[idx], data.labels[idx], hp, augment=augment, ada=ada)
            steps += 1
            ema.update(pair.gen, batch, steps * batch)
            if ada is not None and ada.due():
                augment.p = ada.adjust()
        # CPU seconds of this one-thread process: what the steps take on a quiet machine, which a
        # shared machine's wall clock is not (other jobs' load inflates it; it is kept beside).
        trained += time.process_time() - c0
        wall += time.perf_counter() - t0
        ema.recalibrate(latent_inputs(hp, preset.conditional, 1, "cpu"), hp["ema_bn_batches"], seed)  # as training does
        fake, _ = fakes_like(GeneratorSampler(ema.module, preset.latent_dim), ref, seed=seed + 1)
        fid = fid_to_reference(fake, ref).fid
        checks.append({"steps": steps, "train_s": round(trained, 1), "wall_s": round(wall, 1), "fid": fid,
                       "load1": os.getloadavg()[0]})
        click.echo(f"{arch}: {steps} steps, {trained:.0f} CPU s of training ({wall:.0f} s wall, load "
                   f"{os.getloadavg()[0]:.1f}): FID {fid:.1f} ({fid / floor.fid:.1f}x floor)")
        if fid <= FACTOR * floor.fid:
            reached = checks[-1]
            break
    img_s = steps * batch / trained
    limit_img_s = matmul_gflops() * 1e9 / (flops / batch)
    return {"arch": arch, "batch": batch, "budget_s": budget, "steps": steps, "train_s": trained, "wall_s": wall,
            "reached": reached, "best_fid": min(c["fid"] for c in checks), "checks": checks,
            "gflop_per_image": flops / batch / 1e9, "img_s": img_s, "limit_img_s": limit_img_s,
            "ratio_to_limit": img_s / limit_img_s}


@click.command()
@click.option("--budget", type=float, default=420.0, show_default=True, help="training seconds per recipe")
@click.option("--check-every", type=int, default=250, show_default=True, help="steps between FID checks")
@click.option("--recipe", "recipes", multiple=True, type=click.Choice(RECIPES), help="default: both")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=OUT, show_default=True)
def main(budget: float, check_every: int, recipes: tuple[str, ...], seed: int, out: Path) -> None:
    torch.set_num_threads(1)
    dataset = str(publish_phantom(1000, PhantomSpec(size=64, seed=0), progress=lambda _: None).ref)  # the demo's
    wide = reference_statistics(dataset, split="train", n=2 * N)
    ref = derive_reference(wide, N)
    floor = real_floor(ref, superset=wide)
    click.echo(f"{dataset}: {floor.describe()}; goal FID <= {FACTOR:g} x floor = {FACTOR * floor.fid:.1f}")
    results = [run_recipe(arch, dataset, ref, floor, budget, check_every, seed) for arch in recipes or RECIPES]
    write_json(out, {"bench": "time_to_quality", "dataset": dataset, "n": N, "floor": floor.fid, "factor": FACTOR,
                     "goal_fid": FACTOR * floor.fid, "recipes": results})


if __name__ == "__main__":
    main()
