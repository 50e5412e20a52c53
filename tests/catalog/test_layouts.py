"""Source layouts: items, classes, patients, splits and problems from small fixture trees."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.catalog.layouts import (
    CHEN_CLASSES,
    LAYOUTS,
    MURA_CLASSES,
    MURA_DIR,
    LayoutError,
    Scan,
    scan,
    scan_chen_kl,
    scan_csv,
    scan_imagefolder,
    scan_mura,
)


def _image(path: Path) -> Path:
    """A tiny real image; the suffix picks PNG or JPEG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)
    return path


def _junk(path: Path) -> Path:
    """A non-image file (text), like .DS_Store or Thumbs.db in a real export."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not an image")
    return path


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


def _problems(result: Scan) -> dict[str, str]:
    return {p.rel_path: p.kind for p in result.problems}


def test_imagefolder_items_classes_and_ignored_files(tmp_path: Path) -> None:
    labelled = {"dog/a.png": "dog", "cat/b.JPG": "cat", "cat/deep/er/c.jpeg": "cat"}
    for rel in labelled:
        _image(tmp_path / rel)
    for rel in ["dog/.hidden.png", "dog/.cache/d.png", ".trash/e.png"]:
        _image(tmp_path / rel)
    for rel in ["dog/.DS_Store", "dog/Thumbs.db", "cat/notes.txt", "readme.txt"]:
        _junk(tmp_path / rel)
    _image(tmp_path / "stray.png")

    result = scan_imagefolder(tmp_path)

    assert result.layout == "imagefolder" and result.root == tmp_path
    assert [i.rel_path for i in result.items] == sorted(labelled)
    assert {i.rel_path: i.label_name for i in result.items} == labelled
    assert all(i.path == tmp_path / i.rel_path and i.path.is_absolute() for i in result.items)
    assert all(i.patient_id is None and i.split is None for i in result.items)
    assert result.classes == sorted(set(labelled.values()))
    assert _problems(result) == {"stray.png": "unlabelled"}


@pytest.mark.parametrize("names", [["10", "2", "1"], ["10", "2", "b", "a"]])
def test_imagefolder_class_order_is_natural_only_for_integers(tmp_path: Path,
                                                             names: list[str]) -> None:
    for name in names:
        _image(tmp_path / name / "x.png")
    numeric = all(n.isdigit() for n in names)
    expected = sorted(names, key=int) if numeric else sorted(names)
    assert scan_imagefolder(tmp_path).classes == expected


@pytest.mark.parametrize(("regex", "stem", "expected"), [
    (r"^(\w)(?P<patient>\d+)_", "p42_7", "42"),     # named group wins over group 1
    (r"_(\d+)$", "p42_7", "7"),                     # else group 1
    (r"p\d+", "xp42_7", "p42"),                     # else the whole match
    (r"^q(\d+)", "p42_7", None),                    # no match
])
def test_imagefolder_patient_regex(tmp_path: Path, regex: str, stem: str,
                                   expected: str | None) -> None:
    _image(tmp_path / "c" / f"{stem}.png")
    [item] = scan(tmp_path, "imagefolder", patient_regex=regex).items
    assert item.patient_id == expected


def test_directory_layout_errors_name_the_source(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(LayoutError, match=re.escape(str(missing))):
        scan_imagefolder(missing)
    a_file = _junk(tmp_path / "file.txt")
    with pytest.raises(LayoutError, match="not a directory"):
        scan_chen_kl(a_file)
    with pytest.raises(LayoutError, match=r"patient regex '\(unclosed'"):
        scan_imagefolder(tmp_path, patient_regex="(unclosed")


def test_scan_dispatches_and_rejects_unknown_layouts(tmp_path: Path) -> None:
    _image(tmp_path / "c" / "x.png")
    assert scan(tmp_path, "imagefolder") == scan_imagefolder(tmp_path)
    with pytest.raises(LayoutError) as err:
        scan(tmp_path, "dicomdir")
    assert "dicomdir" in str(err.value)
    assert all(name in str(err.value) for name in LAYOUTS)


def test_chen_kl_items_splits_and_patients(tmp_path: Path) -> None:
    files = {  # rel_path -> (label, split, patient)
        "train/0/9003175_1.png": ("KL0", "train", "9003175"),
        "train/4/9011115L.png": ("KL4", "train", "9011115"),
        "valid/2/9000099R.jpg": ("KL2", "val", "9000099"),
        "test/1/knee_12.png": ("KL1", "test", None),
    }
    for rel in files:
        _image(tmp_path / rel)
    _image(tmp_path / "auto_test" / "0" / "9003175_1.png")   # not a split: left alone
    _image(tmp_path / "train" / "0" / ".9003175_2.png")
    _junk(tmp_path / "train" / "0" / "Thumbs.db")

    result = scan(tmp_path, "chen-kl")

    assert result.classes == list(CHEN_CLASSES) == [f"KL{g}" for g in range(5)]
    assert {i.rel_path: (i.label_name, i.split, i.patient_id) for i in result.items} == files
    assert [i.rel_path for i in result.items] == sorted(files)
    assert result.problems == []


def test_chen_kl_images_outside_grade_folders_are_unlabelled(tmp_path: Path) -> None:
    _image(tmp_path / "train" / "3" / "9003175_1.png")
    outside = ["train/5/9003175_2.png", "train/9003175_3.png", "test/extra/9003175_4.png"]
    for rel in outside:
        _image(tmp_path / rel)
    result = scan_chen_kl(tmp_path)
    assert [i.rel_path for i in result.items] == ["train/3/9003175_1.png"]
    assert _problems(result) == dict.fromkeys(outside, "unlabelled")


def test_chen_kl_patient_regex_override_and_missing_splits(tmp_path: Path) -> None:
    _image(tmp_path / "val" / "1" / "OAI-9003175-L.png")
    [item] = scan_chen_kl(tmp_path, patient_regex=r"OAI-(\d+)").items
    assert (item.patient_id, item.split) == ("9003175", "val")
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    with pytest.raises(LayoutError, match=re.escape(str(empty))):
        scan_chen_kl(empty)


def _study(split: str, part: str, patient: str, study: str) -> str:
    return f"{MURA_DIR}/{split}/{part}/{patient}/{study}/"


def _mura(base: Path, images: dict[str, list[str]], labels: dict[str, list[list[str]]]) -> Path:
    """MURA tree under ``base``: ``images[prefix]`` rows (created on disk unless they contain
    'absent') and ``labels[prefix]`` labeled-studies rows."""
    for prefix in ("train", "valid"):
        rows = images.get(prefix, [])
        for rel in rows:
            if "absent" not in rel:
                _image(base / rel)
        _write_csv(base / MURA_DIR / f"{prefix}_image_paths.csv", [[r] for r in rows])
        if prefix in labels:
            _write_csv(base / MURA_DIR / f"{prefix}_labeled_studies.csv", labels[prefix])
    return base


@pytest.mark.parametrize("point_at_mura_dir", [False, True])
def test_mura_items_labels_and_attributes(tmp_path: Path, point_at_mura_dir: bool) -> None:
    elbow = _study("train", "XR_ELBOW", "patient00011", "study1_negative")
    hand = _study("valid", "XR_HAND", "patient11185", "study2_positive")
    unlisted = _study("train", "XR_WRIST", "patient00020", "study1_positive")
    images = {"train": [elbow + "image1.png", elbow + "image2.png", unlisted + "image1.png"],
              "valid": [hand + "image1.png"]}
    _mura(tmp_path, images, {"train": [[elbow, "0"]], "valid": [[hand, "1"]]})

    result = scan_mura(tmp_path / MURA_DIR if point_at_mura_dir else tmp_path)

    assert result.root == tmp_path and result.classes == list(MURA_CLASSES)
    assert result.problems == []
    by_rel = {i.rel_path: i for i in result.items}
    assert sorted(by_rel) == sorted(images["train"] + images["valid"])
    for rel, item in by_rel.items():
        _, split, part, patient, study, _ = rel.split("/")
        assert item.path == tmp_path / rel
        assert item.split == {"train": "train", "valid": "val"}[split]
        assert item.patient_id == patient
        assert item.attributes == {"body_part": part, "study": study.split("_")[0]}
        assert item.label_name == study.split("_")[1]   # the CSV agrees / folder fallback


def test_mura_problems(tmp_path: Path) -> None:
    good = _study("train", "XR_ELBOW", "patient00011", "study1_negative")
    clash = _study("train", "XR_ELBOW", "patient00012", "study1_negative")
    bare = _study("valid", "XR_HAND", "patient00013", "study1")
    images = {"train": [good + "image1.png", good + "image1.png", clash + "image1.png",
                        good + "absent.png", "elsewhere/image1.png"],
              "valid": [bare + "image1.png"]}
    labels = [[good, "0"], [clash, "1"], [good, "maybe"]]
    _mura(tmp_path, images, {"train": labels, "valid": [[good, "0"]]})

    result = scan_mura(tmp_path)

    assert [i.rel_path for i in result.items] == [good + "image1.png"]
    assert _problems(result) == {
        good + "image1.png": "duplicate",
        clash + "image1.png": "unlabelled",
        good + "absent.png": "missing",
        "elsewhere/image1.png": "unlabelled",
        bare + "image1.png": "unlabelled",
        f"{MURA_DIR}/train_labeled_studies.csv:3": "unlabelled",
    }
    [conflict] = [p for p in result.problems if p.rel_path == clash + "image1.png"]
    assert "positive" in conflict.reason and "negative" in conflict.reason


def test_mura_without_labeled_studies_uses_folder_names(tmp_path: Path) -> None:
    study = _study("train", "XR_HAND", "patient00001", "study3_positive")
    _mura(tmp_path, {"train": [study + "image1.png"]}, {})
    result = scan_mura(tmp_path)
    assert [i.label_name for i in result.items] == ["positive"]
    assert _problems(result) == {f"{MURA_DIR}/{p}_labeled_studies.csv": "missing"
                                 for p in ("train", "valid")}


def test_mura_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match=re.escape(MURA_DIR)):
        scan_mura(tmp_path)
    _mura(tmp_path, {}, {})
    (tmp_path / MURA_DIR / "valid_image_paths.csv").unlink()
    with pytest.raises(LayoutError, match=r"valid_image_paths\.csv"):
        scan_mura(tmp_path)
    with pytest.raises(LayoutError, match="patient"):
        scan(tmp_path, "mura", patient_regex=r"(\d+)")


def test_csv_items_splits_patients_and_attributes(tmp_path: Path) -> None:
    outside = _image(tmp_path / "elsewhere" / "z.png")
    rows = [  # path, label, patient_id, split, site
        ["imgs/a.png", "effusion", "p1", "train", "north"],
        ["./imgs/b.jpg", "normal", "", "valid", ""],
        ["c.jpeg", "normal", "p2", "", "south"],
        [str(outside), "effusion", "p3", "test", ""],
    ]
    for row in rows[:3]:
        _image(tmp_path / "data" / row[0])
    table = _write_csv(tmp_path / "data" / "labels.csv",
                       [["path", "label", "patient_id", "split", "site"], *rows])

    result = scan(table, "csv")

    assert result.root == table.parent and result.problems == []
    assert result.classes == sorted({row[1] for row in rows})
    expected = {
        "imgs/a.png": ("effusion", "p1", "train", {"site": "north"}),
        "imgs/b.jpg": ("normal", None, "val", {}),
        "c.jpeg": ("normal", "p2", None, {"site": "south"}),
        outside.as_posix(): ("effusion", "p3", "test", {}),
    }
    got = {i.rel_path: (i.label_name, i.patient_id, i.split, i.attributes) for i in result.items}
    assert got == expected
    assert all(i.path.is_file() for i in result.items)


def test_csv_problems_name_rows_and_files(tmp_path: Path) -> None:
    _image(tmp_path / "a.png")
    _image(tmp_path / "b.png")
    rows = [
        ["a.png", "1", "train"],    # line 2
        ["", "1", ""],              # line 3: no path
        ["b.png", "", ""],          # line 4: no label
        ["b.png", "2", "holdout"],  # line 5: bad split
        ["a.png", "2", ""],         # line 6: duplicate of line 2
        ["gone.png", "3", ""],      # line 7: not on disk
    ]
    table = _write_csv(tmp_path / "labels.csv", [["path", "label", "split"], *rows])
    result = scan_csv(table, patient_regex=r"^(\w)")
    assert [(i.rel_path, i.patient_id) for i in result.items] == [("a.png", "a")]
    # every label a row declares is a class, even when its file is missing
    assert result.classes == sorted({label for path, label, _ in rows if path and label})
    assert _problems(result) == {
        "labels.csv:3": "unlabelled", "labels.csv:4": "unlabelled",
        "labels.csv:5": "unlabelled", "labels.csv:6": "duplicate", "gone.png": "missing",
    }
    assert "holdout" in next(p.reason for p in result.problems if p.rel_path == "labels.csv:5")


def test_csv_classes_are_natural_when_integer(tmp_path: Path) -> None:
    labels = ["10", "2", "1", "2"]
    rows = [[f"{n}.png", label] for n, label in enumerate(labels)]
    for path, _ in rows:
        _image(tmp_path / path)
    result = scan_csv(_write_csv(tmp_path / "t.csv", [["path", "label"], *rows]))
    assert result.classes == sorted(set(labels), key=int)


@pytest.mark.parametrize("missing", ["path", "label"])
def test_csv_without_required_column(tmp_path: Path, missing: str) -> None:
    header = [c for c in ("path", "label", "split") if c != missing]
    table = _write_csv(tmp_path / "bad.csv", [header, ["x"] * len(header)])
    with pytest.raises(LayoutError) as err:
        scan_csv(table)
    assert repr(missing) in str(err.value) and str(table) in str(err.value)


def test_csv_missing_or_empty_file(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match=r"nope\.csv"):
        scan_csv(tmp_path / "nope.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(LayoutError, match="header"):
        scan_csv(empty)
