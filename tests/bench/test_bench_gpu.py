"""`make bench-gpu`: skips cleanly without a GPU; its table judges each row against the right limit
and generation against the chest paper's P100 rate."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from infra.settings import PROJECT_ROOT

BENCH = PROJECT_ROOT / "benchmarks"


@pytest.fixture(scope="module")
def gpu():
    # benchmarks/ is scripts importing their siblings by bare name (_common, run_all, …).
    sys.path.insert(0, str(BENCH))
    try:
        import gpu as module

        yield module
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the script would run the benchmark")
def test_without_a_gpu_it_skips_with_a_reason_and_writes_json(tmp_path) -> None:
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(BENCH / "gpu.py"), "--out", str(out)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "bench-gpu: skipped: no CUDA GPU: torch.cuda.is_available() is False" in proc.stdout
    report = json.loads(out.read_text())
    assert report["skipped"] is True and "torch.cuda.is_available() is False" in report["reason"]


def _variant(img_s: float) -> dict:
    return {"img_s": img_s}


def test_table_judges_variants_against_their_precision_and_the_paper(gpu) -> None:
    assert gpu.PAPER["img_h"] == 67_925 and gpu.PAPER["img_s"] == pytest.approx(18.87, abs=0.01)  # Han et al. 2020
    limits = {"fp32": 50_000.0, "tf32": 400_000.0, "bf16": 800_000.0}
    chest = {"spec": "cpggan-chest@256", "size": 256, "batch": 64, "gflop_per_image": 50.0,
             "variants": {"fp32": _variant(4000.0), "channels_last+bf16": _variant(8000.0),
                          "bf16": {"error": "RuntimeError: no kernel"}},
             "generation": {"variant": "channels_last+bf16", "img_s": 1887.0, "ratio_to_paper": 1887.0 / gpu.PAPER["img_s"]}}
    train = {"arch": "wgan-gp-knee", "batch": 32, "critic_steps": 3, "gflop_per_image": 100.0,
             "variants": {"fp32": _variant(1000.0), "channels_last+bf16": _variant(5000.0)}}
    inc = {"size": 64, "batch": 50, "extracted": "channels_last", "gflop_per_image": 10.0,
           "variants": {"channels_last": {"img_s": 30_000.0, "precision": "fp32"},
                        "nchw": {"img_s": 20_000.0, "precision": "fp32"}}}
    for row in (chest, train, inc):
        gpu.judge(row["variants"], row["gflop_per_image"], limits)
    report = {"device_name": "NVIDIA H200", "matmul_gflops": limits, "generator": [chest], "train": [train],
              "inception": inc}
    gen_row, paper_row, train_row, inc_row = gpu.table(report)
    # fastest variant, bf16 limit: 8000 img/s ÷ (800 TFLOP/s ÷ 50 GFLOP) = 0.5
    assert "best: channels_last+bf16" in gen_row.measure and gen_row.ratio == pytest.approx(0.5)
    assert gen_row.passed is False and "bf16 failed" in gen_row.value
    assert paper_row.ratio == pytest.approx(100.0, rel=1e-3) and paper_row.passed is True
    assert "18.9 img/s" in paper_row.measure and "67,925 img/h" in paper_row.reference
    # the GPU training row is channels_last+bf16 (what GanTrainConfig.amp trains), not the fastest fp32 row
    assert train_row.ratio == pytest.approx(5000 * 100 / 800_000) and "fp32 1,000 = 0.25" in train_row.value
    # float32 is judged against the better of fp32 and TF32 (cuDNN runs fp32 convolutions in TF32)
    assert inc_row.ratio == pytest.approx(30_000 * 10 / 400_000) and inc_row.passed is True
