"""Where a GAN training worker's time goes: py-spy raw stacks → shares by bucket (issue 31's profile).

Record a Ray Train worker (its pid from ``ps``; rank 0 is the one with MLflow frames) with
``py-spy record -p PID -d 20 -r 50 -f raw -o worker.txt``, then run
``python benchmarks/pyspy_buckets.py worker.txt``. Only the train thread counts (stacks through
Ray Train's ``train_fn``), waits included, each stack in the first bucket whose frame names
match; the rest is reported by its ``train_loop`` line.
"""

from __future__ import annotations

import collections
import re
import sys

BUCKETS = [
    ("checkpoint (torch.save + upload)", ["serialization.py", "persist_current_checkpoint", "_upload_checkpoint"]),
    ("ray.train.report (waiting for the controller)", ["train_fn_utils.py"]),
    ("sample grid render", ["sample_grid"]),
    ("MLflow log_image (encode + upload)", ["log_image"]),
    ("MLflow metrics (log_batch / flush)", ["_log_epoch", "log_batch", "MetricBuffer"]),
    ("EMA BN recalibration", ["recalibrate"]),
    ("FID", ["_fid (", "_stage_fid"]),
    ("progress to driver", ["Sender.__call__", "_Progress"]),
    ("metric all-reduce / cadence broadcast", ["_mean_across_workers", "_sum_across_workers", "agree ("]),
    ("train_step (forward/backward/optimizer)", ["train_step ("]),
    ("EMA update", ["Ema.update"]),
]


def shares(path: str) -> tuple[collections.Counter, int]:
    totals: collections.Counter = collections.Counter()
    n = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if "train_fn (ray/train/v2/_internal/util.py" not in stack:
                continue
            c = int(count)
            n += c
            if "train_loop (" not in stack:
                totals["outside train_loop (setup)"] += c
                continue
            for name, keys in BUCKETS:
                if any(k in stack for k in keys):
                    totals[name] += c
                    break
            else:
                lines = re.findall(r"train_loop \((training/gan/[a-z_]+\.py:\d+)\)", stack)
                totals["train_loop " + (lines[-1] if lines else "other")] += c
    return totals, n


if __name__ == "__main__":
    totals, n = shares(sys.argv[1])
    for name, count in totals.most_common():
        print(f"| {name} | {100 * count / max(n, 1):.1f} % |")
    print(f"| samples (train thread, waits included) | {n} |")
