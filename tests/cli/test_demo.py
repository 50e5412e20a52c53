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
        sys.executable, "-m", "services.cli.main", "demo", "--images", "96", "--epochs", "1", "--steps-per-epoch", "3",
        "--fid-n", "24", "--batch-n", "4", "--seed", "7", "--out", str(out), "--max-floor-ratio", "1000",
    ]
    # stderr merged into stdout, in order, as a CI log (not a terminal) records them. Off a
    # terminal a bar prints only once its work has run SYNTHRAY_PROGRESS_LINE_EVERY_S (30 s by
    # default); the demo's training bar runs about 30 s here, so the default would make the bar's
    # line below a coin toss (CI, stop 35). 5 s is far below any Ray Train start.
    env = {**os.environ, "SYNTHRAY_PROGRESS_LINE_EVERY_S": "5"}
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=900)
        _check_demo(proc, out, stack)
    finally:
        # Serve holds about a CPU of the 2-CPU test cluster: left up by a failed check, it would
        # starve the later tests that need the whole cluster (DDP workers, Flower's site actors).
        from services.serving import deploy as serve

        serve.down(stack, progress=lambda _: None)


def _check_demo(proc: subprocess.CompletedProcess, out: Path, stack: Settings) -> None:
    log = proc.stdout
    assert proc.returncode == 0, log[-4000:]

    # A quiet console: a screenful of synthray's own lines, the summary last. No Ray Train
    # reports or worker-prefixed lines, no Serve access logs or batching warning, no MLflow links.
    lines = log.splitlines()
    print(log)  # on a failure, the whole console as a user saw it
    assert len(lines) <= 60, log
    assert re.fullmatch(r"\s+[\d.]+ s\s+total", lines[-1]) and "synthray demo summary" in "\n".join(lines[-25:]), log
    for noise in ("TrainingReport", "RayTrainWorker", "TrainController", "pid=", "max_batch_size", "View run",
                  "View experiment", "POST /v1/synthesize 200"):
        assert noise not in log, noise
    assert re.search(r"^train: \d+/3 step", log, re.M), log  # the training bar's line (rank 0's steps)

    # Every step announced itself and finished, and the summary lists each timing.
    for step in range(1, 8):
        assert f"== [{step}/7] " in proc.stdout
    assert len(re.findall(r"^\s+[\d.]+ s\s+\S", proc.stdout, re.M)) == 8  # 7 step timings and the total

    summary = dict(re.findall(r"^(FID curve|contact sheet|batch folder|dataset|model|FID|KID)\s+(.+)$",
                              proc.stdout, re.M))
    assert re.fullmatch(r"phantom-knee@[0-9a-f]{16}", summary["dataset"])
    assert summary["model"].startswith("models:/gan-phantom-knee-dcgan-knee-cpu@champion")
    fid = re.fullmatch(r"FID ([\d.]+), real-vs-real floor ([\d.]+) at n = 24 \(([\d.]+)× floor\) "
                       r"\(n_real=(\d+), n_fake=(\d+), epoch (\d+), EMA generator\)", summary["FID"])
    assert fid and float(fid[1]) > float(fid[2]) > 0 and fid[4] == fid[5] == "24" and fid[6] == "1", summary["FID"]
    assert re.match(r"[\d.]+, 95 % CI \[", summary["KID"])
    assert "fid: reference statistics from the cache" in proc.stdout  # step 2 computed it once
    assert "promotion bar: FID <= 1000 x floor" in proc.stdout
    sheet, curve = Path(summary["contact sheet"]), Path(summary["FID curve"])
    assert sheet.parent == curve.parent == out and Image.open(sheet).size[0] > 8 * 64
    assert Image.open(curve).format == "PNG"

    pngs = sorted(out.glob("*/*.png"))  # the batch folder's (the sheet and the curve sit beside it)
    assert len(pngs) == 4
    images = [np.asarray(Image.open(p)) for p in pngs]
    assert all(img.shape == (64, 64) and img.dtype == np.uint8 for img in images)
    assert Image.open(pngs[0]).text.get("Synthetic", "").lower() == "true"

    # The served images are the registered model's images for that seed.
    from training.registry.generators import load_generator

    expected = load_generator("models:/gan-phantom-knee-dcgan-knee-cpu@champion", settings=stack).generate(4, 7)
    assert np.array_equal(np.stack(images), expected)
