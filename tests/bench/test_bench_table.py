"""`make bench`'s table: each benchmark's JSON becomes rows with the right ratio, goal and verdict."""

from __future__ import annotations

import importlib.util
import sys

from infra.settings import PROJECT_ROOT

# benchmarks/ is scripts, not a package: load run_all.py by path (registered first, for its dataclasses).
_spec = importlib.util.spec_from_file_location("bench_run_all", PROJECT_ROOT / "benchmarks" / "run_all.py")
run_all = sys.modules.setdefault("bench_run_all", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(run_all)


def test_generator_row_compares_with_the_matmul_limit() -> None:
    report = {"arch": "wgan-gp-knee", "limit_img_s": 10.0, "matmul_gflops": 56.0, "gflop_per_image": 5.6,
              "best": {"variant": "channels_last", "img_s": 5.5, "ratio_to_limit": 0.55}}
    (row,) = run_all._generator(report)
    assert row.ratio == 0.55 and row.passed is False and "channels_last" in row.measure
    report["best"] |= {"img_s": 6.5, "ratio_to_limit": 0.65}
    assert run_all._generator(report)[0].passed is True


def test_http_rows_judge_ratio_errors_and_backpressure() -> None:
    lat = {"p50": 0.2, "p95": 0.5, "p99": 0.9}
    report = {"http_s": {"npz": 1.0, "png-zip": 1.5}, "in_process_s": 0.9, "ratio_npz": 0.9, "ratio_png_zip": 0.6,
              "load": {"clients": 10, "seconds": 60, "images_per_s": 40.0, "latency_s": lat, "requests": 900,
                       "errors": 0},
              "overload": {"clients": 200, "statuses": {"200": 50, "503": 400}, "retry_after_on_503": 400, "errors": 0},
              "serve_rss_mb": {"before": 900, "after": 950}, "recovery_s": 1.5}
    npz, png, load, overload = run_all._http(report)
    assert (npz.passed, png.passed, load.passed, overload.passed) == (True, False, True, True)
    report["overload"]["retry_after_on_503"] = 399  # one 503 without Retry-After fails the drill
    assert run_all._http(report)[3].passed is False
    # issue 30: npz ≥ 0.9 and png-zip ≥ 0.85, and the same two rows for the knee generator
    knee = {"arch": "wgan-gp-knee", "http_s": {"npz": 4.1, "png-zip": 4.3}, "in_process_s": 4.0,
            "ratio_npz": 0.89, "ratio_png_zip": 0.93}
    rows = run_all._http(report | {"ratio_png_zip": 0.85, "knee": knee})
    assert [(r.goal, r.passed) for r in rows[:4]] == [("≥ 0.9", True), ("≥ 0.85", True), ("≥ 0.9", False),
                                                      ("≥ 0.85", True)]
    assert "(wgan-gp-knee)" in rows[2].measure and len(rows) == 6


def test_markdown_table_has_one_row_per_measure() -> None:
    rows = [run_all.Row("a", "1", "2", 0.5, "≥ 0.6", False), run_all.Row("b", "x", "y", None, "0 errors", True)]
    lines = run_all.markdown(rows).splitlines()
    assert lines[0] == "| measure | value | limit or reference | ratio | goal | pass |"
    assert lines[2] == "| a | 1 | 2 | 0.5 | ≥ 0.6 | **no** |" and lines[3] == "| b | x | y | – | 0 errors | yes |"


def test_batch_row_is_batch_over_generation_alone() -> None:
    report = {"n": 8000, "shards": 8, "arch": "wgan-gp-knee-small", "batch_img_s": 300.0,
              "generation_alone_img_s": 400.0, "ratio": 0.75}
    (row,) = run_all._batch(report)
    assert row.ratio == 0.75 and row.passed is False and "8 shards" in row.measure
    assert run_all._batch(report | {"ratio": 0.9})[0].passed is True


def _faults() -> dict:
    return {
        "train": {"completed_epochs_lost": 0, "partial_epoch_replayed_s": 11.4, "recovery_s": 11.8,
                  "next_epoch_after_s": 27.0, "epoch_s": 21.8, "final_epoch": 4, "epochs": 4, "run_status": "FINISHED"},
        "s3-ingest": {"killed_at_blobs": 900, "n": 3000, "version_visible_after_outage": False, "retry_records": 3000,
                      "retry_bad_hashes": 0, "failed_after_kill_s": 0.01, "publish_error": "ObjectStoreUnavailable"},
        "s3-batch": {"state_during_outage": "unknown (503)", "manifest_visible_before_done": False, "resubmitted": True,
                     "shards_reused": 2, "manifest_count": 20000, "n": 20000, "bad_hashes": 0, "outage_s": 37.0,
                     "completed_after_restart_s": 39.0, "final_state": "succeeded"},
        "serve": {"failed_requests": 0, "requests": 418, "failed_attempts": 3, "new_replica_up_s": 7.1,
                  "max_latency_around_kill_s": 10.2, "p50_latency_s": 0.33},
    }


def test_fault_rows_pass_only_when_nothing_is_lost_or_half_written() -> None:
    rows = run_all._faults(_faults())
    assert [r.passed for r in rows] == [True, True, True, True]
    broken = _faults()
    broken["train"]["completed_epochs_lost"] = 1
    broken["s3-ingest"]["version_visible_after_outage"] = True
    broken["s3-batch"]["bad_hashes"] = 1
    broken["serve"]["failed_requests"] = 2
    assert [r.passed for r in run_all._faults(broken)] == [False, False, False, False]
    assert run_all._faults({"serve": _faults()["serve"]})[0].measure.startswith("fault: Synthesizer")


def test_inception_row_is_the_extracted_layout_against_the_matmul_limit() -> None:
    report = {"size": 64, "batch": 50, "limit_img_s": 16.5, "matmul_gflops": 189.0, "gflop_per_image": 11.42,
              "extracted": "channels_last",
              "rows": {"nchw": {"img_s": 8.4, "ratio_to_limit": 0.51},
                       "channels_last": {"img_s": 12.9, "ratio_to_limit": 0.78}}}
    (row,) = run_all._inception(report)
    assert row.ratio == 0.78 and row.passed is True and "channels_last" in row.measure
    assert "299" in row.measure and "11.42 GFLOP" in row.reference and row.goal == "≥ 0.75"
    report["rows"]["channels_last"]["ratio_to_limit"] = 0.74
    assert run_all._inception(report)[0].passed is False
    # JSON written before issue 30 (NCHW extraction, row "inference_mode") still tabulates
    old = {**report, "rows": {"inference_mode": {"img_s": 8.4, "ratio_to_limit": 0.51}}}
    del old["extracted"]
    assert run_all._inception(old)[0].ratio == 0.51


def test_train_limit_rows_are_fp32_against_the_step_flop_limit_with_variants_beside() -> None:
    variants = {"fp32": {"img_s": 17.3, "ratio_to_limit": 0.52}, "channels_last": {"img_s": 20.1, "ratio_to_limit": 0.61},
                "bf16": {"img_s": 30.2, "ratio_to_limit": 0.91}}
    report = {"threads": 1, "matmul_gflops": 92.5, "rows": [
        {"arch": "wgan-gp-knee-small", "batch": 32, "gflop_per_image": 2.801, "limit_img_s": 33.0, "variants": variants},
        {"arch": "wgan-gp-knee", "batch": 8, "gflop_per_image": 40.0, "limit_img_s": 2.3,
         "variants": {"fp32": {"img_s": 1.5, "ratio_to_limit": 0.65}}}]}
    small, knee = run_all._train_limit(report)
    assert small.ratio == 0.52 and small.passed is False and "wgan-gp-knee-small" in small.measure
    assert "bf16 30.2 img/s = 0.91" in small.value and "channels_last 20.1 img/s = 0.61" in small.value
    assert "2.801 GFLOP/image/step" in small.reference and "92 GFLOP/s" in small.reference
    assert knee.passed is True and "batch 8" in knee.measure and knee.value == "1.5 img/s"
    assert "train-limit" in run_all.BENCHES


def test_nearcopy_rows_are_filtered_over_unfiltered_per_preset() -> None:
    row = {"n": 64, "image_size": 64, "filtered_s": 2.6, "unfiltered_s": 0.2, "inception_s": 2.3, "query_s": 0.004,
           "ratio": 13.0}
    report = {"goal_ratio": 1.3, "presets": {"wgan-gp-knee-small": row, "wgan-gp-knee": row | {"ratio": 1.2}}}
    small, paper = run_all._nearcopy(report)
    assert small.ratio == 13.0 and small.passed is False and "wgan-gp-knee-small" in small.measure
    assert paper.passed is True and "n = 64" in paper.measure


def test_overhead_rows_judge_wall_over_in_step_per_selection_size() -> None:
    def run(images: int, ratio: float) -> dict:
        return {"arch": "dcgan-fracture-small", "images": images, "epochs": 10, "wall_img_s": 100.0 * ratio,
                "step_img_s": 100.0, "ratio": ratio, "goal": {100: 0.8, 1000: 0.9}[images]}

    report = {"runs": [run(100, 0.85), run(1000, 0.85)], "per_epoch_cadence": run(100, 0.2)}
    small, large, old = run_all._overhead(report)
    assert (small.passed, large.passed, old.passed) == (True, False, None)
    assert small.goal == "≥ 0.8" and large.goal == "≥ 0.9" and "1000 images" in large.measure
    assert old.ratio == 0.2 and "old cadence" in old.measure
