"""``make bench``: run the benchmarks in one go on one machine and print one table of ratios.

Each benchmark is its own script (and process) writing JSON under ``out/bench/``; this driver
runs the selected ones in order (the local stack must be up: ``make bench`` starts it), then
reads their JSON and prints ``measure | value | limit or reference | ratio | goal | pass``.
The table is also written as ``bench-results.json`` and as Markdown (``out/bench/table.md``)
for ``docs/benchmarks.md``. Absolute numbers are context; the ratios from one run are the result.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "out" / "bench"


@dataclass
class Row:
    measure: str
    value: str
    reference: str
    ratio: float | None
    goal: str
    passed: bool | None


def _generator(r: dict) -> list[Row]:
    best = r["best"]
    return [Row(f"generator forward {r['arch']} (batch 64, {best['variant']})", f"{best['img_s']:.2f} img/s",
                f"{r['limit_img_s']:.2f} img/s = {r['matmul_gflops']:.0f} GFLOP/s ÷ {r['gflop_per_image']:.2f} GFLOP",
                best["ratio_to_limit"], "≥ 0.60", best["ratio_to_limit"] >= 0.6)]


_HTTP_GOALS = {"npz": 0.9, "png-zip": 0.85}  # issue 30


def _http(r: dict) -> list[Row]:
    rows = []
    for side in (r, r.get("knee")):
        if not side:
            continue
        arch = side.get("arch", r.get("arch"))
        rows += [Row(f"HTTP /v1/synthesize n=64 {fmt} vs in-process ({arch})", f"{side['http_s'][fmt]:.3f} s",
                     f"{side['in_process_s']:.3f} s in-process", side[key], f"≥ {_HTTP_GOALS[fmt]:g}",
                     side[key] >= _HTTP_GOALS[fmt])
                 for fmt, key in (("npz", "ratio_npz"), ("png-zip", "ratio_png_zip"))]
    load, over = r["load"], r["overload"]
    lat = load["latency_s"]
    rows.append(Row(f"load: {load['clients']} clients × {load['seconds']:.0f} s, mixed n",
                    f"p50/p95/p99 {lat['p50']:.3f}/{lat['p95']:.3f}/{lat['p99']:.3f} s, {load['images_per_s']:.1f} img/s",
                    f"{load['requests']} requests", None, "0 errors", load["errors"] == 0))
    n503 = int(over["statuses"].get("503", 0))
    rows.append(Row(f"overload: {over['clients']} clients, n=64", f"{n503} × 503 (Retry-After on {over['retry_after_on_503']}), "
                    f"{over['errors']} other errors", f"Serve RSS {r['serve_rss_mb']['before']:.0f} → "
                    f"{r['serve_rss_mb']['after']:.0f} MB", None, "503 + Retry-After, no 5xx, recovers",
                    n503 > 0 and over["errors"] == 0 and over["retry_after_on_503"] == n503 and r["recovery_s"] is not None))
    return rows


def _fid(r: dict) -> list[Row]:
    return [Row("FID value vs pytorch-fid CLI", f"{r['synthray_cold']['fid']:.6f}", f"{r['pytorch_fid_cli']['fid']:.6f}",
                r["fid_rel_diff_vs_cli"], "rel. diff ≤ 1e-4", r["fid_rel_diff_vs_cli"] <= 1e-4),
            Row(f"FID time, cached reference, 2 × {r['n_per_side']}", f"{r['synthray_cached_reference']['seconds']:.1f} s",
                f"{r['pytorch_fid_cli']['seconds']:.1f} s CLI", r["time_ratio_cached_reference"], "≤ 0.25",
                r["time_ratio_cached_reference"] <= 0.25)]


def _inception(r: dict) -> list[Row]:
    name = r.get("extracted", "inference_mode")  # JSON before issue 30: NCHW, named inference_mode
    used = r["rows"][name]
    return [Row(f"FID Inception forward ({r['size']}² → 299², batch {r['batch']}, as extracted: {name})",
                f"{used['img_s']:.1f} img/s", f"{r['limit_img_s']:.1f} img/s = {r['matmul_gflops']:.0f} GFLOP/s ÷ "
                f"{r['gflop_per_image']:.2f} GFLOP", used["ratio_to_limit"], "≥ 0.75", used["ratio_to_limit"] >= 0.75)]


def _train(r: dict) -> list[Row]:
    return [Row(f"Ray Train {r['ray_train']['workers']} workers vs plain loop ({r['arch']})",
                f"{r['ray_train']['steady_img_s']:.1f} img/s", f"{r['plain']['steady_img_s']:.1f} img/s plain",
                r["ratio_steady"], "≥ 0.8", r["ratio_steady"] >= 0.8)]


def _overhead(r: dict) -> list[Row]:
    rows = [Row(f"training wall vs in-step img/s, {x['arch']}, {x['images']} images ({x['epochs']} epochs, defaults)",
                f"{x['wall_img_s']:.1f} img/s wall", f"{x['step_img_s']:.1f} img/s in-step", x["ratio"],
                f"≥ {x['goal']:g}", x["ratio"] >= x["goal"]) for x in r["runs"]]
    if x := r.get("per_epoch_cadence"):
        rows.append(Row(f"same, old cadence (checkpoint + grid + report every epoch), {x['arch']}, {x['images']} images",
                        f"{x['wall_img_s']:.1f} img/s wall", f"{x['step_img_s']:.1f} img/s in-step", x["ratio"],
                        "context (no goal)", None))
    return rows


def _quality(r: dict) -> list[Row]:
    rows = []
    for rec in r["recipes"]:
        got = rec["reached"]
        value = (f"{got['train_s']:.0f} s ({got['steps']} steps), FID {got['fid']:.1f}" if got else
                 f"not reached in {rec['train_s']:.0f} s ({rec['steps']} steps); best FID {rec['best_fid']:.1f}")
        rows.append(Row(f"time to FID ≤ {r['factor']:g}× floor, {rec['arch']} (n = {r['n']}, 1 thread)", value,
                        f"floor {r['floor']:.1f} → goal FID {r['goal_fid']:.1f}; budget {rec['budget_s']:.0f} s",
                        None, "reached within budget", got is not None))
        rows.append(Row(f"training img/s vs FLOP limit, {rec['arch']} (batch {rec['batch']})", f"{rec['img_s']:.1f} img/s",
                        f"{rec['limit_img_s']:.1f} img/s = 1-thread matmul ÷ {rec['gflop_per_image']:.3f} GFLOP/image/step",
                        rec["ratio_to_limit"], "context (no goal)", None))
    return rows


def _train_limit(r: dict) -> list[Row]:
    rows = []
    for row in r["rows"]:
        fp32 = row["variants"].get("fp32")
        others = ", ".join(f"{v} {t['img_s']:.3g} img/s = {t['ratio_to_limit']:.2f}"
                           for v, t in row["variants"].items() if v != "fp32")
        value = (f"{fp32['img_s']:.3g} img/s" if fp32 else "fp32 not run") + (f" ({others})" if others else "")
        ratio = fp32["ratio_to_limit"] if fp32 else None
        rows.append(Row(f"training step vs FLOP limit, {row['arch']} (batch {row['batch']}, fp32, "
                        f"{r['threads']} thread{'s' if r['threads'] > 1 else ''})", value,
                        f"{row['limit_img_s']:.3g} img/s = {r['matmul_gflops']:.0f} GFLOP/s ÷ "
                        f"{row['gflop_per_image']:.3f} GFLOP/image/step", ratio, "≥ 0.60 (below: profile)",
                        None if ratio is None else ratio >= 0.6))
    return rows


def _train_profile(r: dict) -> list[Row]:
    return [Row(f"training step profile, {row['arch']} (batch {row['batch']}, fp32, 1 thread; torch.profiler)",
                ", ".join(f"{k} {v:.0%}" for k, v in list(row["shares"].items())[:4]),
                f"top op: {row['top_ops'][0]['op']} {row['top_ops'][0]['share']:.0%}", None,
                "context: where the time below 0.6 goes", None) for row in r["rows"]]


def _catalog(r: dict) -> list[Row]:
    med = r["seconds_median"]
    ratio = r["ratios"]["catalog_read / raw_download"]
    return [Row(f"catalog bulk read {r['n']} × {r['size']}²", f"{r['n'] / med['catalog_read']:.0f} img/s",
                f"{r['n'] / med['raw_download']:.0f} img/s raw download", 1 / ratio, "≥ 0.8 of raw (≈ 1/(1+decode))",
                1 / ratio >= 0.8)]


def _batch(r: dict) -> list[Row]:
    return [Row(f"batch job {r['n']} images ({r['shards']} shards) to S3 vs generation alone ({r['arch']})",
                f"{r['batch_img_s']:.0f} img/s", f"{r['generation_alone_img_s']:.0f} img/s generation alone",
                r["ratio"], "≥ 0.8", r["ratio"] >= 0.8)]


def _faults(r: dict) -> list[Row]:
    rows = []
    if t := r.get("train"):
        rows.append(Row("fault: Ray Train worker SIGKILLed mid-epoch",
                        f"{t['completed_epochs_lost']} completed epochs lost, {t['partial_epoch_replayed_s']:.1f} s "
                        f"replayed; resumed after {t['recovery_s']:.1f} s, next epoch after {t['next_epoch_after_s']:.1f} s",
                        f"epoch ≈ {t['epoch_s']:.1f} s", None, "0 epochs lost, run finishes",
                        t["completed_epochs_lost"] == 0 and t["final_epoch"] == t["epochs"] and t["run_status"] == "FINISHED"))
    if i := r.get("s3-ingest"):
        rows.append(Row("fault: S3 SIGKILLed mid-ingest, restarted",
                        f"killed at {i['killed_at_blobs']}/{i['n']} blobs; version visible: {i['version_visible_after_outage']}; "
                        f"retry: {i['retry_records']} records, {i['retry_bad_hashes']} bad hashes",
                        f"publish failed after {i['failed_after_kill_s']:.1f} s", None, "nothing visible, retry intact",
                        i["publish_error"] is not None and not i["version_visible_after_outage"]
                        and i["retry_records"] == i["n"] and i["retry_bad_hashes"] == 0))
    if b := r.get("s3-batch"):
        rows.append(Row("fault: S3 SIGKILLed mid-batch job, restarted",
                        f"{b['state_during_outage']} during the outage; manifest before done: "
                        f"{b['manifest_visible_before_done']}; {'re-POSTed, ' if b['resubmitted'] else ''}"
                        f"{b['shards_reused']} shards reused, {b['manifest_count']} images, {b['bad_hashes']} bad hashes",
                        f"{b['outage_s']:.0f} s outage, done {b['completed_after_restart_s']:.0f} s after restart",
                        None, "no partial manifest, retry intact",
                        not b["manifest_visible_before_done"] and b["final_state"] == "succeeded"
                        and b["manifest_count"] == b["n"] and b["bad_hashes"] == 0))
    if v := r.get("serve"):
        rows.append(Row("fault: Synthesizer replica SIGKILLed under load (clients retry)",
                        f"{v['failed_requests']} failed of {v['requests']} requests ({v['failed_attempts']} failed "
                        f"attempts retried); new replica after {v['new_replica_up_s']:.1f} s",
                        f"max latency around the kill {v['max_latency_around_kill_s']:.1f} s, "
                        f"p50 {v['p50_latency_s']:.2f} s", None, "0 failed requests", v["failed_requests"] == 0))
    return rows


def _nearcopy(r: dict) -> list[Row]:
    return [Row(f"near-copy filter overhead, n = {row['n']}, {name} ({row['image_size']}²)",
                f"{row['filtered_s']:.3f} s filtered (Inception {row['inception_s']:.3f} s, query "
                f"{row['query_s'] * 1e3:.1f} ms)", f"{row['unfiltered_s']:.3f} s unfiltered", row["ratio"],
                f"≤ {r['goal_ratio']:g}", row["ratio"] <= r["goal_ratio"]) for name, row in r["presets"].items()]


# name → (command after `python`, JSON written, rows of the table)
BENCHES: dict[str, tuple[list[str], Path, Callable[[dict], list[Row]]]] = {
    "generator": (["benchmarks/generator_forward.py"], OUT / "generator_forward.json", _generator),
    "http": (["benchmarks/http_load.py"], OUT / "http_load.json", _http),
    "inception": (["benchmarks/inception_forward.py"], OUT / "inception_forward.json", _inception),
    "fid": (["benchmarks/fid.py", "--out", str(OUT / "fid.json")], OUT / "fid.json", _fid),
    "train": (["benchmarks/train_gan.py"], OUT / "train_gan.json", _train),
    "overhead": (["benchmarks/train_overhead.py"], OUT / "train_overhead.json", _overhead),
    "train-limit": (["benchmarks/train_limit.py"], OUT / "train_limit.json", _train_limit),
    "train-profile": (["benchmarks/train_profile.py"], OUT / "train_profile.json", _train_profile),
    "catalog": (["benchmarks/catalog_read.py"], OUT / "catalog_read.json", _catalog),
    "batch": (["benchmarks/batch_throughput.py"], OUT / "batch_throughput.json", _batch),
    # the paper's 210² generator at the default shard size: 2 shards of 1,000 (~2 min each side here)
    "batch-knee": (["benchmarks/batch_throughput.py", "--arch", "wgan-gp-knee", "--n", "2000", "--out",
                    str(OUT / "batch_throughput_knee.json")], OUT / "batch_throughput_knee.json", _batch),
    "faults": (["benchmarks/fault_drills.py"], OUT / "fault_drills.json", _faults),
    "quality": (["benchmarks/time_to_quality.py"], OUT / "time_to_quality.json", _quality),
    "nearcopy": (["benchmarks/nearcopy_filter.py"], OUT / "nearcopy_filter.json", _nearcopy),
}


def markdown(rows: list[Row]) -> str:
    lines = ["| measure | value | limit or reference | ratio | goal | pass |", "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "–" if r.ratio is None else f"{r.ratio:.3g}"
        ok = "–" if r.passed is None else ("yes" if r.passed else "**no**")
        lines.append(f"| {r.measure} | {r.value} | {r.reference} | {ratio} | {r.goal} | {ok} |")
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--only", multiple=True, type=click.Choice(sorted(BENCHES)), help="run these (default: all)")
@click.option("--report-only", is_flag=True, help="do not run anything; tabulate the JSON already in out/bench/")
def main(only: tuple[str, ...], report_only: bool) -> None:
    names = list(only) or list(BENCHES)
    OUT.mkdir(parents=True, exist_ok=True)
    for name in names if not report_only else ():
        command, _, _ = BENCHES[name]
        click.echo(f"== bench {name}: {' '.join(command)}")
        subprocess.run([sys.executable, *command], cwd=REPO, check=True)
    rows: list[Row] = []
    for name in names:
        _, path, tabulate = BENCHES[name]
        if path.exists():
            rows += tabulate(json.loads(path.read_text()))
        else:
            click.echo(f"(no {path.relative_to(REPO)}: run `make bench` or --only {name})")
    table = markdown(rows)
    click.echo("\n" + table)
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M")}
    (REPO / "bench-results.json").write_text(json.dumps({**meta, "rows": [asdict(r) for r in rows]}, indent=2))
    (OUT / "table.md").write_text(f"{meta['date']}, {meta['machine']}, {meta['cpus']} CPUs\n\n{table}")


if __name__ == "__main__":
    main()
