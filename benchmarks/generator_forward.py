"""Generator forward efficiency against the machine's compute limit (issue 10, item 1).

The knee paper's WGAN-GP generator (preset ``wgan-gp-knee``, 210×210) costs a fixed number of
FLOPs per image, counted by ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add is 2
FLOPs). The limit is the machine's own fp32 matmul rate, measured here with large square
``torch.mm`` (best of several), so::

    limit img/s = matmul GFLOP/s ÷ GFLOP per image       ratio = measured img/s ÷ limit

Variants, each at batch 1, 16 and 64, best of ``--repeats`` timed passes after a warm-up:
``no_grad`` (the plain eval forward), ``inference_mode``, ``channels_last`` (+ inference mode),
``threads=1`` (one intra-op thread), ``compile`` (``torch.compile``, inference mode) and
``compile+channels_last``. ``GeneratorSampler.render`` (serving, batch jobs) runs channels_last
under inference mode: the best variant that needs no compiler and no per-process compile time.
Prints a table and writes JSON.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import click
import torch
from _common import write_json

from infra.cpus import available_cpus
from training.nets.presets import get_preset

BATCHES = (1, 16, 64)


def matmul_gflops(n: int = 2048, repeats: int = 8, clock=time.perf_counter, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> float:
    """Best ``torch.mm`` rate of this process (all its intra-op threads), in GFLOP/s.

    ``clock``: wall time by default; ``time.process_time`` (CPU seconds) for one-thread
    measurements on a shared machine, where another job's load would lower a wall-clock rate.
    ``device``/``dtype``: the CPU in float32 by default; ``benchmarks/gpu.py`` reads a CUDA
    device's float32/TF32 and bfloat16 rates (synchronised around each product, wall clock).
    """
    sync = _sync(device)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)  # warm-up: thread pool, caches (on a GPU: the cuBLAS handle and kernel choice)
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = clock()
        torch.mm(a, b)
        sync()
        best = min(best, clock() - t0)
    return 2 * n**3 / best / 1e9


def _sync(device: str | torch.device):
    """A no-op on the CPU; ``torch.cuda.synchronize`` on a CUDA device (kernels run asynchronously)."""
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)


def flops_per_image(generator, latent_dim: int, device: str | torch.device = "cpu") -> float:
    """FLOPs of one image's forward pass (FlopCounterMode over a batch of 4, divided by 4);
    ``generator``: a module or any callable z (B, latent_dim) on ``device`` → images."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        generator(torch.randn(4, latent_dim, device=device))
    return counter.get_total_flops() / 4


def best_img_s(fn, x: torch.Tensor, repeats: int, sync=lambda: None, warmup: int = 1) -> float:
    """Best img/s of ``fn(x)`` over ``repeats`` passes (after ``warmup`` passes); ``sync`` ends each
    pass (``torch.cuda.synchronize`` on a GPU, where ``fn`` returns before its kernels finish)."""
    for _ in range(warmup):
        fn(x)
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        sync()
        best = min(best, time.perf_counter() - t0)
    return len(x) / best


def variants(generator: torch.nn.Module, allow_compile: bool) -> dict:
    """name → (callable z → images, intra-op threads)."""
    cpus = available_cpus()

    def plain(z):
        with torch.no_grad():
            return generator(z)

    def inference(z):
        with torch.inference_mode():
            return generator(z)

    channels_last = _channels_last_copy(generator)

    def cl(z):
        with torch.inference_mode():
            return channels_last(z)

    out = {"no_grad": (plain, cpus), "inference_mode": (inference, cpus), "channels_last": (cl, cpus),
           "threads=1": (inference, 1)}
    if allow_compile:
        compiled = torch.compile(generator, dynamic=False)

        def comp(z):
            with torch.inference_mode():
                return compiled(z)

        out["compile"] = (comp, cpus)
        compiled_cl = torch.compile(channels_last, dynamic=False)

        def comp_cl(z):
            with torch.inference_mode():
                return compiled_cl(z)

        out["compile+channels_last"] = (comp_cl, cpus)
    return out


def _channels_last_copy(generator: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(generator).to(memory_format=torch.channels_last)


@click.command()
@click.option("--arch", default="wgan-gp-knee", show_default=True, help="generator preset")
@click.option("--repeats", type=click.IntRange(1), default=5, show_default=True)
@click.option("--compile/--no-compile", "allow_compile", default=True, show_default=True,
              help="include torch.compile (its compile time is not counted)")
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/bench/generator_forward.json"),
              show_default=True)
def main(arch: str, repeats: int, allow_compile: bool, out: Path) -> None:
    torch.manual_seed(0)
    preset = get_preset(arch)
    generator, _ = preset.build()
    generator.eval()
    cpus = available_cpus()
    torch.set_num_threads(cpus)
    gflop = flops_per_image(generator, preset.latent_dim) / 1e9
    limit_gflops = matmul_gflops()
    limit = limit_gflops / gflop
    click.echo(f"{arch}: {gflop:.2f} GFLOP/image; fp32 matmul {limit_gflops:.1f} GFLOP/s on {cpus} CPU(s) "
               f"-> limit {limit:.2f} img/s")
    rows = []
    for name, (fn, threads) in variants(generator, allow_compile).items():
        torch.set_num_threads(threads)
        for batch in BATCHES:
            try:
                rate = best_img_s(fn, torch.randn(batch, preset.latent_dim), repeats)
            except Exception as err:  # torch.compile needs a C++ toolchain; report, don't abort the bench
                click.echo(f"  {name:<22} batch {batch:>3}: failed ({type(err).__name__}: {str(err)[:120]})")
                break
            rows.append({"variant": name, "batch": batch, "threads": threads, "img_s": rate,
                         "ratio_to_limit": rate / limit})
            click.echo(f"  {name:<22} batch {batch:>3}: {rate:7.2f} img/s  {rate / limit:6.1%} of the limit")
        torch.set_num_threads(cpus)
    best = max((r for r in rows if r["batch"] == 64), key=lambda r: r["img_s"])
    report = {"bench": "generator_forward", "arch": arch, "gflop_per_image": gflop, "matmul_gflops": limit_gflops,
              "limit_img_s": limit, "rows": rows, "best": best, "cpus": cpus, "torch": torch.__version__,
              "machine": platform.platform(), "date": time.strftime("%Y-%m-%d"), "pid": os.getpid()}
    write_json(out, report)
    click.echo(f"best at batch 64: {best['variant']} {best['img_s']:.2f} img/s = {best['ratio_to_limit']:.1%} "
               f"of the limit (goal 60 %); wrote {out}")


if __name__ == "__main__":
    main()
