"""The "Reader study" section of a generator's model card, from its ``study.*`` version tags.

Written after registration (like the classification accuracy score), so it is appended when the
card is shown rather than baked into the stored card.
"""

from __future__ import annotations

import json


def _pct(value: str | None) -> str:
    return "–" if not value else f"{100 * float(value):.1f} %"


def study_section(tags: dict[str, str]) -> str | None:
    """Markdown for ``synthray registry show``, or None when no study was closed on this version."""
    if not tags.get("study.id"):
        return None
    ci = (f"{_pct(tags.get('study.ci_low'))} – {_pct(tags.get('study.ci_high'))}"
          if tags.get("study.ci_low") else "–")
    p = tags.get("study.p_value")
    kappa = tags.get("study.fleiss_kappa")
    rows = [
        ("study", f"`{tags['study.id']}` (MLflow run `{tags.get('study.run_id', '–')}`)"),
        ("design", f"{tags.get('study.n_readers', '?')} readers, {tags.get('study.n_real', '?')} real + "
                   f"{tags.get('study.n_fake', '?')} synthetic images at {tags.get('study.size', '?')} px"
                   + (f", {tags['study.time_limit_s']} s per image" if tags.get("study.time_limit_s") else "")),
        ("real images", f"`{tags.get('study.reference', '–')}`"),
        ("balanced accuracy (95 % CI)", f"{_pct(tags.get('study.balanced_accuracy'))} ({ci})"),
        ("sensitivity / specificity", f"{_pct(tags.get('study.sensitivity'))} / {_pct(tags.get('study.specificity'))}"),
        ("binomial test vs 50 % (two-sided)", "–" if not p else f"p = {float(p):.3g}"),
        ("Fleiss' κ", "–" if not kappa else f"{float(kappa):.3f}"),
        ("most-fooling fake", f"fooled {_pct(tags.get('study.most_fooling_fake_rate'))} of its readers"),
    ]
    try:
        groups = json.loads(tags.get("study.groups") or "{}")
    except ValueError:
        groups = {}
    for name, g in sorted(groups.items()):
        if g.get("balanced_accuracy") is not None:
            sd = g.get("reader_ba_sd")
            rows.append((f"group {name} ({g.get('n_readers')})",
                         f"{100 * g['balanced_accuracy']:.1f} %"
                         + (f" (readers {100 * g['reader_ba_mean']:.1f} ± {100 * sd:.1f} %)" if sd is not None else "")))
    lines = ["## Reader study", "",
             "Experts told real from synthetic images in a blinded study (`synthray study`); 50 % is chance. "
             "The knee paper's experts reached 61.35 % ± 10.71 balanced accuracy.", "",
             "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    return "\n".join(lines) + "\n"
