"""Batch jobs: images per second written to the object store, against generation alone (issue 10, item 3).

Both sides make the same images: the shards of one batch, ``sampler.generate(count, shard_seed)``
for every shard of the plan (:func:`services.batches.ids.plan_shards`).

* ``generation alone``: those calls in this process, one after another, torch on every usable
  CPU; nothing is encoded or stored. Half the shards (every other one) run just before the
  batch and half just after it, and their times add up: this machine's speed drifts by up to
  a third within minutes (in-process ``generate(1000)`` medians of 0.70-0.98 s on an idle stack,
  2026-12-01), and a reference taken only before a two-minute batch read that drift as batch cost.
* ``batch job``: ``POST /v1/batches`` on the running Serve app, then ``GET`` until it succeeds.
  Shard tasks generate, pack npz (with per-image hashes), and PUT to S3; the coordinator
  writes status and, last, the manifest. Wall time from the POST to ``succeeded``.

ratio = batch img/s ÷ generation-alone img/s (goal ≥ 0.8: storage and orchestration cost ≤ 20 %).
The default n is the issue's "data team's batch of 100k images": a batch pays a fixed start of a few
seconds (its coordinator actor, then a worker process that imports torch and loads the generator,
which generation alone has already done before its clock starts), so tiny batches read lower.
Each run uses a fresh seed, so the batch is new (a re-POST of an old one would return at once).
Needs the local stack; writes ``out/bench/batch_throughput.json``.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import click
from _common import bench_generator, serve_client, write_json

from infra.settings import get_settings
from services.batches.ids import plan_shards


def generation_alone(sampler, shards) -> float:
    """Seconds to generate every shard of the plan in this process."""
    t0 = time.perf_counter()
    for shard in shards:
        sampler.generate(shard.count, shard.seed)
    return time.perf_counter() - t0


def run_batch(http, model: str, n: int, seed: int, timeout_s: float) -> tuple[float, dict]:
    """Seconds from POST to ``succeeded``, and the final status."""
    t0 = time.perf_counter()
    r = http.post("/v1/batches", json={"model": model, "n": n, "seed": seed})
    r.raise_for_status()
    bid = r.json()["batch_id"]
    while time.perf_counter() - t0 < timeout_s:
        status = http.get(f"/v1/batches/{bid}").json()
        if status["state"] in ("succeeded", "failed", "cancelled"):
            break
        p = status["progress"]
        click.echo(f"  batch {bid}: {p['images_done']}/{p['images_total']} images, {p['images_per_s']} img/s")
        time.sleep(0.5)
    seconds = time.perf_counter() - t0
    if status["state"] != "succeeded":
        raise click.ClickException(f"batch {bid} ended {status['state']}: {status.get('error')}")
    return seconds, status


@click.command()
@click.option("--arch", default="wgan-gp-knee-small", show_default=True, help="generator preset")
@click.option("--n", "n", type=click.IntRange(1, 100_000), default=100_000, show_default=True, help="images")
@click.option("--timeout", "timeout_s", type=click.FloatRange(10, 3600), default=1800, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/bench/batch_throughput.json"),
              show_default=True)
def main(arch: str, n: int, timeout_s: float, out: Path) -> None:
    from infra.cpus import set_torch_threads

    threads = set_torch_threads()
    model, sampler = bench_generator(arch, "bench-batch")
    http, _, _ = serve_client()
    seed = int(time.time())
    settings = get_settings()
    shards = plan_shards("b-bench", n, seed, None, settings.batch_shard_size)
    before, after = shards[0::2], shards[1::2]
    before_s = generation_alone(sampler, before)
    batch_s, status = run_batch(http, model, n, seed, timeout_s)
    after_s = generation_alone(sampler, after)
    alone = before_s + after_s
    rates = [sum(x.count for x in half) / sec for half, sec in ((before, before_s), (after, after_s)) if half]
    halves = ", ".join(f"{rate:.1f} img/s {when}" for rate, when in zip(rates, ("before", "after")))
    click.echo(f"generation alone: {n} images in {alone:.1f} s = {n / alone:.1f} img/s ({threads} threads; "
               f"{halves} the batch)")
    count = http.get(status["urls"]["manifest"]).json()["count"] if "urls" in status else None
    report = {
        "bench": "batch_throughput", "arch": arch, "n": n, "shard_size": status["shard_size"],
        "shards": len(shards), "generation_alone_s": alone, "generation_alone_img_s": n / alone, "threads": threads,
        "generation_alone_img_s_before_after": rates,
        "batch_s": batch_s, "batch_img_s": n / batch_s, "coordinator_img_s": status["progress"]["images_per_s"],
        "ratio": alone / batch_s, "manifest_count": count, "batch_id": status["batch_id"],
        "cpus": os.cpu_count(), "machine": platform.platform(), "date": time.strftime("%Y-%m-%d"),
    }
    write_json(out, report)
    click.echo(f"batch job: {n / batch_s:.1f} img/s wall (coordinator {report['coordinator_img_s']} img/s), "
               f"ratio to generation alone {report['ratio']:.2f} (goal 0.8); manifest count {count}; wrote {out}")


if __name__ == "__main__":
    main()
