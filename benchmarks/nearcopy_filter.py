"""Cost of the near-copy filter: filtered vs unfiltered synthesis of n = 64 images (issue 29).

For each generator preset, in-process and best of ``--repeats`` after a warm-up:

* ``unfiltered`` — ``sampler.generate(64, seed)`` (what ``/v1/synthesize`` renders);
* ``filtered`` — ``filtered_generate(…)`` with the preset's index (:mod:`training.evaluate.nearcopy`):
  the same render, pytorch-fid Inception features of the 64 images at the audit's 2048 dims
  (299² input), and a scikit-learn nearest-neighbour query against ``--train`` training images.

ratio = filtered ÷ unfiltered (goal ≤ 1.3). The generators are untrained, so nothing is rejected:
this is the price of the check itself, the common case. The index is built from phantom
radiographs in-process (no stack needed); its size barely matters (the query is one matrix
product). Components (render, Inception, query) are reported to show where the time goes.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import click
import numpy as np
import torch
from _common import write_json

from infra.cpus import available_cpus

PRESETS = ("wgan-gp-knee-small", "wgan-gp-knee")
N = 64


def _best(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@click.command()
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True)
@click.option("--train", "n_train", type=click.IntRange(2), default=128, show_default=True,
              help="training images in the index")
@click.option("--preset", "presets", multiple=True, default=PRESETS, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("out/bench/nearcopy_filter.json"),
              show_default=True)
def main(repeats: int, n_train: int, presets: tuple[str, ...], out: Path) -> None:
    from infra.settings import get_settings
    from training.catalog.phantom import PhantomSpec, make_phantom
    from training.evaluate.fid import features, fid_weights, inception
    from training.evaluate.nearcopy import NearCopyIndex, embedder, filtered_generate
    from training.nets.presets import get_preset
    from training.nets.sampler import GeneratorSampler

    settings = get_settings()
    rows = {}
    for name in presets:
        preset = get_preset(name)
        torch.manual_seed(0)
        gen, _ = preset.build()
        sampler = GeneratorSampler(gen, preset.latent_dim)
        size = preset.image_size
        train = np.stack([p.pixels for p in make_phantom(n_train, PhantomSpec(size=size, seed=3))])
        click.echo(f"{name}: index of {n_train} phantom images at {size}², 2048-d Inception features")
        index = NearCopyIndex.from_features(features(train, inception(settings, 2048)), 2048,
                                            fid_weights(settings).sha256, "bench")
        embed = embedder(index, settings)
        images = sampler.generate(N, 0)
        feats = embed(images)
        report = filtered_generate(sampler, N, 0, index, embed)[1]
        row = {
            "image_size": size, "n": N, "n_train": n_train, "rejected": report.rejected,
            "unfiltered_s": _best(lambda: sampler.generate(N, 0), repeats),
            "filtered_s": _best(lambda: filtered_generate(sampler, N, 0, index, embed), repeats),
            "inception_s": _best(lambda: embed(images), repeats),
            "query_s": _best(lambda: index.distances(feats), repeats),
        }
        row["ratio"] = row["filtered_s"] / row["unfiltered_s"]
        rows[name] = row
        click.echo(f"  unfiltered {row['unfiltered_s']:.3f} s, filtered {row['filtered_s']:.3f} s "
                   f"(Inception {row['inception_s']:.3f} s, query {row['query_s'] * 1e3:.1f} ms): "
                   f"ratio {row['ratio']:.2f}, {row['rejected']} rejected")
    report = {"presets": rows, "threads": torch.get_num_threads(), "cpus": available_cpus(),
              "machine": platform.processor() or platform.machine(), "goal_ratio": 1.3}
    write_json(out, report)
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
