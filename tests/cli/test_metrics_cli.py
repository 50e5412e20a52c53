"""``synthray eval fid|memorization|diversity`` on the real stack, and the folder reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from infra.settings import Settings
from services.cli.main import main
from training.catalog.selection import publish_phantom
from training.evaluate import reference_statistics
from training.evaluate.images import load_image_folder
from training.catalog.phantom import PhantomSpec, make_phantom


def _write(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:04d}.png")
    return folder


@pytest.fixture(scope="module")
def fakes(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, Path]:
    images = np.stack([img.pixels for img in make_phantom(20, PhantomSpec(size=64, seed=4321))])
    return images, _write(tmp_path_factory.mktemp("fakes") / "flat", images)


# -- the folder reader (no stack) -----------------------------------------------------------------


def test_folder_reader_keeps_pixels_and_reads_class_subfolders(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (3, 20, 24), dtype=np.uint8)
    assert np.array_equal(load_image_folder(_write(tmp_path / "g", gray)).images, gray)
    rgb = rng.integers(0, 256, (2, 20, 24, 3), dtype=np.uint8)
    assert np.array_equal(load_image_folder(_write(tmp_path / "c", rgb), n=1).images, rgb[:1])
    _write(tmp_path / "cls" / "KL1", gray[:2])
    _write(tmp_path / "cls" / "KL0", gray[2:])
    folder = load_image_folder(tmp_path / "cls")
    assert folder.class_names == ["KL0", "KL1"] and folder.labels.tolist() == [0, 1, 1]
    assert np.array_equal(folder.images, gray[[2, 0, 1]])


def test_folder_reader_names_the_bad_file(tmp_path: Path) -> None:
    _write(tmp_path / "mixed", np.zeros((2, 20, 20), np.uint8))
    Image.fromarray(np.zeros((21, 20), np.uint8)).save(tmp_path / "mixed" / "9999.png")
    with pytest.raises(ValueError, match=r"9999\.png: size 20x21 differs"):
        load_image_folder(tmp_path / "mixed")
    (tmp_path / "deep").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(tmp_path / "deep" / "a.png")
    with pytest.raises(ValueError, match=r"a\.png: I;16 image"):
        load_image_folder(tmp_path / "deep")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        load_image_folder(tmp_path / "empty")
    with pytest.raises(ValueError, match="asked for 5 images, found 2"):
        load_image_folder(_write(tmp_path / "two", np.zeros((2, 8, 8), np.uint8)), n=5)


# -- the commands (stack) -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(stack: Settings) -> str:
    return str(publish_phantom(80, PhantomSpec(size=64, seed=5), name="phantom-metrics", settings=stack,
                               progress=lambda _: None).ref)


@pytest.mark.stack
def test_eval_fid_json_reports_n_weights_and_reference(dataset: str, stack: Settings, fakes) -> None:
    _, folder = fakes
    args = ["eval", "fid", "--reference", dataset, "--images", str(folder), "--n", "20", "--dims", "64",
            "--kid", "--precision-recall", "--json"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    out = json.loads(first.stdout)
    ref = reference_statistics(dataset, split="train", n=20, dims=64, settings=stack)
    assert out["fid"]["reference_key"] == ref.key
    assert (out["fid"]["n_real"], out["fid"]["n_fake"], out["fid"]["dims"]) == (20, 20, 64)
    assert out["fid"]["weights_sha256"] == ref.weights_sha256 and out["fid"]["fid"] > 0
    assert {"kid", "precision_recall"} <= set(out)
    again = CliRunner().invoke(main, args)
    assert "cache hit" in again.stderr and json.loads(again.stdout)["fid"]["fid"] == out["fid"]["fid"]


@pytest.mark.stack
def test_eval_fid_human_output_and_class_selection(dataset: str, fakes) -> None:
    _, folder = fakes
    result = CliRunner().invoke(main, ["eval", "fid", "--reference", f"{dataset}::KL0", "--split", "all",
                                       "--images", str(folder), "--dims", "64"])
    assert result.exit_code == 0, result.output
    assert "FID " in result.stdout and "n_fake=20" in result.stdout and "fid/reference/" in result.stdout


@pytest.mark.stack
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--reference", "Bad Name"], "dataset name 'Bad Name' is invalid"),
        (["--reference", "phantom-metrics::NOPE"], "class 'NOPE' is not in"),
        (["--reference", "phantom-metrics", "--n", "5000"], "n=5000 but dataset"),
        (["--reference", "a:b:c:d"], "NAME[@VER][:SUBSET][:CLASS]"),
        (["--reference", "phantom-metrics", "--model", "models:/x@champion"], "exactly one of --images"),
    ],
)
def test_eval_fid_bad_input_is_one_clear_line(dataset: str, fakes, args: list[str], message: str) -> None:
    _, folder = fakes
    result = CliRunner().invoke(main, ["eval", "fid", "--images", str(folder), "--dims", "64", *args])
    assert result.exit_code in (1, 2) and message in result.output, result.output
    assert "Traceback" not in result.output


@pytest.mark.stack
def test_eval_memorization_writes_artifacts(dataset: str, fakes, tmp_path: Path) -> None:
    _, folder = fakes
    result = CliRunner().invoke(main, ["eval", "memorization", "--reference", dataset, "--images", str(folder),
                                       "--dims", "64", "--top-k", "3", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "closer than the real 1st percentile" in result.stdout and "s3://" in result.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_fake"] == 20 and (tmp_path / "pairs.csv").exists()
    assert any(p.name.startswith("contact-") for p in tmp_path.iterdir())


@pytest.mark.stack
def test_eval_diversity_of_reference_and_folder(dataset: str, fakes, tmp_path: Path) -> None:
    images, _ = fakes
    _write(tmp_path / "KL0", images[:10])
    _write(tmp_path / "KL1", images[10:])
    folder = CliRunner().invoke(main, ["eval", "diversity", "--images", str(tmp_path), "--pairs", "50", "--json"])
    assert folder.exit_code == 0, folder.output
    out = json.loads(folder.stdout)
    assert out["n_pairs"] == 50 and out["levels"] == 3 and set(out["per_class"]) == {"0", "1"}
    assert 0 < out["mean"] < 1
    real = CliRunner().invoke(main, ["eval", "diversity", "--reference", dataset, "--pairs", "40"])
    assert real.exit_code == 0, real.output
    assert "MS-SSIM" in real.stdout and "40 same-class pairs" in real.stdout
    both = CliRunner().invoke(main, ["eval", "diversity", "--reference", dataset, "--images", str(tmp_path)])
    assert both.exit_code == 2 and "exactly one of" in both.output
