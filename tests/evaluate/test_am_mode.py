"""``synthray eval am-mode``: AM and Mode scores (knee-MRI paper 001, Eqs. 4-5) under a registered
domain classifier, against a hand computation; and the paper's recipe end to end: a classifier
trained on NIfTI slice index (``train classifier --label-from attribute=slice_index``) whose
training split gives p(y*).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from infra.settings import Settings
from services.cli.main import main

pytestmark = pytest.mark.stack

LEVELS = (10, 60, 128, 200, 250, 90)  # grey values of the six synthetic images
PRIOR = (0.5, 0.3, 0.2)


def _toy_classifier():
    """3 classes; logits = w · mean(x) + b with x = v / 127.5 - 1 for a flat image of value v."""
    from training.nets.classifier import ImageClassifier

    backbone = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 3))
    with torch.no_grad():
        backbone[2].weight.copy_(torch.tensor([[4.0], [0.0], [-4.0]]))
        backbone[2].bias.copy_(torch.tensor([0.0, 1.0, 0.0]))
    return ImageClassifier(backbone, ["s0", "s1", "s2"], image_size=8)


def _by_hand(levels, prior) -> tuple[float, float]:
    """Eq. 4 and Eq. 5 written out with plain loops (natural logs)."""
    rows = []
    for v in levels:
        x = v / 127.5 - 1
        logits = [4.0 * x, 1.0, -4.0 * x]
        e = [np.exp(t) for t in logits]
        rows.append([t / sum(e) for t in e])
    k, n = len(prior), len(rows)
    marginal = [sum(r[j] for r in rows) / n for j in range(k)]
    kl_prior = sum(prior[j] * np.log(prior[j] / marginal[j]) for j in range(k))
    entropy = sum(-sum(r[j] * np.log(r[j]) for j in range(k)) for r in rows) / n
    kl_rows = sum(sum(r[j] * np.log(r[j] / marginal[j]) for j in range(k)) for r in rows) / n
    return kl_prior + entropy, float(np.exp(kl_rows - kl_prior))


def test_am_mode_of_a_toy_classifier_matches_the_hand_computation(stack: Settings, tmp_path: Path) -> None:
    from training.registry.classifiers import log_classifier

    name = f"classifier-toy-{uuid.uuid4().hex[:8]}"
    log_classifier(_toy_classifier(), name, alias="champion", settings=stack)
    for i, v in enumerate(LEVELS):
        Image.fromarray(np.full((8, 8), v, np.uint8)).save(tmp_path / f"img{i}.png")
    runner = CliRunner()
    out = runner.invoke(main, ["eval", "am-mode", "--images", str(tmp_path), "--classifier", f"models:/{name}@champion",
                               "--prior", ",".join(map(str, PRIOR)), "--json"])
    assert out.exit_code == 0, out.output
    got = json.loads(out.output)
    am, mode = _by_hand(LEVELS, PRIOR)
    assert got["am"] == pytest.approx(am, abs=1e-6) and got["mode"] == pytest.approx(mode, abs=1e-6)
    assert (got["n"], got["num_classes"], got["classes"]) == (6, 3, ["s0", "s1", "s2"])

    for args, words in ((["--prior", "0.5,0.5"], "the prior has 2 entries"),
                        ([], "carries no dataset tag"),
                        (["--prior", "a,b,c"], "--prior")):
        bad = runner.invoke(main, ["eval", "am-mode", "--images", str(tmp_path), "--classifier",
                                   f"models:/{name}@champion", *args])
        assert bad.exit_code != 0 and words in bad.output and "Traceback" not in bad.output, (args, bad.output)


def _volumes(root: Path, count: int = 4, slices: int = 6) -> Path:
    """``count`` NIfTI volumes whose axial slices are discs growing with the slice index."""
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:24, 0:24] - 11.5
    for v in range(count):
        volume = np.zeros((24, 24, slices), np.int16)
        for z in range(slices):
            # each volume's disc sits elsewhere, so no slice duplicates another volume's
            volume[..., z] = np.where(np.hypot(yy - v, xx + v) < 4 + 1.3 * z, 800, 0)
        nib.save(nib.Nifti1Image(volume, np.eye(4)), root / f"sub-{v:02d}.nii.gz")
    return root


def test_slice_index_domain_classifier_gives_the_prior(stack: Settings, tmp_path: Path) -> None:
    from training.catalog.ingest import IngestOptions, ingest
    from training.catalog.selection import catalog
    from training.evaluate.am_mode import load_domain_classifier
    from training.evaluate.diversity import am_score, mode_score

    src = _volumes(tmp_path / "mri")
    (tmp_path / "mri" / "salt.key").write_text("ab" * 16)
    options = IngestOptions(name=f"mri-{uuid.uuid4().hex[:8]}", layout="nifti", preset="none",
                            fractions={"train": 0.5, "val": 0.25, "test": 0.25},
                            layout_options={"id_salt_file": tmp_path / "mri" / "salt.key"})
    manifest = ingest(src, options, catalog(stack), lambda _: None).manifest
    runner = CliRunner()
    bad = runner.invoke(main, ["train", "classifier", "--dataset", str(manifest.ref), "--arch", "small-cnn",
                               "--label-from", "attribute=slice_no"])
    assert bad.exit_code != 0 and "has no attribute 'slice_no'" in bad.output, bad.output
    out = runner.invoke(main, ["train", "classifier", "--dataset", str(manifest.ref), "--arch", "small-cnn",
                               "--epochs", "1", "--label-from", "attribute=slice_index"])
    assert out.exit_code == 0, out.output
    uri = next(w.strip("()") for w in out.output.split() if w.strip("()").startswith("models:/") and "@" in w)
    domain = load_domain_classifier(uri, stack)
    slices = sorted({r.attributes["slice_index"] for r in manifest.records}, key=int)
    assert domain.classes == slices and domain.label_from == "attribute=slice_index"

    from training.classify.trainer import to_8bit

    images = to_8bit(catalog(stack).read_pixels(manifest.select(split="test")))  # 16-bit slices, as trained
    folder = tmp_path / "fake"
    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i}.png")
    got = json.loads(runner.invoke(main, ["eval", "am-mode", "--images", str(folder), "--classifier", uri,
                                          "--json"]).output)
    train = [r.attributes["slice_index"] for r in manifest.select(split="train")]
    prior = np.array([train.count(s) for s in slices]) / len(train)
    assert got["prior"] == pytest.approx(prior.tolist(), abs=1e-12)
    probs = domain.model.predict_proba(images)
    assert got["am"] == pytest.approx(am_score(probs, prior), abs=1e-9)
    assert got["mode"] == pytest.approx(mode_score(probs, prior), abs=1e-9)
