"""Where one training step's time goes (issue 30: "where the ratio is below 0.6, profile").

``torch.profiler`` over ``--steps`` calls of the training loop's own ``train_step`` (after
two warm-up steps), one intra-op thread, set up exactly as ``train_limit.py`` times it. Ops
are summed by *self* CPU time (an op's own time, not its children's) into buckets: the
convolutions (forward and backward, oneDNN), the other layers (BatchNorm, activations,
up/down-sampling), the optimizer (Adam), elementwise and reduction arithmetic (losses,
gradient penalty, augmentation), memory (copies, allocation, layout changes) and the rest
(autograd bookkeeping and Python between ops: the steps' wall time minus every op's self time). Shares are of the profiled steps' wall time (the profiler times ops by the wall clock);
run it on a quiet machine, or a busy one inflates every op alike.
JSON in ``out/bench/train_profile.json``; ``make bench BENCH="--only train-profile"``.
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import torch
from _common import write_json
from train_limit import ARCHS, setup

from training.gan.loop import train_step

OUT = Path(__file__).resolve().parents[1] / "out" / "bench" / "train_profile.json"
DEFAULT_ARCHS = ("dcgan-fracture-small", "wgan-gp-knee-small", "cpggan-chest-small")
BUCKETS = (  # first match wins; names are aten op names as the profiler reports them
    ("convolution", ("conv",)),
    ("optimizer (Adam)", ("_foreach", "adam", "lerp", "addcdiv", "addcmul")),
    ("normalisation, activations, resampling", ("batch_norm", "native_batch_norm", "leaky_relu", "relu", "tanh",
                                                  "sigmoid", "upsample", "avg_pool", "max_pool", "pixel_norm",
                                                  "threshold_backward", "elu", "hardtanh")),
    ("memory (copy, alloc, layout)", ("copy_", "empty", "zeros", "ones", "fill_", "clone", "contiguous", "cat",
                                       "as_strided", "resize_", "to_copy", "_to_copy", "view", "reshape", "expand",
                                       "permute", "transpose", "index", "narrow", "slice", "select", "stack",
                                       "flip", "roll", "pad", "split")),
    ("elementwise and reductions", ("mul", "add", "sub", "div", "sum", "mean", "pow", "sqrt", "norm", "neg", "exp",
                                     "log", "clamp", "rsub", "where", "abs", "softplus", "binary_cross", "mse",
                                     "rand", "normal", "bernoulli", "linalg", "matmul", "mm", "addmm", "bmm",
                                     "linear", "embedding", "grid_sampler", "affine_grid")),
)


def _bucket(name: str) -> str:
    low = name.lower()
    for bucket, keys in BUCKETS:
        if any(key in low for key in keys):
            return bucket
    return "other ops"


def profile(arch: str, steps: int) -> dict:
    """Self CPU seconds by bucket and the top ops of ``steps`` fp32 training steps of ``arch``."""
    pair, loss, reals, labels, hp, augment, autocast = setup(arch, None)
    for _ in range(2):
        train_step(pair, loss, reals, labels, hp, autocast, augment)
    w0 = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            train_step(pair, loss, reals, labels, hp, autocast, augment)
    wall_s = time.perf_counter() - w0
    # aten ops only: autograd's per-function events wrap them, and on the engine's thread their
    # "self" time would count the ops again
    ops = [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in prof.key_averages() if e.key.startswith("aten::")]
    buckets: dict[str, float] = {}
    for name, seconds, _ in ops:
        buckets[_bucket(name)] = buckets.get(_bucket(name), 0.0) + seconds
    op_s = sum(buckets.values())
    # the profiler times ops by the wall clock; the rest of the step's wall time is autograd,
    # Python between ops and the profiler itself (and, on a busy machine, waiting for a core)
    buckets["autograd engine, Python, profiler"] = max(0.0, wall_s - op_s)
    total = max(wall_s, op_s)
    top = sorted(ops, key=lambda o: -o[1])[:12]
    return {"arch": arch, "batch": len(reals), "steps": steps, "wall_s": wall_s,
            "shares": {k: v / total for k, v in sorted(buckets.items(), key=lambda kv: -kv[1])},
            "top_ops": [{"op": n, "self_s": s, "share": s / total, "calls": c} for n, s, c in top]}


@click.command()
@click.option("--arch", "archs", multiple=True, type=click.Choice(ARCHS), help=f"default: {', '.join(DEFAULT_ARCHS)}")
@click.option("--steps", type=click.IntRange(1), default=5, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=OUT, show_default=True)
def main(archs: tuple[str, ...], steps: int, out: Path) -> None:
    torch.set_num_threads(1)
    rows = []
    for arch in archs or DEFAULT_ARCHS:
        row = profile(arch, steps)
        rows.append(row)
        click.echo(f"{arch} (batch {row['batch']}, {steps} steps, {row['wall_s']:.2f} s): "
                   + ", ".join(f"{k} {v:.1%}" for k, v in row["shares"].items()))
        click.echo("  top ops: " + ", ".join(f"{o['op']} {o['share']:.1%}" for o in row["top_ops"][:8]))
    write_json(out, {"bench": "train_profile", "threads": 1, "rows": rows, "date": time.strftime("%Y-%m-%d")})


if __name__ == "__main__":
    main()
