"""``make bench-gpu``: the CPU benchmarks' ratios on one CUDA GPU (issue 30), and generation
against the chest paper's P100.

Without a CUDA device it prints one line saying why it skipped, writes
``{"skipped": true, "reason": ...}`` to ``out/bench/gpu.json`` and exits 0, so it runs anywhere.

On a GPU (``torch.cuda.is_available()``), with every timed pass ended by
``torch.cuda.synchronize()`` (kernels run asynchronously) after warm-up passes:

- **Limits**: the device's best ``torch.mm`` rate (``--matmul-n``² squares, best of 10, read
  before and after the rows; the best reading counts) in float32, TF32
  (``torch.set_float32_matmul_precision("high")``) and bfloat16. float32 variants are judged
  against the better of the float32 and TF32 rates, because cuDNN runs float32 convolutions in
  TF32 by default (``torch.backends.cudnn.allow_tf32``); bf16 variants against the bf16 rate.
  ``ratio = img/s ÷ (limit GFLOP/s ÷ GFLOP per image)``, as in ``generator_forward.py``.
- **Generator forward** (``generator_forward.py``'s FLOP count and timer): batch ``--batch``
  (64), best of ``--repeats`` passes, variants ``fp32``, ``channels_last``, ``bf16``
  (``torch.autocast("cuda", torch.bfloat16)``) and ``channels_last+bf16``, in inference mode,
  for ``wgan-gp-knee`` (210²) and ``cpggan-chest@256``: the chest paper's conditional PGGAN
  (Han et al. 2020, seed 003) grown to its 256² stage (α = 1), conditioned on class indices
  (the FLOPs do not depend on which findings are set).
- **Generation vs the paper**: the same chest generator at 256², its fastest variant, up to
  uint8 images in host memory (``training.nets.sampler.to_uint8``), against Han et al.'s
  67,925 img/h = 18.9 img/s at 256² on one P100 (the paper does not say what its rate
  includes; ours stops at images in memory, no encoding or disk).
- **Training step** (``train_limit.py``'s step, FLOP count and presets, at the presets' own
  batch): every ``-small`` preset and ``wgan-gp-knee``, the four variants; the row's ratio is
  ``channels_last+bf16``, what GPU training runs (``GanTrainConfig.amp``, default on). Best of
  at least 3 steps and ``--seconds`` of steps, after 2 warm-up steps.
- **FID's Inception forward** (``inception_forward.py``): the model as
  :func:`training.evaluate.fid.inception` returns it on the GPU (channels_last float32,
  extraction rule 2) on a device-resident batch; for context an NCHW copy, and the whole
  per-batch extraction path from host uint8 (``_to_batch`` + the copy to the device).

Prints one table (measure | value | limit or reference | ratio | goal | pass, ``run_all.py``'s)
and writes ``out/bench/gpu.json`` with the device name, every reading and the table. A variant
that fails (no bf16 kernel, out of memory) is reported as failed; the others still run.
The whole run is a few minutes on a recent GPU (each row a few seconds).
"""

from __future__ import annotations

import contextlib
import copy
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import click
import torch
from _common import write_json
from generator_forward import _channels_last_copy, _sync, best_img_s, flops_per_image, matmul_gflops
from inception_forward import gflop_per_image
from run_all import Row, markdown
from train_flops import step_flops
from train_limit import ARCHS as TRAIN_ARCHS
from train_limit import setup as train_setup

from training.gan.loop import train_step
from training.nets.presets import get_preset
from training.nets.sampler import to_uint8

OUT = Path(__file__).resolve().parents[1] / "out" / "bench" / "gpu.json"
VARIANTS = ("fp32", "channels_last", "bf16", "channels_last+bf16")
AS_TRAINED = "channels_last+bf16"  # GanTrainConfig.amp on a GPU (training.gan.loop.worker_context)
GENERATORS = ("wgan-gp-knee", "cpggan-chest@256")
#: Han et al. 2020 (seed 003, papers.md): "Generation rate 67,925 img/h at 256²" on one P100.
PAPER = {"spec": "cpggan-chest@256", "img_h": 67_925, "img_s": 67_925 / 3600, "gpu": "P100",
         "source": "Han et al. 2020, Science Advances (seed 003)"}


def skip_reason(device: str) -> str | None:
    """Why this run cannot use ``device`` (None: it can)."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        return (f"no CUDA GPU: torch.cuda.is_available() is False (torch {torch.__version__}, "
                f"built with CUDA {torch.version.cuda})")
    return None


def matmul_limits(device: torch.device, n: int) -> dict[str, float]:
    """Best ``torch.mm`` GFLOP/s on ``device``: ``fp32``, ``tf32`` (CUDA only) and ``bf16``."""
    rates = {"fp32": matmul_gflops(n, 10, device=device)}
    if device.type == "cuda":
        before = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("high")  # float32 matmuls in TF32
        try:
            rates["tf32"] = matmul_gflops(n, 10, device=device)
        finally:
            torch.set_float32_matmul_precision(before)
    rates["bf16"] = matmul_gflops(n, 10, device=device, dtype=torch.bfloat16)
    return rates


def limit_gflops(limits: dict[str, float], variant: str) -> tuple[float, str]:
    """(GFLOP/s, precision name) that ``variant`` is judged against."""
    if "bf16" in variant:
        return limits["bf16"], "bf16"
    best = max((p for p in ("fp32", "tf32") if p in limits), key=limits.__getitem__)
    return limits[best], best


def build_generator(spec: str, device: torch.device):
    """(generator in eval mode on ``device``, preset, image side) of ``ARCH`` or ``ARCH@SIZE``; a
    progressive preset with ``@SIZE`` is grown to that stage with α = 1."""
    arch, _, size = spec.partition("@")
    preset = get_preset(arch)
    torch.manual_seed(0)
    gen, _ = preset.build()
    if size:
        if not preset.progressive or int(size) not in gen.resolutions:
            raise click.BadParameter(f"{spec}: @SIZE needs a progressive preset and one of its resolutions")
        gen.grow(gen.resolutions.index(int(size)), 1.0)
    return gen.to(device).eval(), preset, int(size or preset.image_size)


def generator_variants(gen: torch.nn.Module, preset, device: torch.device) -> dict:
    """variant → callable z (B, latent_dim) on ``device`` → images, in inference mode."""
    channels_last = _channels_last_copy(gen)

    def make(model: torch.nn.Module, bf16: bool):
        def forward(z: torch.Tensor) -> torch.Tensor:
            cast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
            with torch.inference_mode(), cast:
                if not preset.conditional:
                    return model(z)
                return model(z, torch.arange(len(z), device=z.device) % preset.num_classes)
        return forward

    return {"fp32": make(gen, False), "channels_last": make(channels_last, False), "bf16": make(gen, True),
            "channels_last+bf16": make(channels_last, True)}


def _failed(err: Exception) -> dict:
    return {"error": f"{type(err).__name__}: {err}"[:300]}


def bench_generator(spec: str, device: torch.device, batch: int, repeats: int) -> dict:
    sync = _sync(device)
    gen, preset, size = build_generator(spec, device)
    fns = generator_variants(gen, preset, device)
    gflop = flops_per_image(fns["fp32"], preset.latent_dim, device) / 1e9
    z = torch.randn(batch, preset.latent_dim, device=device)
    rows = {}
    for name, fn in fns.items():
        try:
            rate = best_img_s(fn, z, repeats, sync, warmup=2)
        except Exception as err:  # report and go on: one missing kernel must not cost the whole GPU run
            rows[name] = _failed(err)
            click.echo(f"  {spec} {name}: failed ({rows[name]['error']})")
            continue
        rows[name] = {"img_s": rate}
        click.echo(f"  {spec} {name:<20} {rate:10.1f} img/s")
    out = {"spec": spec, "size": size, "batch": batch, "gflop_per_image": gflop, "variants": rows}
    if spec == PAPER["spec"] and (ok := _ok(rows)):
        best = max(ok, key=lambda v: ok[v]["img_s"])
        render = fns[best]  # images up to uint8 in host memory, as a user receives them

        def generate(z: torch.Tensor):
            return to_uint8(render(z).float().cpu())

        rate = best_img_s(generate, z, repeats, sync, warmup=1)
        out["generation"] = {"variant": best, "img_s": rate, "paper_img_s": PAPER["img_s"],
                             "ratio_to_paper": rate / PAPER["img_s"]}
        click.echo(f"  {spec} generation ({best}, uint8 on the host): {rate:.1f} img/s = "
                   f"{rate / PAPER['img_s']:.1f} × the paper's {PAPER['img_s']:.1f} img/s ({PAPER['gpu']})")
    return out


def time_train(arch: str, variant: str, device: torch.device, seconds: float, max_steps: int) -> dict:
    """Best and median wall seconds of ``train_step`` (synchronised) after 2 warm-up steps."""
    sync = _sync(device)
    pair, loss, reals, labels, hp, augment, autocast = train_setup(arch, None, variant, device)
    for _ in range(2):  # allocator, cuDNN/cuBLAS kernel choice
        train_step(pair, loss, reals, labels, hp, autocast, augment)
    sync()
    times: list[float] = []
    while len(times) < min(3, max_steps) or (sum(times) < seconds and len(times) < max_steps):
        t0 = time.perf_counter()
        train_step(pair, loss, reals, labels, hp, autocast, augment)
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    n, median = len(reals), times[len(times) // 2]
    return {"steps": len(times), "best_s": times[0], "median_s": median, "img_s": n / times[0],
            "img_s_median": n / median}


def bench_train(arch: str, device: torch.device, seconds: float, max_steps: int) -> dict:
    pair, loss, reals, labels, hp, augment, _ = train_setup(arch, None, "fp32", device)
    gflop = step_flops(pair, loss, reals, labels, hp, augment) / len(reals) / 1e9
    batch, critic_steps = len(reals), hp["critic_steps"]
    del pair, reals
    rows = {}
    for name in VARIANTS:
        try:
            t = time_train(arch, name, device, seconds, max_steps)
        except Exception as err:
            rows[name] = _failed(err)
            click.echo(f"  {arch} {name}: failed ({rows[name]['error']})")
            continue
        rows[name] = t
        click.echo(f"  {arch} {name:<20} {t['img_s']:10.1f} img/s ({t['steps']} steps)")
    return {"arch": arch, "batch": batch, "critic_steps": critic_steps, "gflop_per_image": gflop, "variants": rows}


def bench_inception(device: torch.device, size: int, batch: int, repeats: int) -> dict:
    from training.evaluate.fid import EXTRACTION_RULE, _to_batch, inception

    sync = _sync(device)
    model = inception(dims=2048, device=device)  # channels_last float32: extraction rule 2
    gflop = gflop_per_image(model, size, device)
    host = torch.randint(0, 256, (batch, size, size), dtype=torch.uint8).numpy()
    x = _to_batch(host).to(device)  # as _extract feeds it (.to keeps channels_last)
    nchw = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    fns = {"channels_last": (model, x), "nchw": (nchw, x.contiguous()),
           "channels_last, from host uint8": (lambda arr: model(_to_batch(arr).to(device)), host)}
    rows = {}
    with torch.inference_mode():
        for name, (fn, inp) in fns.items():
            rows[name] = {"img_s": best_img_s(fn, inp, repeats, sync, warmup=2), "precision": "fp32"}
            click.echo(f"  Inception {name:<32} {rows[name]['img_s']:10.1f} img/s")
    return {"size": size, "batch": batch, "extracted": "channels_last", "extraction_rule": EXTRACTION_RULE,
            "gflop_per_image": gflop, "variants": rows}


def judge(variants: dict, gflop: float, limits: dict[str, float]) -> None:
    """Add each timed variant's limit (img/s, precision) and ratio to it, in place."""
    for name, v in variants.items():
        if "error" not in v:
            gflops, precision = limit_gflops(limits, v.get("precision", name))
            v |= {"limit_img_s": gflops / gflop, "limit_precision": precision,
                  "ratio_to_limit": v["img_s"] * gflop / gflops}


def _ok(variants: dict) -> dict:
    return {k: v for k, v in variants.items() if "error" not in v}


def _rate(img_s: float) -> str:
    return f"{img_s:,.0f}" if img_s >= 100 else f"{img_s:.3g}"


def _others(variants: dict, main: str) -> str:
    parts = [f"{k} {'failed' if 'error' in v else _rate(v['img_s']) + ' = ' + format(v['ratio_to_limit'], '.2f')}"
             for k, v in variants.items() if k != main]
    return f" ({', '.join(parts)})" if parts else ""


def _gflops_text(report: dict, precision: str) -> str:
    return f"{report['matmul_gflops'][precision]:,.0f} GFLOP/s {precision}"


def table(report: dict) -> list[Row]:
    """The GPU run's rows from its JSON (``run_all.py``'s :class:`Row`)."""
    where = f"on {report['device_name']}"
    rows: list[Row] = []
    for g in report["generator"]:
        ok = _ok(g["variants"])
        measure = f"GPU generator forward {g['spec']} ({g['size']}², batch {g['batch']}) {where}"
        if not ok:
            rows.append(Row(measure, "every variant failed", "–", None, "≥ 0.60", False))
            continue
        best = max(ok, key=lambda v: ok[v]["img_s"])
        b = ok[best]
        rows.append(Row(f"{measure}, best: {best}", f"{_rate(b['img_s'])} img/s{_others(g['variants'], best)}",
                        f"{_rate(b['limit_img_s'])} img/s = {_gflops_text(report, b['limit_precision'])} ÷ "
                        f"{g['gflop_per_image']:.2f} GFLOP", b["ratio_to_limit"], "≥ 0.60", b["ratio_to_limit"] >= 0.6))
        if gen := g.get("generation"):
            rows.append(Row(f"generation img/s at {g['size']}² vs the paper's {PAPER['img_s']:.1f} img/s "
                            f"({PAPER['gpu']}), {g['spec']} {gen['variant']}, uint8 in host memory",
                            f"{_rate(gen['img_s'])} img/s {where}",
                            f"{PAPER['img_s']:.1f} img/s = {PAPER['img_h']:,} img/h, {PAPER['source']}, one "
                            f"{PAPER['gpu']}", gen["ratio_to_paper"], "≥ 1", gen["ratio_to_paper"] >= 1))
    for t in report["train"]:
        main = t["variants"].get(AS_TRAINED, {})
        measure = (f"GPU training step vs FLOP limit, {t['arch']} (batch {t['batch']}, {AS_TRAINED} as GPU "
                   f"training runs) {where}")
        if "error" in main or not main:
            rows.append(Row(measure, f"{AS_TRAINED} failed{_others(t['variants'], AS_TRAINED)}", "–", None,
                            "≥ 0.60 (below: profile)", False))
            continue
        rows.append(Row(measure, f"{_rate(main['img_s'])} img/s{_others(t['variants'], AS_TRAINED)}",
                        f"{_rate(main['limit_img_s'])} img/s = {_gflops_text(report, main['limit_precision'])} ÷ "
                        f"{t['gflop_per_image']:.3f} GFLOP/image/step", main["ratio_to_limit"],
                        "≥ 0.60 (below: profile)", main["ratio_to_limit"] >= 0.6))
    if inc := report.get("inception"):
        used = inc["variants"][inc["extracted"]]
        rows.append(Row(f"GPU FID Inception forward ({inc['size']}² → 299², batch {inc['batch']}, as extracted: "
                        f"{inc['extracted']} fp32) {where}", f"{_rate(used['img_s'])} img/s"
                        f"{_others(inc['variants'], inc['extracted'])}",
                        f"{_rate(used['limit_img_s'])} img/s = {_gflops_text(report, used['limit_precision'])} ÷ "
                        f"{inc['gflop_per_image']:.2f} GFLOP", used["ratio_to_limit"], "≥ 0.75",
                        used["ratio_to_limit"] >= 0.75))
    return rows


def _meta() -> dict:
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "machine": platform.platform(),
            "date": time.strftime("%Y-%m-%d %H:%M"), "pid": os.getpid()}


@click.command()
@click.option("--gen", "gens", multiple=True, help=f"generator ARCH or ARCH@SIZE (default: {', '.join(GENERATORS)})")
@click.option("--train", "trains", multiple=True, type=click.Choice(TRAIN_ARCHS), help="training preset (default: all)")
@click.option("--batch", type=click.IntRange(1), default=64, show_default=True, help="generator batch")
@click.option("--repeats", type=click.IntRange(1), default=10, show_default=True, help="timed forward passes")
@click.option("--seconds", type=click.FloatRange(0.0), default=2.0, show_default=True,
              help="wall seconds of timed training steps per preset and variant (at least 3 steps)")
@click.option("--max-steps", type=click.IntRange(1), default=50, show_default=True)
@click.option("--inception-size", type=click.IntRange(16, 512), default=64, show_default=True)
@click.option("--inception-batch", type=click.IntRange(1), default=50, show_default=True,
              help="FID's default extraction batch")
@click.option("--matmul-n", type=click.IntRange(64), default=8192, show_default=True)
@click.option("--no-inception", is_flag=True, help="skip the Inception row")
@click.option("--device", default="cuda", show_default=True, hidden=True,
              help="run the GPU path on another device (cpu: a smoke test of the logic)")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=OUT, show_default=True)
def main(gens: tuple[str, ...], trains: tuple[str, ...], batch: int, repeats: int, seconds: float, max_steps: int,
         inception_size: int, inception_batch: int, matmul_n: int, no_inception: bool, device: str,
         out: Path) -> None:
    if reason := skip_reason(device):
        write_json(out, {"bench": "gpu", "skipped": True, "reason": reason, **_meta()})
        click.echo(f"bench-gpu: skipped: {reason}; wrote {out}")
        return
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{platform.processor() or 'CPU'} (CPU smoke run)"
    click.echo(f"bench-gpu on {name} (torch {torch.__version__}, CUDA {torch.version.cuda})")
    t0 = time.perf_counter()
    readings = [matmul_limits(dev, matmul_n)]
    click.echo("matmul: " + ", ".join(f"{k} {v:,.0f} GFLOP/s" for k, v in readings[0].items()))
    generator = [bench_generator(s, dev, batch, repeats) for s in gens or GENERATORS]
    train = [bench_train(a, dev, seconds, max_steps) for a in trains or TRAIN_ARCHS]
    inc = None if no_inception else bench_inception(dev, inception_size, inception_batch, repeats)
    # Limits: the best of the readings before and after the rows, so a clock that rose during the
    # run cannot make the later rows look better than they are.
    readings.append(matmul_limits(dev, matmul_n))
    limits = {k: max(r[k] for r in readings) for k in readings[0]}
    for row in [*generator, *train, *([inc] if inc else [])]:
        judge(row["variants"], row["gflop_per_image"], limits)
    report = {"bench": "gpu", "skipped": False, "device": str(dev), "device_name": name, "matmul_n": matmul_n,
              "matmul_gflops": limits, "matmul_readings": readings, "paper": PAPER,
              "cudnn": {"version": torch.backends.cudnn.version() if dev.type == "cuda" else None,
                        "benchmark": torch.backends.cudnn.benchmark, "allow_tf32": torch.backends.cudnn.allow_tf32},
              "generator": generator, "train": train, "inception": inc, "seconds": time.perf_counter() - t0, **_meta()}
    rows = table(report)
    report["table"] = [asdict(r) for r in rows]
    write_json(out, report)
    click.echo("\n" + markdown(rows))
    click.echo(f"{report['seconds']:.0f} s; wrote {out}")


if __name__ == "__main__":
    main()
