"""The results of a federated experiment: FID table with bootstrap CIs and FID against rounds.

Every arm's generator is scored the same way after every ``fid_every`` rounds (round-equivalents
for the centralised arms): ``ref.n`` samples (n_fake = n_real, :func:`training.evaluate.generator.fakes_like`,
one fixed sampling seed for all arms and rounds) against the **pooled** real reference, the
Inception statistics of all K·n training images (pytorch-fid, :mod:`training.evaluate.reference`).

- ``FID``: the last round's FID; with several seeds their mean with a percentile bootstrap CI
  over seeds (:func:`training.evaluate.compare.mean_ci`, training variance, as the augmentation
  tables); with one seed, the CI over images below.
- ``per seed``: each seed's FID with its percentile bootstrap CI over images, both the real and
  the synthetic feature sets resampled (:func:`training.evaluate.fid.bootstrap_fid`): how much
  of a gap between arms is the sampling noise of a small reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from training.evaluate.compare import MeanCI, mean_ci
from training.experiments.federated_config import FederatedExperimentConfig

LABELS = {"federated": "Federated", "centralised": "Centralised", "single-site": "Single site"}


@dataclass(frozen=True)
class SeedScore:
    """One seed's last-round FID with its bootstrap CI over images (NaN bounds without bootstrap)."""

    seed: int
    fid: float
    low: float
    high: float


@dataclass
class FedRow:
    arm: str
    data: str  # "4 sites × 40", "160 pooled", "40 (site-0)"
    n_train: int  # real images the arm trains on
    updates: int  # generator updates per seed, over all sites
    images_seen: int  # real images drawn per seed: updates · b (the critic steps of an update share one real batch)
    fid: MeanCI  # last round: over seeds (one seed: the CI over images)
    per_seed: list[SeedScore]
    curve: dict[int, list[float]]  # round → FID of each seed
    runs: list[str] = field(default_factory=list)


def build_row(cfg: FederatedExperimentConfig, arm: str, data: str, n_train: int, scores: list[SeedScore],
              curve: dict[int, list[float]], runs: list[str]) -> FedRow:
    """One arm's row; ``scores`` are its seeds' last-round FIDs, ``curve`` its FID per evaluated round."""
    hp = cfg.gan.hyperparameters()
    updates = cfg.rounds * cfg.updates_per_round(arm)
    fid = mean_ci([s.fid for s in scores], confidence=cfg.confidence, n_resamples=10_000, seed=cfg.seed)
    if len(scores) == 1 and not math.isnan(scores[0].low):
        fid = MeanCI(scores[0].fid, scores[0].low, scores[0].high, 1, cfg.confidence)
    return FedRow(arm, data, n_train, updates, updates * hp["batch_size"], fid, scores,
                  curve, runs)


def _fmt(mean: float, low: float, high: float) -> str:
    if math.isnan(mean):
        return "–"
    if math.isnan(low) or low == high:
        return f"{mean:.1f}"
    return f"{mean:.1f} [{low:.1f}, {high:.1f}]"


def ci_note(cfg: FederatedExperimentConfig) -> str:
    conf = f"{100 * cfg.confidence:g} %"
    over = (f"bootstrap CI over {cfg.repeats} seeds" if cfg.repeats > 1
            else f"bootstrap CI over images, {cfg.bootstrap} draws, real and synthetic resampled")
    return conf + " " + over


def table_markdown(rows: list[FedRow], cfg: FederatedExperimentConfig, n_ref: int) -> str:
    """Markdown table, one row per arm; see the module docstring for the CIs."""
    hp = cfg.gan.hyperparameters()
    dims = "" if cfg.fid_dims == 2048 else f" ({cfg.fid_dims}-d features, not comparable with FID-2048)"
    head = ["Arm", "Real images", "Generator updates", "Real images drawn", f"FID{dims} after round {cfg.rounds}",
            "Per seed [CI over images]"]
    lines = [f"FID against the pooled real reference ({n_ref} images), n_fake = n_real; mean [{ci_note(cfg)}]. "
             f"One update = {hp['critic_steps']} critic steps + 1 generator step on one real batch of {hp['batch_size']}; "
             f"equal work: {cfg.equal_work}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        seeds = "; ".join(f"{s.seed}: {_fmt(s.fid, s.low, s.high)}" for s in row.per_seed)
        lines.append("| " + " | ".join([f"{LABELS[row.arm]} ({row.data})", str(row.n_train), f"{row.updates:,}",
                                          f"{row.images_seen:,}", _fmt(row.fid.mean, row.fid.low, row.fid.high),
                                          seeds]) + " |")
    return "\n".join(lines) + "\n"


def table_frame(rows: list[FedRow]):
    """The table with numbers in separate columns (CSV), one line per arm."""
    import pandas as pd

    return pd.DataFrame([{"arm": r.arm, "data": r.data, "n_train": r.n_train, "updates": r.updates,
                          "images_seen": r.images_seen, "fid_mean": r.fid.mean, "fid_ci_low": r.fid.low,
                          "fid_ci_high": r.fid.high, "seeds": len(r.per_seed),
                          "per_seed": " ".join(f"{s.seed}:{s.fid:.4f}[{s.low:.4f},{s.high:.4f}]" for s in r.per_seed),
                          "runs": " ".join(r.runs)} for r in rows])


def curve_frame(rows: list[FedRow]):
    """FID per arm, round and seed (long format, CSV)."""
    import pandas as pd

    return pd.DataFrame([{"arm": r.arm, "round": rnd, "seed": s.seed, "fid": fids[i]}
                         for r in rows for rnd, fids in sorted(r.curve.items()) for i, s in enumerate(r.per_seed)])


def plot(rows: list[FedRow], cfg: FederatedExperimentConfig):
    """FID against rounds, one line per arm (mean over seeds, the seeds' range shaded), the last
    round's CI as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4), dpi=120)
    for i, row in enumerate(rows):
        rounds = sorted(row.curve)
        values = np.array([row.curve[r] for r in rounds])  # (rounds, seeds)
        color = f"C{i}"
        ax.plot(rounds, values.mean(axis=1), marker="o", color=color,
                label=f"{LABELS[row.arm]} ({row.data}), {row.updates:,} updates")
        if values.shape[1] > 1:
            ax.fill_between(rounds, values.min(axis=1), values.max(axis=1), color=color, alpha=0.15)
        if not math.isnan(row.fid.low) and row.fid.low != row.fid.high:
            ax.errorbar([rounds[-1]], [row.fid.mean], yerr=[[row.fid.mean - row.fid.low], [row.fid.high - row.fid.mean]],
                        color=color, capsize=4, fmt="none")
    ax.set_xlabel(f"round (centralised: {'m·E' if cfg.equal_work == 'updates' else 'E'} updates per round)")
    ax.set_ylabel("FID to the pooled reference (lower is better)" if cfg.fid_dims == 2048
                  else f"FID, {cfg.fid_dims}-d features (lower is better)")
    ax.set_title(f"{cfg.name}: K = {cfg.sites}, C = {cfg.fraction:g}, E = {cfg.local_iters}, {cfg.repeats} seed(s)",
                 fontsize=9)
    ax.legend(fontsize=7, loc="best", title=ci_note(cfg), title_fontsize=6)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
