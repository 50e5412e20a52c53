"""The metrics a promotion gate or a model comparison may read, and which way is better.

A gate that compares two models needs to know that FID goes down and MS-SSIM diversity is
closest to the real set's; keeping that here stops every caller from re-deciding it.
"""

from __future__ import annotations

from dataclasses import dataclass
from infra.errors import BadInput

__all__ = ["METRICS", "Metric", "better"]


@dataclass(frozen=True)
class Metric:
    name: str
    better: str  # "lower" | "higher" | "closer-to-real"
    description: str


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("fid", "lower", "Fréchet Inception Distance vs cached reference statistics (report n)"),
    Metric("kid", "lower", "Kernel Inception Distance, unbiased MMD² (cubic kernel), bootstrap CI"),
    Metric("precision", "higher", "improved precision: fraction of synthetic inside the real k-NN manifold"),
    Metric("recall", "higher", "improved recall: fraction of real inside the synthetic k-NN manifold"),
    Metric("memorization.fraction_below_real_p1", "lower",
           "fraction of synthetic images nearer a training image than the real→real 1st percentile"),
    Metric("memorization.min_distance", "higher", "smallest synthetic→training Inception distance"),
    Metric("ms_ssim", "closer-to-real", "mean MS-SSIM of random same-class pairs (lower = more diverse)"),
    Metric("am_score", "lower", "AM score, PGGAN paper Eq. 4, caller's domain classifier"),
    Metric("mode_score", "higher", "Mode score, PGGAN paper Eq. 5, caller's domain classifier"),
)}


def better(name: str, candidate: float, incumbent: float, real: float | None = None) -> bool:
    """Whether ``candidate`` beats ``incumbent`` on metric ``name`` (``real`` for closer-to-real)."""
    try:
        metric = METRICS[name]
    except KeyError:
        raise BadInput(f"unknown metric {name!r}; known: {', '.join(sorted(METRICS))}") from None
    if metric.better == "lower":
        return candidate < incumbent
    if metric.better == "higher":
        return candidate > incumbent
    if real is None:
        raise BadInput(f"metric {name!r} compares against the real set's value; pass real=")
    return abs(candidate - real) < abs(incumbent - real)
