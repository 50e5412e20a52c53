"""The walking skeleton through the real CLI, on the private test stack.

This is `make demo` in miniature: same command, smaller numbers. It proves the seven steps
connect: catalog → Ray Train → FID → registry → Serve → PNGs on disk.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from infra.settings import Settings

pytestmark = pytest.mark.stack


def test_demo_end_to_end(stack: Settings, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    cmd = [
        sys.executable, "-m", "services.cli.main", "demo", "--images", "96", "--epochs", "1",
        "--fid-n", "24", "--batch-n", "4", "--seed", "7", "--out", str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]

    # Every step announced itself and finished, and the summary lists each timing.
    for step in range(1, 8):
        assert f"== [{step}/7] done in" in proc.stdout
    assert re.search(r"^\s+[\d.]+ s\s+total$", proc.stdout, re.M)

    summary = dict(re.findall(r"^(dataset|model|FID|batch folder)\s+(.+)$", proc.stdout, re.M))
    assert re.fullmatch(r"phantom-knee@[0-9a-f]{16}", summary["dataset"])
    assert summary["model"].startswith("models:/gan-phantom-knee-wgan-gp-knee-small@champion")
    fid = re.fullmatch(r"([\d.]+) with n_real=(\d+), n_fake=(\d+) \(epoch (\d+)\)", summary["FID"])
    assert fid and float(fid[1]) > 0 and fid[2] == fid[3] == "24" and fid[4] == "1"
    assert "fid: reference statistics from the cache" in proc.stdout  # training computed it once

    pngs = sorted(out.glob("*/*.png"))
    assert len(pngs) == 4
    images = [np.asarray(Image.open(p)) for p in pngs]
    assert all(img.shape == (64, 64) and img.dtype == np.uint8 for img in images)
    assert Image.open(pngs[0]).text.get("Synthetic", "").lower() == "true"

    # The served images are the registered model's images for that seed.
    from training.registry.generators import load_generator

    expected = load_generator("models:/gan-phantom-knee-wgan-gp-knee-small@champion", settings=stack).generate(4, 7)
    assert np.array_equal(np.stack(images), expected)

    from services.serving import deploy as serve

    serve.down(stack, progress=lambda _: None)
