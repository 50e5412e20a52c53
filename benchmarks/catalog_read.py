"""How fast does ``Catalog.read_pixels`` load a dataset version, relative to a raw download?

Publishes (once; re-runs are idempotent) a dataset ``bench-catalog-read`` of N synthetic
size×size 8-bit "radiographs" (smooth random field + noise, so PNGs compress like real
X-rays), then times, ``--repeats`` times each with the cases interleaved so they share the
machine's noise, and reports medians:

* ``raw_download``: GET every blob into memory on a thread pool of ``--workers`` threads,
  no hashing, no decode. This is the primary baseline: it issues exactly the requests
  ``read_pixels`` issues, through the same boto3 client and connection pool, on a pool of
  the same width, and lands the bytes in memory as ``read_pixels`` does.
* ``raw_download_to_disk``: what ``aws s3 sync`` does (one s3transfer manager, ``--workers``
  concurrent requests, sizes known up front as sync knows them from its listing, files
  written to a temp dir). Reported for context; it pays for file writes the catalog never does.
* ``decode_1thread`` / ``decode_pool``: PNG decode + stack of the already-downloaded bytes.
* ``catalog_read``: ``Catalog.read_pixels(manifest.records)``: fetch + sha256 + decode + stack.

Absolute times depend on the (noisy) machine; the ratios from one run are the result.
The bound for ``catalog_read`` is network + decode, i.e. ``catalog_read / (raw + decode_pool)``
should be ≤ ~1 when fetch and decode overlap, and ``catalog_read / raw`` ≈ 1 + decode share.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import numpy as np
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from s3transfer.subscribers import BaseSubscriber

from training.catalog.store import Catalog, Manifest, decode_png, encode_png
from infra.object_store import ObjectStore
from infra.settings import get_settings

DATASET = "bench-catalog-read"
SEED = 20240607


def radiographs(n: int, size: int, seed: int, batch: int = 250) -> Iterator[np.ndarray]:
    """Deterministic uint8 images: a bilinear-upsampled 8×8 random field, a vignette, noise."""
    rng = np.random.default_rng(seed)
    k = 8
    grid = np.linspace(0, k - 1, size)
    up = np.maximum(0.0, 1.0 - np.abs(grid[:, None] - np.arange(k)[None, :]))  # (size, k)
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    vignette = 1.0 - 0.35 * (xx**2 + yy**2)
    for start in range(0, n, batch):
        b = min(batch, n - start)
        field = up @ rng.normal(size=(b, k, k)) @ up.T
        img = (110 + 35 * field) * vignette + rng.normal(0, 4, (b, size, size))
        yield from np.clip(img, 0, 255).astype(np.uint8)


def publish(catalog: Catalog, n: int, size: int) -> Manifest:
    """Publish the benchmark version (a no-op upload when it is already there)."""
    items = []
    for i, pixels in enumerate(radiographs(n, size, SEED), 1):
        fields = {"label": 0, "label_name": "bench", "split": "train", "source_path": f"bench/{i:05d}.png",
                  "bit_depth": 8, "width": size, "height": size, "patient_id": f"p{i:05d}", "preprocessing": []}
        items.append((encode_png(pixels), fields))
        if i % max(1, n // 10) == 0 or i == n:
            click.echo(f"  generated {i}/{n} images")
    manifest = catalog.publish(DATASET, items, ["bench"], description=f"benchmark, n={n}",
                               progress=lambda done, total: click.echo(f"  uploaded {done}/{total} blobs"))
    if len({r.sha256 for r in manifest.records}) != n:
        raise click.ClickException("generated images are not all distinct")
    click.echo(f"  dataset {manifest.ref} ready ({n} images)")
    return manifest


class _KnownSize(BaseSubscriber):
    """Give s3transfer the object size, as ``aws s3 sync`` does from its listing (no HEAD)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def on_queued(self, future, **kwargs) -> None:
        future.meta.provide_transfer_size(self.size)


def raw_download(store: ObjectStore, keys: Sequence[str], workers: int) -> list[bytes]:
    def get(key: str) -> bytes:
        return store.client.get_object(Bucket=store.bucket, Key=key)["Body"].read()

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(get, keys))


def raw_download_to_disk(store: ObjectStore, keys: Sequence[str], sizes: Sequence[int], workers: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with create_transfer_manager(store.client, TransferConfig(max_concurrency=workers)) as manager:
            futures = [manager.download(store.bucket, key, os.path.join(tmp, key.rsplit("/", 1)[-1]),
                                        subscribers=[_KnownSize(size)]) for key, size in zip(keys, sizes)]
            for future in futures:
                future.result()


def decode(blobs: Sequence[bytes], workers: int) -> np.ndarray:
    if workers == 1:
        return np.stack([decode_png(b) for b in blobs])
    with ThreadPoolExecutor(workers) as pool:
        return np.stack(list(pool.map(decode_png, blobs)))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@click.command()
@click.option("--n", "n", default=5000, show_default=True, help="images in the dataset")
@click.option("--size", default=210, show_default=True, help="image side in pixels")
@click.option("--repeats", default=3, show_default=True, help="timed runs per case (median reported)")
@click.option("--workers", type=int, default=None, help="threads/connections [default: settings.s3_max_concurrency]")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=Path("out/bench/catalog_read.json"),
              show_default=True, help="where to write the numbers")
def main(n: int, size: int, repeats: int, workers: int | None, json_path: Path) -> None:
    """Seconds to load an n-image size×size catalog version vs. a raw concurrent download."""
    settings = get_settings()
    workers = workers or settings.s3_max_concurrency
    # One width for everything: read_pixels' pool and the client's connection pool follow it.
    store = ObjectStore(settings.model_copy(update={"s3_max_concurrency": workers}))
    store.ensure_bucket()
    catalog = Catalog(store)
    click.echo(f"setup: {DATASET}, n={n}, workers={workers}, cpus={os.cpu_count()}")
    manifest = publish(catalog, n, size)
    records = manifest.records
    keys = [catalog.blob_key(r.sha256) for r in records]
    blobs = raw_download(store, keys, workers)  # warm-up (connections, server caches) + sizes
    sizes = [len(b) for b in blobs]
    total = sum(sizes)

    cases: dict[str, Callable[[], object]] = {
        "raw_download": lambda: raw_download(store, keys, workers),
        "raw_download_to_disk": lambda: raw_download_to_disk(store, keys, sizes, workers),
        "decode_1thread": lambda: decode(blobs, 1),
        "decode_pool": lambda: decode(blobs, workers),
        "catalog_read": lambda: catalog.read_pixels(records),
    }
    times: dict[str, list[float]] = {case: [] for case in cases}
    for r in range(1, repeats + 1):
        for case, fn in cases.items():
            times[case].append(timed(fn))
        click.echo(f"  repeat {r}/{repeats}: " + ", ".join(f"{c}={t[-1]:.2f}s" for c, t in times.items()))
    med = {case: statistics.median(t) for case, t in times.items()}

    click.echo(f"\n{n} images {size}x{size}, {total / 1e6:.1f} MB PNG (mean {total / n / 1e3:.1f} kB), "
               f"workers={workers}, cpus={os.cpu_count()}, median of {repeats}")
    click.echo(f"{'case':<22}{'seconds':>9}{'images/s':>11}{'PNG MB/s':>10}")
    for case, secs in med.items():
        click.echo(f"{case:<22}{secs:>9.3f}{n / secs:>11.0f}{total / 1e6 / secs:>10.1f}")
    ratios = {
        "catalog_read / raw_download": med["catalog_read"] / med["raw_download"],
        "catalog_read / (raw_download + decode_pool)": med["catalog_read"] / (med["raw_download"] + med["decode_pool"]),
        "catalog_read / raw_download_to_disk": med["catalog_read"] / med["raw_download_to_disk"],
    }
    for name, value in ratios.items():
        click.echo(f"{name:<46}{value:>6.2f}")
    click.echo("note: read_pixels must fetch and decode every image, so its bound is network + decode: "
               "expect catalog_read/raw_download ≈ 1 + decode share, and catalog_read/(raw_download + "
               "decode_pool) ≤ 1 when fetch and decode overlap; on few cores they compete for the CPU "
               "(boto3 spends ~2 ms of GIL-held CPU per GET), so the ratio tends to 1 + decode share.")

    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({
        "dataset": str(manifest.ref), "n": n, "size": size, "workers": workers, "repeats": repeats,
        "total_png_bytes": total, "mean_png_bytes": total / n,
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "seconds_median": med, "seconds_per_repeat": times, "ratios": ratios,
    }, indent=2))
    click.echo(f"wrote {json_path}")


if __name__ == "__main__":
    main()
