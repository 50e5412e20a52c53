"""Training img/s against the FLOP limit of one training step (issue 30), per preset.

For every ``-small`` preset and ``wgan-gp-knee``: the FLOPs of one whole ``train_step`` (every
critic step on real and fake, WGAN-GP's gradient penalty with its double backward, the G step
through D; :func:`train_flops.step_flops`, ``torch.utils.flop_counter``) per real image, and
the img/s the step runs at, against this process's fp32 ``torch.mm`` rate::

    limit img/s = matmul GFLOP/s ÷ GFLOP per real image per step      ratio = img/s ÷ limit

The step is the training loop's own (:func:`training.gan.loop.train_step`, the preset's
hyperparameters, its augmentation); progressive presets run at their last stage with α = 1
(their largest and costliest step). The images are noise in [-1, 1]: the work per step does
not depend on what they show, and no stack is needed.

Clocks and threads. One intra-op thread (``--threads``) and CPU seconds of this process
(``time.process_time``), on both sides of the ratio: the machine is shared, and with one
thread a step's CPU seconds are what it takes on a free core, which its wall time under other
jobs' load is not (wall seconds are kept in the JSON). Each side is the best of its passes;
the limit is the best matmul rate measured between the presets (so a burst of load on the
shared caches does not lower it for one preset only).

Variants, each of every preset: ``fp32`` (what CPU training runs), ``channels_last`` (both
networks and the reals) and ``bf16`` (``torch.autocast("cpu", bfloat16)``); a GPU run uses the
last two (``GanTrainConfig.amp``). Their ratios use the same fp32 limit and FLOP count.

``wgan-gp-knee`` is timed at batch ``--knee-batch`` (8; the preset's 32 with 3 critic steps
at 210² is about 85 s per step on one thread here): FLOPs per image do not depend on the
batch, but small batches run a little less efficiently, so its ratio is a lower bound.
JSON in ``out/bench/train_limit.json``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import time
from pathlib import Path

import click
import torch
from _common import write_json
from generator_forward import matmul_gflops
from train_flops import step_flops

from training.gan.config import GanTrainConfig
from training.gan.loop import build_pair, make_augment, train_step
from training.gan.losses import make_loss
from training.nets.presets import PRESETS

OUT = Path(__file__).resolve().parents[1] / "out" / "bench" / "train_limit.json"
ARCHS = (*sorted(name for name in PRESETS if name.endswith("-small")), "wgan-gp-knee")
VARIANTS = ("fp32", "channels_last", "bf16")


def _bf16(device_type: str = "cpu"):
    return torch.autocast(device_type, dtype=torch.bfloat16)


def setup(arch: str, batch: int | None, variant: str = "fp32", device: str | torch.device = "cpu") -> tuple:
    """(pair, loss, reals, labels, hp, augment, autocast) of one training step of ``arch`` on ``device``.

    ``variant``: ``fp32``, ``channels_last``, ``bf16`` or (``benchmarks/gpu.py``, what a GPU run
    trains with ``GanTrainConfig.amp``) ``channels_last+bf16``; bf16 autocasts on ``device``'s type.
    """
    device = torch.device(device)
    cfg = GanTrainConfig(dataset="bench-train-limit", arch=arch, workers=1, seed=0)
    hp, preset = cfg.hyperparameters(), cfg.preset()
    if batch is not None:
        hp["batch_size"] = batch
    n, k = hp["batch_size"], preset.num_classes
    torch.manual_seed(0)
    pair = build_pair(preset, hp, k, prepare=lambda m: m.to(device))
    if preset.progressive:  # the last stage, faded in: the largest step of the run
        last = len(pair.gen.resolutions) - 1
        for module in (pair.gen, pair.critic):
            module.grow(last, 1.0)
    reals = (torch.rand(n, 1, preset.image_size, preset.image_size) * 2 - 1).to(device)
    if "channels_last" in variant:
        pair.gen.to(memory_format=torch.channels_last)
        pair.critic.to(memory_format=torch.channels_last)
        reals = reals.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, k, (n,)).to(device)
    augment, _ = make_augment(hp)
    loss = make_loss(hp["loss"], hp["gp_lambda"], hp.get("drift", 0.0))
    autocast = functools.partial(_bf16, device.type) if "bf16" in variant else contextlib.nullcontext
    return pair, loss, reals, labels, hp, augment, autocast


def time_steps(arch: str, batch: int | None, variant: str, seconds: float, max_steps: int) -> dict:
    """Best and median CPU seconds of ``train_step`` after one warm-up step, for ``seconds`` CPU s."""
    pair, loss, reals, labels, hp, augment, autocast = setup(arch, batch, variant)
    train_step(pair, loss, reals, labels, hp, autocast, augment)  # warm-up: allocator, oneDNN primitives
    cpu, wall = [], []
    while len(cpu) < 2 or (sum(cpu) < seconds and len(cpu) < max_steps):
        c0, w0 = time.process_time(), time.perf_counter()
        train_step(pair, loss, reals, labels, hp, autocast, augment)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    cpu.sort()
    n = len(reals)
    return {"steps": len(cpu), "best_cpu_s": cpu[0], "median_cpu_s": cpu[len(cpu) // 2], "wall_s": sum(wall),
            "img_s": n / cpu[0], "img_s_median": n / cpu[len(cpu) // 2]}


@click.command()
@click.option("--arch", "archs", multiple=True, type=click.Choice(ARCHS), help="default: all")
@click.option("--variant", "variants", multiple=True, type=click.Choice(VARIANTS), help="default: all")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True)
@click.option("--seconds", type=click.FloatRange(0.0), default=4.0, show_default=True,
              help="CPU seconds of timed steps per preset and variant (at least 2 steps)")
@click.option("--max-steps", type=click.IntRange(2), default=20, show_default=True)
@click.option("--knee-batch", type=click.IntRange(1), default=8, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=OUT, show_default=True)
def main(archs: tuple[str, ...], variants: tuple[str, ...], threads: int, seconds: float, max_steps: int,
         knee_batch: int, out: Path) -> None:
    torch.set_num_threads(threads)
    rows, rates = [], [matmul_gflops(clock=time.process_time)]
    for arch in archs or ARCHS:
        batch = knee_batch if arch == "wgan-gp-knee" else None
        pair, loss, reals, labels, hp, augment, _ = setup(arch, batch)
        flops = step_flops(pair, loss, reals, labels, hp, augment)
        gflop = flops / len(reals) / 1e9
        timed = {v: time_steps(arch, batch, v, seconds, max_steps) for v in variants or VARIANTS}
        rates.append(matmul_gflops(clock=time.process_time))
        rows.append({"arch": arch, "batch": len(reals), "preset_batch": PRESETS[arch].batch_size,
                     "critic_steps": hp["critic_steps"], "loss": hp["loss"], "augment": hp["augment"],
                     "gflop_per_image": gflop, "variants": timed})
        click.echo(f"{arch} (batch {len(reals)}, {hp['critic_steps']} critic step(s), {hp['loss']}): "
                   f"{gflop:.3f} GFLOP per real image per step; "
                   + ", ".join(f"{v} {t['img_s']:.1f} img/s" for v, t in timed.items()))
    limit_gflops = max(rates)
    for row in rows:
        row["limit_img_s"] = limit_gflops / row["gflop_per_image"]
        for t in row["variants"].values():
            t["ratio_to_limit"] = t["img_s"] / row["limit_img_s"]
    click.echo(f"limit: {limit_gflops:.1f} GFLOP/s (best 2048² fp32 torch.mm on {threads} thread(s), CPU s; "
               f"readings {', '.join(f'{r:.0f}' for r in rates)})")
    for row in rows:
        click.echo(f"  {row['arch']:<28} limit {row['limit_img_s']:8.1f} img/s  "
                   + "  ".join(f"{v} {t['ratio_to_limit']:.2f}" for v, t in row["variants"].items()))
    write_json(out, {"bench": "train_limit", "threads": threads, "matmul_gflops": limit_gflops,
                     "matmul_readings": rates, "rows": rows, "load_avg": os.getloadavg(), "torch": torch.__version__,
                     "machine": platform.platform(), "date": time.strftime("%Y-%m-%d %H:%M")})
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
