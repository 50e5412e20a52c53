"""``catalog ingest`` on the real S3 of the private test stack.

Source trees are built by each test in ``tmp_path``; every dataset name is unique, so tests
never see each other's versions. Crash tests run the real CLI in a subprocess and kill it
(or the object store) with SIGKILL mid-upload.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import pytest
from click.testing import CliRunner
from PIL import Image

from training.catalog.store import PREFIX, Catalog, CatalogError, decode_png
from infra.object_store import ObjectStore
from services.cli.main import main
from training.catalog.ingest import BadFile, IngestOptions, ingest, parse_merge, read_image, resolve_merges
from training.catalog.phantom import PhantomSpec, make_phantom
from training.catalog.preprocess import pipeline
from training.catalog.splits import assert_disjoint, derive, select


def save(path: Path, pixels: np.ndarray, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def noise(seed: int, size: int = 32, dtype=np.uint8) -> np.ndarray:
    high = 65536 if dtype == np.uint16 else 256
    return np.random.default_rng(seed).integers(0, high, (size, size), dtype=np.int64).astype(dtype)


def unique_name() -> str:
    return f"ingest-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def cat(catalog: Catalog) -> Catalog:
    return catalog


def quiet(_: str) -> None:
    pass


# -- reading and labels (no stack) --------------------------------------------------------
def test_read_image_accepts_gray_8_and_16_bit_and_names_bad_kinds() -> None:
    def encode(pixels, mode=None, fmt="PNG") -> bytes:
        buf = io.BytesIO()
        (Image.fromarray(pixels, mode) if mode else Image.fromarray(pixels)).save(buf, format=fmt)
        return buf.getvalue()

    eight, sixteen = noise(1), noise(2, dtype=np.uint16)
    px, depth, _ = read_image(encode(eight), "a.png")
    assert depth == 8 and np.array_equal(px, eight)
    px, depth, _ = read_image(encode(sixteen), "b.png")
    assert depth == 16 and px.dtype == np.uint16 and np.array_equal(px, sixteen)
    px, depth, mode = read_image(encode(np.stack([eight] * 3, -1)), "gray-as-rgb.png")
    assert (depth, mode) == (8, "RGB") and np.array_equal(px, eight)
    px, depth, _ = read_image(encode(eight, fmt="JPEG"), "c.jpg")
    assert depth == 8 and px.shape == eight.shape
    cases = {
        b"": "zero-size",
        b"\x89PNG\r\n\x1a\n truncated": "unreadable",
        encode(np.dstack([eight, eight, 255 - eight])): "wrong-mode",
        encode(np.dstack([eight, eight]), "LA"): "wrong-mode",
    }
    for data, kind in cases.items():
        with pytest.raises(BadFile) as info:
            read_image(data, "x/file.png")
        assert info.value.kind == kind and "x/file.png" in info.value.reason


def test_label_merges_resolve_names_and_indices() -> None:
    source = ["KL0", "KL1", "KL2", "KL3", "KL4"]
    merges = dict(map(parse_merge, ["KL01=0,1", "KL234=KL2,3,4"]))
    classes, mapping = resolve_merges(merges, source)
    assert classes == ["KL01", "KL234"]
    assert mapping == {"KL0": "KL01", "KL1": "KL01", "KL2": "KL234", "KL3": "KL234", "KL4": "KL234"}
    with pytest.raises(ValueError, match="--merge KL01: label '7' is not a class of the source"):
        resolve_merges({"KL01": ["0", "7"]}, source)
    with pytest.raises(ValueError, match="label 'KL1' is already merged into 'A'"):
        resolve_merges({"A": ["1"], "B": ["KL1"]}, source)
    with pytest.raises(ValueError, match="--merge 'KL01' is invalid"):
        parse_merge("KL01")
    assert resolve_merges({}, ["b", "a"], fixed=["a", "b", "c"]) == (["a", "b", "c"], {"a": "a", "b": "b", "c": "c"})


# -- ingest on the stack ------------------------------------------------------------------
def imagefolder_with_bad_files(root: Path) -> dict[str, np.ndarray]:
    """Good files (8/16-bit PNG, JPEG, RGB-encoded gray) and one of each bad kind."""
    good = {f"a/{i}.png": noise(i) for i in range(3)} | {f"b/{i}.png": noise(10 + i) for i in range(3)}
    for rel, pixels in good.items():
        save(root / rel, pixels)
    good["a/deep.png"] = noise(20, dtype=np.uint16)
    save(root / "a/deep.png", good["a/deep.png"])
    save(root / "b/rgb-gray.png", np.stack([noise(21)] * 3, -1))
    good["b/rgb-gray.png"] = noise(21)
    save(root / "b/photo.jpg", noise(22), "JPEG")
    good["b/photo.jpg"] = np.asarray(Image.open(root / "b/photo.jpg"))
    (root / "b/empty.png").write_bytes(b"")
    (root / "b/garbage.png").write_bytes(b"this is not an image")
    save(root / "a/colour.png", np.dstack([noise(23), noise(24), noise(25)]))
    (root / "a/copy.png").write_bytes((root / "a/0.png").read_bytes())
    (root / "a/notes.txt").write_text("ignored")
    return good


@pytest.mark.stack
def test_imagefolder_round_trip_skips_and_reports_bad_files(tmp_path: Path, cat: Catalog) -> None:
    good = imagefolder_with_bad_files(tmp_path)
    options = IngestOptions(name=unique_name(), layout="imagefolder", preset="none",
                            fractions={"train": 0.5, "test": 0.5})
    result = ingest(tmp_path, options, cat, quiet)
    manifest, report = result.manifest, result.report

    assert report["skipped"] == {"zero-size": 1, "unreadable": 1, "wrong-mode": 1, "duplicate": 1}
    bad = {p["path"]: p["kind"] for p in report["problems"]}
    assert bad == {"b/empty.png": "zero-size", "b/garbage.png": "unreadable", "a/colour.png": "wrong-mode",
                   "a/copy.png": "duplicate"}
    assert {r.source_path for r in manifest.records} == set(good)
    assert manifest.classes == ["a", "b"]
    # The stored manifest is what ingest returned, and every image reads back exactly.
    assert cat.manifest(manifest.ref) == manifest
    for record in manifest.records:
        assert record.label_name == record.source_path.split("/")[0]
        assert np.array_equal(cat.read_pixels([record])[0], good[record.source_path]), record.source_path
        source_bytes = (tmp_path / record.source_path).read_bytes()
        assert record.attributes["source_sha256"] == hashlib.sha256(source_bytes).hexdigest()
    by_path = {r.source_path: r for r in manifest.records}
    assert by_path["a/deep.png"].bit_depth == 16 and cat.read_pixels([by_path["a/deep.png"]]).dtype == np.uint16
    assert by_path["b/rgb-gray.png"].attributes["source_mode"] == "RGB"
    assert {r.split for r in manifest.records} == {"train", "test"}
    # The report was published next to the manifest.
    assert b'"zero-size": 1' in cat.attachment(manifest.ref, "report.json")


@pytest.mark.stack
def test_reingest_is_idempotent(tmp_path: Path, cat: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    imagefolder_with_bad_files(tmp_path)
    options = IngestOptions(name=unique_name(), layout="imagefolder", preset="none", fractions={"train": 0.5, "test": 0.5})
    first = ingest(tmp_path, options, cat, quiet).manifest
    written: list[str] = []
    real = cat.store.put_bytes
    monkeypatch.setattr(cat.store, "put_bytes", lambda key, data, **kw: (written.append(key), real(key, data, **kw)))
    again = ingest(tmp_path, options, cat, quiet).manifest
    assert again == first
    assert written == [cat.latest_key(options.name)]  # no blob, no report, no manifest
    reseeded = ingest(tmp_path, replace(options, seed=5), cat, quiet).manifest
    assert reseeded.version != first.version or [r.split for r in reseeded.records] == [r.split for r in first.records]


def chen_kl_tree(root: Path, n: int, seed: int) -> list:
    """Phantom knees at 299 px in the Chen 2019 layout, with a ground-truth CSV."""
    images = make_phantom(n, PhantomSpec(size=299, seed=seed, inverted_fraction=0.2, blurred_fraction=0.2))
    rows = []
    for img in images:
        split = ("train", "train", "val", "test")[int(img.patient_id[-5:]) % 4]
        rel = f"{split}/{img.grade}/{9_000_000 + int(img.patient_id[-5:])}_{img.index}.png"
        save(root / rel, img.pixels)
        rows.append((rel, int(img.mirrored), int(img.inverted), int(img.blurred)))
    with open(root / "truth.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("path", "mirrored", "inverted", "blurred"), *rows])
    return images


@pytest.mark.stack
def test_chen_kl_with_merges_and_the_knee_preprocessing(tmp_path: Path, cat: Catalog) -> None:
    images = chen_kl_tree(tmp_path / "kl", 40, seed=11)
    options = IngestOptions(
        name=unique_name(), layout="chen-kl", preset="knee", merges={"KL01": ["0", "1"], "KL234": ["2", "3", "4"]},
        truth=tmp_path / "kl" / "truth.csv", focus_sweep=True,
    )
    result = ingest(tmp_path / "kl", options, cat, quiet)
    manifest = result.manifest
    assert manifest.classes == ["KL01", "KL234"] and len(manifest.records) == len(images)
    pipe = pipeline("knee")
    for record in manifest.records:
        split, grade = record.source_path.split("/")[:2]
        assert record.split == split and record.label == (0 if int(grade) <= 1 else 1)
        assert record.patient_id == record.source_path.split("/")[2][:7]
        assert (record.source_width, record.source_height, record.source_bit_depth) == (299, 299, 8)
        assert (record.width, record.height, record.bit_depth, record.mode) == (210, 210, 8, "L")  # stored
        assert [s["step"] for s in record.preprocessing] == [
            "lateral_flip", "invert_negative", "equalize_hist", "resize", "focus"]
        # What is stored is exactly the pipeline's output on the source file.
        expected, steps = pipe.run(np.asarray(Image.open(tmp_path / "kl" / record.source_path)))
        assert steps == record.preprocessing
        assert np.array_equal(cat.read_pixels([record])[0], expected)
    assert manifest.preprocessing[1:] == pipe.describe()
    # Blurry images are kept, in subset "rejected"; the rest form "gan-train".
    blurry = {r.sha256 for r in manifest.records if r.preprocessing[-1]["blurry"]}
    assert set(manifest.subset("rejected")) == blurry
    assert set(manifest.subset("gan-train")) == {r.sha256 for r in manifest.records} - blurry
    report = result.report
    for step in ("lateral_flip", "invert_negative", "focus"):
        assert report["detectors"][step]["n"] == len(images) and report["detectors"][step]["accuracy"] >= 0.9
    flipped = sum(r.preprocessing[0]["flipped"] for r in manifest.records)
    assert sum(report["step_counts"].get("lateral_flip.flipped", {}).values()) == flipped
    assert sum(report["focus_bands"].values()) == len(images)
    assert set(result.sheets) == {"focus-0-175", "focus-175-350", "focus-350-525", "focus-525-up"}
    sheet = decode_png(cat.attachment(manifest.ref, "focus-525-up.png"))
    assert sheet.ndim == 2 and sheet.shape[0] > 96


@pytest.mark.stack
def test_ray_data_engine_gives_the_same_version(tmp_path: Path, cat: Catalog) -> None:
    imagefolder_with_bad_files(tmp_path)
    options = IngestOptions(name=unique_name(), layout="imagefolder", preset="knee", size=24, focus_threshold=100,
                            fractions={"train": 0.5, "test": 0.5})
    local = ingest(tmp_path, options, cat, quiet)
    on_ray = ingest(tmp_path, replace(options, engine="ray"), cat, quiet)
    assert on_ray.manifest == local.manifest
    assert on_ray.report["problems"] == local.report["problems"]


@pytest.mark.stack
def test_resplit_and_subsets_make_a_new_version_over_the_same_blobs(tmp_path: Path, cat: Catalog) -> None:
    rows = [("path", "label", "patient_id")]
    for i in range(60):
        rows.append((save(tmp_path / f"img/{i}.png", noise(100 + i)).relative_to(tmp_path).as_posix(),
                     "sick" if i % 3 == 0 else "well", f"P{i // 3}"))
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    options = IngestOptions(name=unique_name(), layout="csv", preset="none", fractions={"train": 0.6, "val": 0.2, "test": 0.2})
    base = ingest(tmp_path / "labels.csv", options, cat, quiet).manifest
    assert_disjoint(select(base, "split=train"), select(base, "split=test"), "train vs test")
    blobs = set(cat.store.list_keys(f"{PREFIX}/blobs/"))

    derived = derive(cat, str(base.ref), fractions={"train": 0.8, "test": 0.2}, seed=3,
                     subsets={"classifier-pool": "split=test,label=sick"})
    assert derived.version != base.version and cat.resolve(base.name) == derived.ref
    assert {r.sha256 for r in derived.records} == {r.sha256 for r in base.records}
    assert set(cat.store.list_keys(f"{PREFIX}/blobs/")) == blobs  # nothing re-uploaded
    assert {r.split for r in derived.records} == {"train", "test"}
    pool = set(derived.subset("classifier-pool"))
    assert pool == {r.sha256 for r in derived.records if r.split == "test" and r.label_name == "sick"}
    assert_disjoint(select(derived, "split=train"), select(derived, "subset=classifier-pool"), "train vs pool")
    with pytest.raises(CatalogError, match="NOT disjoint"):
        assert_disjoint(select(derived, ""), select(derived, "subset=classifier-pool"), "all vs pool")
    assert cat.manifest(base.ref) == base  # the old version is untouched


# -- CLI: show, verify, export, disjoint --------------------------------------------------
@pytest.mark.stack
def test_cli_show_verify_export_and_disjoint(tmp_path: Path, cat: Catalog) -> None:
    n_good = len(imagefolder_with_bad_files(tmp_path / "src"))
    name = unique_name()
    runner = CliRunner()
    out = runner.invoke(main, ["catalog", "ingest", str(tmp_path / "src"), "--name", name, "--layout", "imagefolder",
                               "--split", "train=0.5,test=0.5"])
    assert out.exit_code == 0, out.output
    ref = out.output.strip().splitlines()[-1]
    assert ref.startswith(f"{name}@") and "skipped zero-size" in out.output and "b/empty.png" in out.output

    show = runner.invoke(main, ["catalog", "show", ref])
    assert show.exit_code == 0 and f"{n_good} images" in show.output and "train" in show.output

    verify = runner.invoke(main, ["catalog", "verify", ref])
    assert verify.exit_code == 0 and f"{n_good} objects, 0 problem(s)" in verify.output

    exported = runner.invoke(main, ["catalog", "export", ref, str(tmp_path / "out"), "--select", "label=a"])
    assert exported.exit_code == 0, exported.output
    manifest = cat.manifest(ref)
    files = sorted((tmp_path / "out").rglob("*.png"))
    assert {f.stem for f in files} == {r.sha256 for r in manifest.records if r.label_name == "a"}
    assert all(hashlib.sha256(f.read_bytes()).hexdigest() == f.stem for f in files)
    assert (tmp_path / "out" / "manifest.json").exists()

    same = runner.invoke(main, ["catalog", "disjoint", ref, ref, "--a", "split=train", "--b", "split=test"])
    assert same.exit_code == 0 and "disjoint: no shared patient" in same.output
    leak = runner.invoke(main, ["catalog", "disjoint", ref, ref, "--a", "label=a", "--b", "split=test"])
    assert leak.exit_code == 1 and "NOT disjoint" in leak.output

    # one tampered and one deleted object: verify names both and fails
    victims = manifest.records[:2]
    cat.store.put_bytes(cat.blob_key(victims[0].sha256), b"forged", metadata={"sha256": victims[0].sha256})
    cat.store.delete_prefix(cat.blob_key(victims[1].sha256))
    broken = runner.invoke(main, ["catalog", "verify", ref])
    assert broken.exit_code == 1 and "2 problem(s)" in broken.output
    assert "fails its sha256 check" in broken.output and "is missing" in broken.output
    for victim in victims:
        assert cat.store.uri(cat.blob_key(victim.sha256)) in broken.output


@pytest.mark.stack
def test_cli_bad_input_is_one_clear_line(tmp_path: Path) -> None:
    imagefolder_with_bad_files(tmp_path)
    runner = CliRunner()
    cases = [
        (["--name", "Bad Name", "--layout", "imagefolder"], "dataset name 'Bad Name' is invalid"),
        (["--name", "x", "--layout", "imagefolder", "--merge", "A=a,zz"], "label 'zz' is not a class"),
        (["--name", "x", "--layout", "imagefolder", "--split", "train=0.9"], "sum to 1"),
        (["--name", "x", "--layout", "csv"], "CSV"),
    ]
    for args, message in cases:
        out = runner.invoke(main, ["catalog", "ingest", str(tmp_path), *args])
        assert out.exit_code != 0 and message in out.output, (args, out.output)
        assert "Traceback" not in out.output


@pytest.mark.stack
def test_cli_phantom_with_knee_preprocessing_scores_its_detectors(tmp_path: Path, cat: Catalog) -> None:
    name = unique_name()
    out = CliRunner().invoke(main, [
        "catalog", "phantom", "--n", "60", "--size", "210", "--seed", "4", "--name", name,
        "--preprocess", "knee", "--focus-sweep", "--report-dir", str(tmp_path / "report"),
    ])
    assert out.exit_code == 0, out.output
    manifest = cat.manifest(out.output.strip().splitlines()[-1])
    assert manifest.classes == ["KL0", "KL1", "KL2", "KL3", "KL4"] and len(manifest.records) == 60
    assert "detector lateral_flip" in out.output and "vs truth 'mirrored'" in out.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["detectors"]["lateral_flip"]["n"] == 60 and report["detectors"]["lateral_flip"]["accuracy"] >= 0.95
    assert sorted(p.name for p in (tmp_path / "report").glob("focus-*.png")) == [
        "focus-0-175.png", "focus-175-350.png", "focus-350-525.png", "focus-525-up.png"]
    assert {r.split for r in manifest.records} <= {"train", "val", "test"}
    assert all(o == 0 for o in report["patient_overlap_between_splits"].values())


# -- crashes ------------------------------------------------------------------------------
def big_tree(root: Path, n: int = 400) -> Path:
    for i in range(n):
        save(root / ("x" if i % 2 else "y") / f"{i:04d}.png", noise(1000 + i, size=96))
    return root


def ingest_until_storing(src: Path, name: str, env: dict[str, str]) -> subprocess.Popen:
    """Start the CLI ingest and return once it reports its first stored images.

    ``--verbose`` off a terminal: the store bar prints a line per 5 % (not per 30 s)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "--verbose", "catalog", "ingest", str(src), "--name", name,
         "--layout", "imagefolder"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    for line in proc.stdout:
        if line.startswith("ingest: store:"):
            done, total = map(int, line.split()[2].split("/"))
            assert done < total, "the upload finished before the test could interrupt it"
            return proc
    raise AssertionError(f"ingest never started storing (exit {proc.wait()})")


@pytest.mark.stack
def test_killed_ingest_leaves_no_version_and_a_retry_succeeds(tmp_path: Path, cat: Catalog) -> None:
    src, name = big_tree(tmp_path), unique_name()
    proc = ingest_until_storing(src, name, dict(os.environ))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert name not in cat.datasets()
    assert list(cat.store.list_keys(f"{PREFIX}/datasets/{name}/")) == []
    with pytest.raises(CatalogError, match="does not exist"):
        cat.resolve(name)

    retry = CliRunner().invoke(main, ["catalog", "ingest", str(src), "--name", name, "--layout", "imagefolder"])
    assert retry.exit_code == 0, retry.output
    assert cat.verify(name).ok and len(cat.manifest(name).records) == 400


@pytest.mark.stack
def test_killed_object_store_mid_ingest_then_retry(tmp_path: Path, s3_only) -> None:
    settings, env, local = s3_only
    src, name = big_tree(tmp_path), unique_name()
    proc = ingest_until_storing(src, name, {**os.environ, **env})
    weed = local.process("seaweedfs")
    procs = [weed, *weed.children(recursive=True)]
    for p in procs:
        p.kill()
    psutil.wait_procs(procs, timeout=30)  # reaps the child, so the stack sees it gone
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1 and "cannot reach the object store" in output, output

    local.up(progress=quiet, only=["seaweedfs"])
    cat = Catalog(ObjectStore(settings))
    assert name not in cat.datasets()
    retried = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "catalog", "ingest", str(src), "--name", name, "--layout", "imagefolder"],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=300,
    )
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert cat.verify(name).ok and len(cat.manifest(name).records) == 400
