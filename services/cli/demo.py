"""The walking skeleton (``synthray demo``): dataset → Ray Train GAN → FID → registry → Serve.

Every step prints what it is doing and how long it took; the summary repeats the timings so
a slow step is obvious.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import click

from infra.settings import Settings, get_settings
from infra.stack import LocalStack
from training.registry.refs import ModelReference

Echo = Callable[[str], None]


@dataclass
class DemoOptions:
    """Knobs of the demo; the defaults finish in minutes on 2 CPU cores.

    Args:
        images: phantom images to publish.
        image_size: phantom side length (the small GAN preset is 64 px).
        epochs: GAN epochs.
        workers: Ray Train workers.
        fid_n: real and generated images in the FID.
        batch_n: images requested over HTTP.
        seed: seed of the HTTP batch.
        out_dir: where the batch's PNGs are written.
        max_fid: the demo's FID promotion gate. A few CPU epochs at 64 px land in the hundreds,
            so the demo's bar is loose on purpose; real promotions set their own or beat the champion.
    """

    images: int = 1000
    image_size: int = 64
    epochs: int = 5
    workers: int = 2
    fid_n: int = 300
    batch_n: int = 16
    seed: int = 0
    arch: str = "wgan-gp-knee-small"
    out_dir: Path = Path("out/demo")
    max_fid: float = 1000.0


@dataclass
class DemoReport:
    timings: list[tuple[str, float]] = field(default_factory=list)
    lines: list[tuple[str, str]] = field(default_factory=list)


@contextmanager
def _step(report: DemoReport, number: int, title: str, echo: Echo) -> Iterator[None]:
    echo(f"\n== [{number}/7] {title}")
    started = time.perf_counter()
    yield
    elapsed = time.perf_counter() - started
    report.timings.append((title, elapsed))
    echo(f"== [{number}/7] done in {elapsed:.1f} s")


def run_demo(opts: DemoOptions = DemoOptions(), settings: Settings | None = None, echo: Echo = print) -> DemoReport:
    """Run the seven steps of the walking skeleton against the local stack."""
    from services.serving import deploy as serve
    from services.client import ApiClient
    from training.catalog.selection import publish_phantom
    from training.evaluate import publish_weights, reference_statistics
    from training.registry.generators import register_run
    from training.catalog.phantom import PhantomSpec
    from training.registry.promotion import PromotionGates, promote
    from training.gan.trainer import GanTrainConfig, train_gan

    settings = settings or get_settings()
    report = DemoReport()
    started = time.perf_counter()

    with _step(report, 1, "stack up (SeaweedFS S3, MLflow server, Ray head)", echo):
        LocalStack(settings).up(progress=echo)

    with _step(report, 2, f"phantom dataset: {opts.images} images, {opts.image_size}px → catalog", echo):
        manifest = publish_phantom(opts.images, PhantomSpec(size=opts.image_size, seed=opts.seed),
                                   settings=settings, progress=echo)
        dataset = str(manifest.ref)

    with _step(report, 3, f"train {opts.arch} on Ray Train ({opts.workers} workers, {opts.epochs} epochs)", echo):
        # FID once, at the last epoch, on fid_n real and fid_n generated images.
        cfg = GanTrainConfig(dataset=dataset, arch=opts.arch, epochs=opts.epochs, workers=opts.workers,
                             seed=opts.seed, fid_every=opts.epochs, fid_n=opts.fid_n)
        result = train_gan(cfg, settings=settings, progress=echo)

    with _step(report, 4, "FID of the selected generator (computed in training, n_real = n_fake)", echo):
        from infra.object_store import ObjectStore

        fid, epoch = result.metrics["fid"], int(result.metrics["epoch"])
        n_real, n_fake = int(result.metrics["fid_n_real"]), int(result.metrics["fid_n_fake"])
        weights_uri = publish_weights(ObjectStore(settings), settings)
        # The run's own reference: found in the object store, not recomputed.
        ref = reference_statistics(dataset, split="train", n=n_real, settings=settings)
        echo(f"fid: reference statistics {'from the cache' if ref.cached else 'computed and cached'}: {ref.key}")
        echo(f"FID {fid:.2f} at epoch {epoch} (n_real={n_real}, n_fake={n_fake}, weights {weights_uri})")

    with _step(report, 5, "register the generator (challenger), promote it through the gates", echo):
        reg = register_run(result.run_id, checkpoint=result.checkpoint_path, settings=settings, progress=echo)
        name = reg.name
        verdict = promote(name, version=reg.version, gates=PromotionGates(max_fid=opts.max_fid), settings=settings)
        for line in verdict.lines():
            echo(line)
        echo(f"{name} v{reg.version}: {verdict.note}")
        served = f"{name}@champion" if verdict.promoted else f"{name}/{reg.version}"

    with _step(report, 6, f"Ray Serve: POST /v1/synthesize for {opts.batch_n} images", echo):
        base = serve.up(settings, progress=echo)
        folder = opts.out_dir / f"{name}-v{reg.version}-seed{opts.seed}"
        with ApiClient(settings, url=base) as client:  # the way a data team calls it, API key included
            got = client.generate(served, opts.batch_n, opts.seed, folder, echo=echo)
        pngs = sorted(folder.glob("*.png"))
        echo(f"{len(pngs)} PNGs from {base}/v1/synthesize (model version {got.headers.get('x-model-version')}) → {folder}")

    with _step(report, 7, "summary", echo):
        report.lines = [
            ("dataset", dataset),
            ("MLflow run", result.run_url),
            ("model", f"{ModelReference.parse(served).uri} (version {reg.version}, {verdict.note})"),
            ("FID", f"{fid:.2f} with n_real={n_real}, n_fake={n_fake} (epoch {epoch})"),
            ("batch folder", f"{folder} ({len(pngs)} PNGs)"),
            ("Serve", f"{base}/docs"),
        ]
    total = time.perf_counter() - started
    echo("\n" + "=" * 72 + "\nsynthray demo summary\n" + "=" * 72)
    for key, value in report.lines:
        echo(f"{key:<14} {value}")
    echo("wall time per step:")
    for title, seconds in report.timings:
        echo(f"  {seconds:7.1f} s  {title}")
    echo(f"  {total:7.1f} s  total")
    return report


@click.command("demo")
@click.option("--images", type=click.IntRange(64, 100_000), default=1000, show_default=True)
@click.option("--image-size", type=click.IntRange(32, 512), default=64, show_default=True)
@click.option("--epochs", type=click.IntRange(1, 1000), default=5, show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--fid-n", type=click.IntRange(2, 50_000), default=300, show_default=True)
@click.option("--batch-n", type=click.IntRange(1, 256), default=16, show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("out/demo"),
              show_default=True)
@click.option("--max-fid", type=click.FloatRange(min=0, min_open=True), default=1000.0, show_default=True,
              help="the demo's FID promotion gate")
def demo(**kwargs) -> None:
    """Stack up → phantom → Ray Train GAN → FID → registry → Serve batch, with a summary."""
    run_demo(DemoOptions(**kwargs), get_settings(), echo=click.echo)
