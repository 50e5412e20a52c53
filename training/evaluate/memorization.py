"""Memorization / privacy audit: is a synthetic image a copy of a training image?

The knee paper's overfitting check: for each synthetic image, the Euclidean nearest training
image in Inception feature space; pairs sorted by distance; the closest 20 per class shown to
an orthopaedic surgeon. The radiograph paper did the same with SSIM in pixel space ("twins").

A distance means nothing alone, so it is compared with the training set against itself
(AuthPct-style): each training image's distance to its nearest *other* training image. A
synthetic image closer to the training set than the real images' 1st percentile is closer
than 99 % of real images are to each other; ``fraction_below_real_p1`` counts those (a
generator that samples fresh images from the real distribution scores about 0.01; copies
push it up). With ``pixel_ssim`` the same is done with SSIM (higher = closer): the best SSIM
of each synthetic image against all training images, vs the real→real 99th percentile.

Class of a pair [choice]: the synthetic image's label when the caller gives one (conditional
generators, one GAN per class as in the knee paper), else the label of its nearest training
image. Contact sheets show, per class, the top-k closest pairs in rank order, each pair as
(synthetic | nearest training image).

Artifacts go to ``eval/memorization/<audit id>/`` in the object store (summary.json,
pairs.csv, contact-<class>.png), the id being a hash of the reference key, the synthetic
pixels and the options; the returned dict (:func:`memorization_audit`) is what a registry gate
reads.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from sklearn.neighbors import NearestNeighbors

from training.catalog.store import Catalog
from infra.object_store import ObjectStore
from infra.settings import Settings, get_settings
from training.evaluate.fid import _check_images, features, fid_weights, inception
from training.evaluate.reference import ReferenceStats, reference_images
from training.evaluate.ssim import ssim_matrix
from infra.errors import BadInput
from infra.names import confined, safe_name
from infra.progress import CountProgress

__all__ = ["MEMORIZATION_PREFIX", "contact_sheet", "memorization_audit", "nearest_neighbours"]

MEMORIZATION_PREFIX = "eval/memorization/"
PAIRS_PER_ROW = 5
TITLE, GAP, CAPTION = 16, 8, 12  # contact-sheet layout, px


def nearest_neighbours(real: np.ndarray, fake: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fake→real distance, fake→real index, real→nearest-other-real distance), Euclidean."""
    index = NearestNeighbors(n_neighbors=1).fit(real)
    dist, idx = index.kneighbors(fake)
    real_dist, _ = index.kneighbors()  # no query: each real point's nearest *other* point
    return dist[:, 0], idx[:, 0], real_dist[:, 0]


def _to_rgb_tensor(images: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (N, H, W[, 3]) -> uint8 (N, 3, *size) for a grid (display only)."""
    out = []
    for img in images:
        pil = Image.fromarray(img).convert("RGB")
        if pil.size != (size[1], size[0]):
            pil = pil.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        out.append(torch.from_numpy(np.array(pil)).permute(2, 0, 1))
    return torch.stack(out)


def contact_sheet(fakes: np.ndarray, reals: np.ndarray, title: str, captions: Sequence[str] = ()) -> bytes:
    """PNG of pairs in rank order, ``PAIRS_PER_ROW`` per row, each (synthetic | training) with its
    caption (e.g. rank and distance) underneath.

    Layout: a 16-px title; each pair is torchvision's ``make_grid`` of the two images (1-px
    white frame), pairs ``GAP`` px apart, so a reader never mistakes which two belong together.
    """
    from infra.compat import ensure_torchvision

    ensure_torchvision()
    from torchvision.utils import make_grid

    h, w = fakes.shape[1:3]
    tiles = torch.stack([_to_rgb_tensor(fakes, (h, w)), _to_rgb_tensor(reals, (h, w))], 1)
    cell_w, cell_h = 2 * w + 3 + GAP, h + 2 + CAPTION + GAP
    rows = -(-len(tiles) // PAIRS_PER_ROW)
    sheet = Image.new("RGB", (GAP + PAIRS_PER_ROW * cell_w, TITLE + rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((GAP, 2), title, fill="black")
    for k, pair in enumerate(tiles):
        x, y = GAP + (k % PAIRS_PER_ROW) * cell_w, TITLE + (k // PAIRS_PER_ROW) * cell_h
        grid = make_grid(pair, nrow=2, padding=1, pad_value=255)
        sheet.paste(Image.fromarray(grid.permute(1, 2, 0).numpy()), (x, y))
        if k < len(captions):
            draw.text((x + 1, y + h + 2), captions[k], fill="black")
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def _audit_id(ref: ReferenceStats, fake: np.ndarray, options: dict) -> str:
    h = hashlib.sha256(ref.key.encode())
    h.update(np.ascontiguousarray(fake).tobytes())
    h.update(repr(fake.shape).encode())
    h.update(json.dumps(options, sort_keys=True).encode())
    return h.hexdigest()[:24]


def _pairs_csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def _ssim_part(fake: np.ndarray, reals: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Best SSIM of each fake against all reals (value, index) and the real→real 99th percentile."""
    if fake.ndim != 3 or reals.ndim != 3 or fake.shape[1:] != reals.shape[1:]:
        raise BadInput(
            f"pixel SSIM needs grayscale synthetic and training images of one size, got "
            f"{fake.shape[1:]} and {reals.shape[1:]}"
        )
    fr = ssim_matrix(fake, reals)
    rr = ssim_matrix(reals, reals)
    np.fill_diagonal(rr, -np.inf)
    return fr.max(1), fr.argmax(1), float(np.percentile(rr.max(1), 99))


def memorization_audit(
    fake: np.ndarray,
    ref: ReferenceStats,
    *,
    fake_labels: Sequence[int] | None = None,
    top_k: int = 20,
    pixel_ssim: bool = False,
    settings: Settings | None = None,
    store: ObjectStore | None = None,
    out_dir: Path | None = None,
    batch_size: int = 50,
    progress: CountProgress | None = None,
    feats: np.ndarray | None = None,
) -> dict:
    """Nearest training image of every synthetic image, vs the training set's own spacing.

    Args:
        fake: uint8 synthetic images (N, H, W[, 3]).
        ref: the training selection (:func:`training.evaluate.reference_statistics`); its cached
            features are the real side, its images are fetched only for the contact sheets
            (and for ``pixel_ssim``, all of them).
        fake_labels: class of each synthetic image, if known.
        top_k: pairs per class on the contact sheets.
        pixel_ssim: also search by SSIM in pixel space (every fake x every real).
        store: where artifacts go (default: the settings' object store).
        out_dir: also write the artifacts here.
        feats: ``fake``'s Inception features (``ref.dims``), when the caller already has them.
    Returns:
        summary numbers, the closest pairs and artifact URIs (JSON-serialisable).
    """
    settings = settings or get_settings()
    store = store or ObjectStore(settings)
    fake = _check_images(fake)
    if ref.features is None or ref.labels is None:
        raise BadInput(f"reference {ref.key} carries no features; load it with reference_statistics()")
    if fid_weights(settings).sha256 != ref.weights_sha256:
        raise BadInput(f"reference {ref.key} was computed with other Inception weights")
    if fake_labels is not None and len(fake_labels) != len(fake):
        raise BadInput(f"{len(fake_labels)} fake_labels for {len(fake)} synthetic images")
    if top_k < 1:
        raise BadInput(f"top_k must be >= 1, got {top_k}")
    classes = Catalog(store).manifest(ref.dataset).classes

    if feats is None:
        feats = features(fake, inception(settings, dims=ref.dims), batch_size, progress=progress)
    elif feats.shape != (len(fake), ref.dims):
        raise BadInput(f"feats has shape {feats.shape}, expected ({len(fake)}, {ref.dims})")
    dist, idx, real_nn = nearest_neighbours(ref.features.astype(np.float64), feats)
    real_p1 = float(np.percentile(real_nn, 1))
    labels = np.asarray(fake_labels) if fake_labels is not None else ref.labels[idx]
    order = np.argsort(dist, kind="stable")

    ssim_best = ssim_idx = None
    summary_ssim = None
    if pixel_ssim:
        ssim_best, ssim_idx, real_p99 = _ssim_part(fake, reference_images(ref, settings=settings))
        summary_ssim = {
            "max": float(ssim_best.max()), "real_nn_p99": real_p99,
            "fraction_above_real_p99": float((ssim_best > real_p99).mean()),
            "n_above_real_p99": int((ssim_best > real_p99).sum()),
        }

    rows = []
    for rank, i in enumerate(order, 1):
        row = {
            "rank": rank, "fake_index": int(i), "class": classes[int(labels[i])], "distance": float(dist[i]),
            "real_index": int(idx[i]), "real_sha256": ref.image_sha256[idx[i]],
            "real_class": classes[int(ref.labels[idx[i]])],
        }
        if pixel_ssim:
            row |= {"ssim": float(ssim_best[i]), "ssim_real_sha256": ref.image_sha256[ssim_idx[i]]}
        rows.append(row)

    per_class, sheets = {}, {}
    for label in np.unique(labels):
        name = classes[int(label)]
        members = order[labels[order] == label]
        top = members[:top_k]
        per_class[name] = {
            "n": int(len(members)), "min_distance": float(dist[members].min()),
            "fraction_below_real_p1": float((dist[members] < real_p1).mean()),
        }
        sheets[name] = contact_sheet(
            fake[top], reference_images(ref, idx[top], settings),
            f"{name}: the {len(top)} closest pairs (synthetic | nearest training image), real-real p1 {real_p1:.2f}",
            [f"#{int(np.flatnonzero(order == i)[0]) + 1} d={dist[i]:.2f}" for i in top],
        )

    options = {"top_k": top_k, "pixel_ssim": pixel_ssim,
               "fake_labels": None if fake_labels is None else [int(x) for x in fake_labels]}
    prefix = f"{MEMORIZATION_PREFIX}{_audit_id(ref, fake, options)}/"
    summary = {
        "dataset": ref.dataset, "reference_key": ref.key, "weights_sha256": ref.weights_sha256,
        "dims": ref.dims, "n_fake": int(len(fake)), "n_real": ref.n,
        "min_distance": float(dist.min()), "median_distance": float(np.median(dist)),
        "real_nn_p1": real_p1, "real_nn_median": float(np.median(real_nn)),
        "fraction_below_real_p1": float((dist < real_p1).mean()), "n_below_real_p1": int((dist < real_p1).sum()),
        "per_class": per_class, "closest": rows[:10], "ssim": summary_ssim,
    }
    files = {"pairs.csv": (_pairs_csv(rows), "text/csv")}
    # class names become key and file names: one safe component each (an old manifest may hold anything)
    files |= {f"contact-{safe_name(name, 'class name')}.png": (png, "image/png") for name, png in sheets.items()}
    artifacts = {name: store.uri(prefix + name) for name in [*files, "summary.json"]}
    summary["artifacts"] = artifacts
    files["summary.json"] = (json.dumps(summary, indent=1).encode(), "application/json")
    for name, (data, content_type) in files.items():
        store.put_bytes(prefix + name, data, content_type=content_type)
        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            confined(out_dir, name).write_bytes(data)
    return summary
