"""Segmentation masks in the catalog: records, preprocessing, ingest checks, the phantom's label maps."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.catalog.ingest import IngestOptions, ingest
from training.catalog.phantom import MASK_CLASSES, PhantomSpec, make_phantom, make_phantom_image
from training.catalog.preprocess import EqualizeHist, InvertNegative, LateralFlip, Pipeline, Resize, pipeline
from training.catalog.selection import ingest_phantom
from training.catalog.store import CatalogError, ImageRecord, Manifest, _manifest_body, _version_of


def quiet(_: str) -> None:
    pass


def record(**extra) -> ImageRecord:
    return ImageRecord(sha256="a" * 64, label=1, label_name="KL1", split="train", source_path="1/x.png", bit_depth=8,
                       width=32, height=32, patient_id="p1", preprocessing=[{"step": "resize", "resized": False}],
                       attributes={"k": "v"}, mode="L", source_width=32, source_height=32, source_bit_depth=8,
                       source_mode="L", **extra)


# -- manifests: unchanged without masks, covered by the hash with them ---------------------------
def test_manifest_without_masks_keeps_the_hash_it_had_before_masks_existed() -> None:
    manifest = Manifest("pinned", "", [record()], ["KL0", "KL1"], "d", {"s": ["a" * 64]}, [{"step": "resize", "size": 32}])
    body = _manifest_body(manifest)
    assert "mask_classes" not in body and "mask_sha256" not in body["records"][0]
    # computed with the catalog code before masks existed (main at 88b19ed), same content
    assert _version_of(body) == "26738016eb1eb4f8"
    masked = Manifest("pinned", "", [record(mask_sha256="b" * 64)], ["KL0", "KL1"], "d", {"s": ["a" * 64]},
                      [{"step": "resize", "size": 32}], ["background", "bone"])
    other = Manifest("pinned", "", [record(mask_sha256="c" * 64)], ["KL0", "KL1"], "d", {"s": ["a" * 64]},
                     [{"step": "resize", "size": 32}], ["background", "bone"])
    hashes = {_version_of(_manifest_body(m)) for m in (manifest, masked, other)}
    assert len(hashes) == 3  # the mask's hash is part of the version


# -- preprocessing: geometry moves the mask, intensity does not ---------------------------------
def test_flip_moves_the_mask_with_the_image_and_intensity_steps_leave_it() -> None:
    phantom = make_phantom_image(1, PhantomSpec(size=64), masks=True)
    assert not phantom.mirrored  # a left knee: the fibula detector wants it as is
    right_img, right_mask = phantom.pixels[:, ::-1].copy(), phantom.mask[:, ::-1].copy()
    pipe = Pipeline((LateralFlip("fibula"), InvertNegative("border"), EqualizeHist()))
    img, mask, steps = pipe.run_pair(right_img, right_mask)
    assert steps[0] == {"step": "lateral_flip", "flipped": True}
    assert np.array_equal(mask, phantom.mask)  # back where the image went
    assert np.array_equal(img, pipe.run(right_img)[0])  # the image's own pipeline is unchanged
    negative = 255 - phantom.pixels
    _, mask, steps = Pipeline((InvertNegative("border"),)).run_pair(negative, phantom.mask)
    assert steps[0]["inverted"] is True and np.array_equal(mask, phantom.mask)


def test_resize_keeps_label_values_within_the_declared_set() -> None:
    phantom = make_phantom_image(2, PhantomSpec(size=64), masks=True)
    for size in (21, 47, 130):
        _, mask, steps = Pipeline((Resize(size),)).run_pair(phantom.pixels, phantom.mask)
        assert mask.shape == (size, size) and mask.dtype == np.uint8 and steps[0]["resized"]
        assert set(np.unique(mask)) <= set(range(len(MASK_CLASSES)))
        assert set(np.unique(mask)) == set(np.unique(phantom.mask))  # every bone survives
    # a bilinear resize would invent the in-between value 1 on a 0/2 edge; nearest neighbour does not
    edge = np.zeros((8, 8), np.uint8)
    edge[:, 4:] = 2
    _, mask, _ = Pipeline((Resize(13),)).run_pair(np.zeros((8, 8), np.uint8), edge)
    assert set(np.unique(mask)) == {0, 2}
    with pytest.raises(ValueError, match="mask .* differ in size"):
        pipeline("knee", size=32).run_pair(phantom.pixels, phantom.mask[:32])


def test_phantom_masks_are_exact_and_leave_the_images_unchanged() -> None:
    spec = PhantomSpec(size=48, seed=3)
    plain, masked = make_phantom(6, spec), make_phantom(6, spec, masks=True)
    for a, b in zip(plain, masked):
        assert a.mask is None and np.array_equal(a.pixels, b.pixels)
        counts = np.bincount(b.mask.ravel(), minlength=4)
        assert len(counts) == 4 and (counts > 0).all()  # background, femur, tibia, fibula all present
        # the femur lies above the tibia; the fibula lies on the lateral side (image right for a left knee)
        rows = np.arange(48)[:, None].repeat(48, 1)
        cols = np.arange(48)[None, :].repeat(48, 0)
        assert rows[b.mask == 1].mean() < rows[b.mask == 2].mean()
        fibula_right = cols[b.mask == 3].mean() > cols[b.mask == 2].mean()
        assert fibula_right == (not b.mirrored)


# -- ingest on the stack --------------------------------------------------------------------------
def test_phantom_with_masks_ingests_and_reads_back(catalog, tmp_path: Path) -> None:
    spec = PhantomSpec(size=32, seed=1)
    name = f"masks-{uuid.uuid4().hex[:8]}"
    options = IngestOptions(name=name, layout="csv", preset="none", seed=1)
    result = ingest_phantom(20, spec, options, catalog, quiet, masks=True)
    manifest = catalog.manifest(result.manifest.ref)
    assert manifest.mask_classes == list(MASK_CLASSES)
    assert all(r.mask_sha256 for r in manifest.records) and len(manifest.records) == 20
    assert result.report["masks"] == {"classes": list(MASK_CLASSES), "with_mask": 20, "required": True}
    truth = {f"{im.grade}/{im.patient_id}_{im.side}_{im.index:05d}.png": im.mask
             for im in make_phantom(20, spec, masks=True)}
    masks = catalog.read_masks(manifest.records)
    for r, mask in zip(manifest.records, masks):
        assert np.array_equal(mask, truth[r.source_path])
    assert catalog.verify(manifest.ref).ok
    out = catalog.export(manifest.ref, tmp_path / "export", records=manifest.records[:2])
    for r in manifest.records[:2]:
        exported = np.asarray(Image.open(out / r.split / r.label_name / f"{r.sha256}.mask.png"))
        assert np.array_equal(exported, truth[r.source_path])
    # the plain phantom's version is untouched by the option
    plain = ingest_phantom(20, spec, IngestOptions(name=name + "-plain", layout="csv", preset="none", seed=1),
                           catalog, quiet)
    assert not plain.manifest.mask_classes and all(r.mask_sha256 is None for r in plain.manifest.records)


def test_image_mask_layout_reports_each_bad_mask_on_one_line(catalog, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)

    def save(rel: str, pixels: np.ndarray) -> None:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(tmp_path / rel)

    good = np.zeros((32, 32), np.uint8)
    good[8:20, 8:20] = 1
    good[20:28, 4:12] = 2
    for i in range(4):
        save(f"images/knee/ok{i}.png", rng.integers(0, 256, (32, 32), dtype=np.uint8))
        save(f"masks/ok{i}.png", np.roll(good, i, axis=1))
    bad = {"wrongsize": np.zeros((16, 32), np.uint8), "badlabel": good * 3, "empty": np.zeros((32, 32), np.uint8)}
    for stem, mask in bad.items():
        save(f"images/knee/{stem}.png", rng.integers(0, 256, (32, 32), dtype=np.uint8))
        save(f"masks/{stem}.png", mask)
    save("images/knee/nomask.png", rng.integers(0, 256, (32, 32), dtype=np.uint8))
    save("masks/orphan.png", good)
    (tmp_path / "masks" / "classes.txt").write_text("background\nfemur\ntibia\n")
    options = IngestOptions(name=f"pairs-{uuid.uuid4().hex[:8]}", layout="image-mask", preset="knee", size=24,
                            flip_detector="never", require_mask=True, fractions={"train": 0.5, "test": 0.5})
    result = ingest(tmp_path, options, catalog, quiet)
    kinds = {p["path"]: p["kind"] for p in result.report["problems"]}
    assert kinds == {"images/knee/wrongsize.png": "mask-size", "images/knee/badlabel.png": "mask-labels",
                     "images/knee/empty.png": "mask-empty", "images/knee/nomask.png": "no-mask",
                     "masks/orphan.png": "orphan-mask"}
    reasons = {p["kind"]: p["reason"] for p in result.report["problems"]}
    assert "[3, 6]" in reasons["mask-labels"] and "0..2" in reasons["mask-labels"]
    manifest = result.manifest
    assert len(manifest.records) == 4 and manifest.mask_classes == ["background", "femur", "tibia"]
    masks = catalog.read_masks(manifest.records)
    assert masks.shape == (4, 24, 24) and set(np.unique(masks)) == {0, 1, 2}  # resized, nearest neighbour
    # without --require-mask the image without a mask is ingested without one; the others still fail
    loose = ingest(tmp_path, IngestOptions(name=options.name + "-loose", layout="image-mask", preset="none",
                                         fractions={"train": 0.5, "test": 0.5}),
                   catalog, quiet)
    assert {r.source_path: r.mask_sha256 is None for r in loose.manifest.records}["images/knee/nomask.png"]
    assert "images/knee/empty.png" in {r.source_path for r in loose.manifest.records}
    with pytest.raises(CatalogError, match="no mask"):
        catalog.fetch_mask(next(r for r in loose.manifest.records if r.mask_sha256 is None))
