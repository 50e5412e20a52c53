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


def test_markdown_table_has_one_row_per_measure() -> None:
    rows = [run_all.Row("a", "1", "2", 0.5, "≥ 0.6", False), run_all.Row("b", "x", "y", None, "0 errors", True)]
    lines = run_all.markdown(rows).splitlines()
    assert lines[0] == "| measure | value | limit or reference | ratio | goal | pass |"
    assert lines[2] == "| a | 1 | 2 | 0.5 | ≥ 0.6 | **no** |" and lines[3] == "| b | x | y | – | 0 errors | yes |"
