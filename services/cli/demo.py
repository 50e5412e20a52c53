"""The walking skeleton (``synthray demo``): dataset → Ray Train GAN → FID → registry → Serve.

Every step announces itself with one line; the summary lists how long each step took, so
a slow step is obvious.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import click

from infra.progress import say
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
        steps_per_epoch: generator steps per epoch (the recipe needs ~3k steps in all; one pass
            over 800 images is only 12 steps of 64).
        workers: Ray Train workers.
        fid_n: real and generated images in the final FID (selection and promotion).
        fid_quick_n: images of the quick FID on every epoch (the curve's descent).
        batch_n: images requested over HTTP.
        seed: seed of the HTTP batch.
        out_dir: where the batch's PNGs are written.
        max_floor_ratio: the demo's promotion gate, as a multiple of the real-vs-real FID floor
            at n = fid_n: the champion must reach FID <= max_floor_ratio × floor.
        contact: synthetic images on the contact sheet written next to the batch folder.
    """

    images: int = 1000
    image_size: int = 64
    epochs: int = 5
    steps_per_epoch: int = 400
    workers: int = 2
    fid_n: int = 300
    fid_quick_n: int = 64
    batch_n: int = 16
    seed: int = 0
    arch: str = "dcgan-knee-cpu"
    out_dir: Path = Path("out/demo")
    max_floor_ratio: float = 5.0
    contact: int = 64


@dataclass
class DemoReport:
    timings: list[tuple[str, float]] = field(default_factory=list)
    lines: list[tuple[str, str]] = field(default_factory=list)


@contextmanager
def _step(report: DemoReport, number: int, title: str, echo: Echo) -> Iterator[None]:
    echo(f"== [{number}/7] {title}")  # its time is in the summary (one line per step keeps a screenful)
    started = time.perf_counter()
    yield
    report.timings.append((title, time.perf_counter() - started))


def write_contact_sheet(sampler, path: Path, n: int, seed: int, real=None) -> Path:
    """A PNG of ``n`` samples of ``sampler`` (seed ``seed``) in a square grid, beside the same
    number of real training images when ``real`` (uint8 (N, H, W)) is given; labelled panels."""
    import numpy as np
    from PIL import Image, ImageDraw

    def grid(images: np.ndarray) -> np.ndarray:
        cols = int(np.ceil(np.sqrt(len(images))))
        rows = int(np.ceil(len(images) / cols))
        h, w = images.shape[1:3]
        out = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2), 255, np.uint8)
        for i, img in enumerate(images):
            r, c = divmod(i, cols)
            out[2 + r * (h + 2): 2 + r * (h + 2) + h, 2 + c * (w + 2): 2 + c * (w + 2) + w] = img
        return out

    panels = [("synthetic (champion, EMA generator)", grid(sampler.generate(n, seed=seed)))]
    if real is not None:
        panels.insert(0, ("real (training reference)", grid(np.asarray(real)[:n])))
    gap, top = 16, 18
    width = sum(p.shape[1] for _, p in panels) + gap * (len(panels) - 1)
    sheet = Image.new("L", (width, top + max(p.shape[0] for _, p in panels)), 255)
    draw, x = ImageDraw.Draw(sheet), 0
    for title, panel in panels:
        sheet.paste(Image.fromarray(panel), (x, top))
        draw.text((x + 2, 3), title, fill=0)
        x += panel.shape[1] + gap
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def write_fid_curve(run_id: str, path: Path, settings: Settings) -> Path:
    """The run's FID curve with its floors (the MLflow artifact's figure), as a local PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mlflow import MlflowClient

    from training.evaluate.floor import RealFloor
    from training.gan.trainer import fid_curve_figure

    client = MlflowClient(settings.mlflow_tracking_uri)
    run = client.get_run(run_id).data
    series = {k: sorted({m.step: m.value for m in client.get_metric_history(run_id, k)}.items())
              for k in ("fid", "fid_quick")}
    floors = {k: RealFloor(fid=run.metrics[f"{k}_floor"], n=int(run.params[f"{k}_floor_n"]), method="", n_available=0,
                           key="", reference_key="") for k in series if f"{k}_floor" in run.metrics}
    fig = fid_curve_figure(series["fid"], series["fid_quick"], floors)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def run_demo(opts: DemoOptions = DemoOptions(), settings: Settings | None = None, echo: Echo = print,
             summary: Echo | None = None) -> DemoReport:
    """Run the seven steps of the walking skeleton against the local stack (``summary``: where the
    closing summary goes, default ``echo``)."""
    from services.serving import deploy as serve
    from services.client import ApiClient
    from training.catalog.selection import publish_phantom
    from training.evaluate import publish_weights, reference_statistics
    from training.registry.generators import register_run
    from training.catalog.phantom import PhantomSpec
    from training.registry.promotion import PromotionGates, promote
    from training.gan.trainer import GanTrainConfig, train_gan
    from training.evaluate.floor import derive_reference, real_floor, with_floor
    from training.evaluate.reference import reference_images
    from training.registry.generators import load_generator

    settings = settings or get_settings()
    report = DemoReport()
    started = time.perf_counter()

    with _step(report, 1, "stack up (SeaweedFS S3, MLflow server, Ray head)", echo):
        LocalStack(settings).up(progress=echo)

    with _step(report, 2, f"phantom dataset: {opts.images} images, {opts.image_size}px → catalog; FID reference", echo):
        manifest = publish_phantom(opts.images, PhantomSpec(size=opts.image_size, seed=opts.seed),
                                   settings=settings, progress=echo)
        dataset = str(manifest.ref)
        # The FID reference and its real-vs-real floor (one Inception pass over 2n real images,
        # cached in S3 by content), so the training step below finds them ready.
        n_train = len(manifest.select(split="train"))
        wide = reference_statistics(dataset, split="train", n=min(2 * opts.fid_n, n_train), settings=settings)
        floor_n = real_floor(derive_reference(wide, min(opts.fid_n, n_train), settings), settings, superset=wide)
        echo(f"fid: {floor_n.describe()} ({floor_n.method}, {'cached' if wide.cached else 'computed'})")

    with _step(report, 3, f"train {opts.arch} on Ray Train ({opts.workers} workers, {opts.epochs} epochs)", echo):
        # A quick FID (fid_quick_n) every epoch for the curve; the selection FID at the last
        # epoch on fid_n real and fid_n generated images, from the EMA generator.
        cfg = GanTrainConfig(dataset=dataset, arch=opts.arch, epochs=opts.epochs, workers=opts.workers,
                             seed=opts.seed, fid_every=opts.epochs, fid_n=opts.fid_n, fid_quick_n=opts.fid_quick_n,
                             steps_per_epoch=opts.steps_per_epoch)
        train_started = time.perf_counter()
        result = train_gan(cfg, settings=settings, progress=echo)
        train_seconds = time.perf_counter() - train_started

    with _step(report, 4, "FID of the selected generator (computed in training, n_real = n_fake)", echo):
        from infra.object_store import ObjectStore

        fid, epoch = result.metrics["fid"], int(result.metrics["epoch"])
        n_real, n_fake = int(result.metrics["fid_n_real"]), int(result.metrics["fid_n_fake"])
        weights_uri = publish_weights(ObjectStore(settings), settings)
        # The run's own reference: found in the object store, not recomputed.
        ref = reference_statistics(dataset, split="train", n=n_real, settings=settings)
        echo(f"fid: reference statistics {'from the cache' if ref.cached else 'computed and cached'}: {ref.key}")
        floor = result.floor
        echo(f"{with_floor(fid, floor)} at epoch {epoch} (n_real={n_real}, n_fake={n_fake}, weights {weights_uri})")

    with _step(report, 5, "register the generator (challenger), promote it through the gates", echo):
        reg = register_run(result.run_id, checkpoint=result.checkpoint_path, settings=settings, progress=echo)
        name = reg.name
        max_fid = opts.max_floor_ratio * floor.fid
        echo(f"promotion bar: FID <= {opts.max_floor_ratio:g} x floor = {max_fid:.2f}")
        verdict = promote(name, version=reg.version, gates=PromotionGates(max_fid=max_fid), settings=settings)
        for line in verdict.lines():
            echo(line)
        echo(f"{name} v{reg.version}: {verdict.note}")
        served = f"{name}@champion" if verdict.promoted else f"{name}/{reg.version}"

    with _step(report, 6, f"Ray Serve: POST /v1/synthesize for {opts.batch_n} images", echo):
        base = serve.up(settings, progress=echo)
        folder = opts.out_dir / f"{name}-v{reg.version}-seed{opts.seed}"
        with ApiClient(settings, url=base) as client:  # the way a data team calls it, API key included
            got = client.generate(served, opts.batch_n, opts.seed, folder, echo=lambda _: None)  # said below
        pngs = sorted(folder.glob("*.png"))
        echo(f"{len(pngs)} PNGs from {base}/v1/synthesize (model version {got.headers.get('x-model-version')}) → {folder}")
        sheet = folder.with_name(folder.name + "-contact.png")
        write_contact_sheet(load_generator(ModelReference.parse(served).uri, settings=settings), sheet, opts.contact, opts.seed,
                            real=reference_images(ref, range(min(opts.contact, ref.n)), settings))
        curve = folder.with_name(folder.name + "-fid-curve.png")
        write_fid_curve(result.run_id, curve, settings)
        echo(f"contact sheet {sheet}; FID curve {curve}")

    with _step(report, 7, "summary", echo):
        report.lines = [
            ("dataset", dataset),
            ("MLflow run", result.run_url),
            ("model", f"{ModelReference.parse(served).uri} (version {reg.version}, {verdict.note})"),
            ("FID", f"{with_floor(fid, floor)} (n_real={n_real}, n_fake={n_fake}, epoch {epoch}, EMA generator)"),
            ("KID", f"{float(reg.tags['kid']):.4f}, 95 % CI [{float(reg.tags['kid.ci_low']):.4f}, "
                    f"{float(reg.tags['kid.ci_high']):.4f}] at n = {reg.tags['kid.n_real']} (unbiased at small n; 0 = same "
                    f"distribution)"),
            ("training", f"{train_seconds:.0f} s for {opts.epochs} x {opts.steps_per_epoch} steps ({opts.arch})"),
            ("batch folder", f"{folder} ({len(pngs)} PNGs)"),
            ("contact sheet", str(sheet)),
            ("FID curve", str(curve)),
            ("Serve", f"{base}/docs"),
        ]
    total = time.perf_counter() - started
    out = summary or echo  # the result: printed even with --quiet
    out("=" * 25 + " synthray demo summary " + "=" * 24)
    for key, value in report.lines:
        out(f"{key:<14} {value}")
    out("wall time per step:")
    for title, seconds in report.timings:
        out(f"  {seconds:7.1f} s  {title}")
    out(f"  {total:7.1f} s  total")
    return report


@click.command("demo")
@click.option("--images", type=click.IntRange(64, 100_000), default=1000, show_default=True)
@click.option("--image-size", type=click.IntRange(32, 512), default=64, show_default=True)
@click.option("--epochs", type=click.IntRange(1, 1000), default=5, show_default=True)
@click.option("--steps-per-epoch", type=click.IntRange(1), default=400, show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--fid-n", type=click.IntRange(2, 50_000), default=300, show_default=True)
@click.option("--batch-n", type=click.IntRange(1, 256), default=16, show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("out/demo"),
              show_default=True)
@click.option("--max-floor-ratio", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="the demo's promotion gate: FID <= this x the real-vs-real floor at n = --fid-n")
def demo(**kwargs) -> None:
    """Stack up → phantom → Ray Train GAN → FID → registry → Serve batch, with a summary."""
    run_demo(DemoOptions(**kwargs), get_settings(), echo=say, summary=click.echo)
