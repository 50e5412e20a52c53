"""Memorization audit on the real stack: a planted copy of a training image must be caught."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from infra.object_store import ObjectStore
from infra.settings import Settings
from training.catalog.selection import publish_phantom
from training.evaluate import memorization_audit, reference_images, reference_statistics
from training.catalog.phantom import PhantomSpec, make_phantom

pytestmark = pytest.mark.stack

DIMS = 64  # cheap features; the audit's logic does not depend on dims
PLANTED_AT, COPIED = 5, 7  # synthetic index that holds a copy of training image COPIED


@pytest.fixture(scope="module")
def audit(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, object, np.ndarray, Path]:
    ref_name = publish_phantom(80, PhantomSpec(size=64, seed=5), name="phantom-metrics", settings=stack,
                               progress=lambda _: None).ref
    ref = reference_statistics(str(ref_name), split="train", dims=DIMS, settings=stack)
    fake = np.stack([img.pixels for img in make_phantom(12, PhantomSpec(size=64, seed=1234))])
    fake = np.insert(fake, PLANTED_AT, reference_images(ref, [COPIED], stack)[0], axis=0)
    out = tmp_path_factory.mktemp("memorization")
    summary = memorization_audit(fake, ref, top_k=4, pixel_ssim=True, settings=stack, out_dir=out)
    return summary, ref, fake, out


def test_planted_copy_is_found_first_at_distance_zero(audit) -> None:
    summary, ref, fake, _ = audit
    first = summary["closest"][0]
    assert first["rank"] == 1 and first["fake_index"] == PLANTED_AT
    assert first["real_sha256"] == ref.image_sha256[COPIED] and first["real_index"] == COPIED
    assert first["distance"] == pytest.approx(0.0, abs=1e-6)
    assert summary["min_distance"] == first["distance"]
    second = summary["closest"][1]["distance"]
    assert second > 0.1 * summary["real_nn_median"]  # the fresh phantoms are not copies
    assert summary["n_below_real_p1"] >= 1
    assert summary["fraction_below_real_p1"] == summary["n_below_real_p1"] / len(fake)
    assert (summary["n_fake"], summary["n_real"], summary["dims"]) == (13, ref.n, DIMS)
    assert summary["reference_key"] == ref.key and summary["weights_sha256"] == ref.weights_sha256


def test_pixel_ssim_finds_the_twin(audit) -> None:
    summary, ref, _, _ = audit
    first = summary["closest"][0]
    assert first["ssim"] == pytest.approx(1.0, abs=1e-5) and first["ssim_real_sha256"] == ref.image_sha256[COPIED]
    assert summary["ssim"]["max"] == pytest.approx(1.0, abs=1e-5)
    assert summary["ssim"]["n_above_real_p99"] >= 1 and summary["ssim"]["real_nn_p99"] < 0.999


def test_artifacts_are_stored_and_readable(audit, store: ObjectStore) -> None:
    summary, ref, fake, out = audit
    artifacts = summary["artifacts"]
    assert {"pairs.csv", "summary.json"} <= set(artifacts)
    key = lambda uri: uri.split("/", 3)[3]  # noqa: E731  s3://bucket/key -> key
    stored = json.loads(store.get_bytes(key(artifacts["summary.json"])))
    assert stored == json.loads(json.dumps(summary)) == json.loads((out / "summary.json").read_text())

    rows = list(csv.DictReader(io.StringIO(store.get_bytes(key(artifacts["pairs.csv"])).decode())))
    distances = [float(r["distance"]) for r in rows]
    assert len(rows) == len(fake) and distances == sorted(distances)
    assert int(rows[0]["fake_index"]) == PLANTED_AT

    sheets = {name: uri for name, uri in artifacts.items() if name.startswith("contact-")}
    assert set(summary["per_class"]) == {name.removeprefix("contact-").removesuffix(".png") for name in sheets}
    assert sum(c["n"] for c in summary["per_class"].values()) == len(fake)
    for name, uri in sheets.items():
        sheet = Image.open(io.BytesIO(store.get_bytes(key(uri))))
        pairs = min(4, summary["per_class"][name.removeprefix("contact-").removesuffix(".png")]["n"])
        assert sheet.height >= 16 + 64 and sheet.width >= 5 * 2 * 64 and pairs >= 1
        assert (out / name).read_bytes() == store.get_bytes(key(uri))


def test_contact_sheet_of_the_planted_class_starts_with_the_pair(audit, store: ObjectStore) -> None:
    summary, ref, fake, _ = audit
    cls = summary["closest"][0]["class"]
    sheet = np.asarray(Image.open(io.BytesIO(store.get_bytes(
        summary["artifacts"][f"contact-{cls}.png"].split("/", 3)[3]))).convert("L"))
    # First pair (after the 16-px title, the 8-px margin and the pair's 1-px frame): the synthetic
    # copy, then its twin one frame line to the right.
    np.testing.assert_array_equal(sheet[17 : 17 + 64, 9 : 9 + 64], fake[PLANTED_AT])
    np.testing.assert_array_equal(sheet[17 : 17 + 64, 74 : 74 + 64], reference_images(ref, [COPIED])[0])


def test_bad_input_is_named(audit, stack: Settings) -> None:
    _, ref, fake, _ = audit
    with pytest.raises(ValueError, match="fake_labels"):
        memorization_audit(fake, ref, fake_labels=[0], settings=stack)
    with pytest.raises(ValueError, match="top_k"):
        memorization_audit(fake, ref, top_k=0, settings=stack)
    with pytest.raises(TypeError, match="uint8"):
        memorization_audit(fake.astype(np.float32), ref, settings=stack)
