"""Closing a study and analysing it: answers + truth → statistics, a contact sheet, a CSV.

:func:`collect` joins the answer objects with the truth (owner side only). :func:`analyse_study`
runs :func:`training.studies.stats.analyse` and adds the study's facts. :func:`close_study` marks
the study closed (no answers are taken after it), writes ``results.json``, and, unless told not
to, logs everything to MLflow linked to the generator version (:mod:`training.studies.tracking`).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from infra.errors import Conflict
from training.studies import stats
from training.studies.store import Study, StudyStore

CONTACT_SHEET = "most_fooling_fakes.png"
TIME_FIGURE = "accuracy_vs_time.png"
ANSWERS_CSV = "answers.csv"
SHEET_TILES = 8  # most-fooling fakes on the contact sheet
TILE_PX = 160


def collect(studies: StudyStore, study: Study) -> list[stats.Answer]:
    """Every stored answer of every reader, with its truth."""
    truth = studies.truth(study.study_id)
    out = []
    for reader in study.readers:
        for image, body in sorted(studies.answers(study.study_id, reader.reader_id).items()):
            if image not in truth:
                continue
            out.append(stats.Answer(reader=reader.reader_id, group=reader.group, image=image,
                                    truth=truth[image]["truth"], answer=body.get("answer"),
                                    confidence=body.get("confidence"), elapsed_s=body.get("elapsed_s")))
    return out


def answers_csv(answers: list[stats.Answer], truth: dict[str, dict[str, Any]]) -> str:
    """The raw answers, one row per (reader, image), with the fake's seed / real image's hash."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["reader", "group", "image", "truth", "answer", "correct", "confidence", "elapsed_s", "seed",
                     "sha256"])
    for a in answers:
        t = truth.get(a.image, {})
        writer.writerow([a.reader, a.group, a.image, a.truth, a.answer or "", int(a.correct),
                         "" if a.confidence is None else a.confidence,
                         "" if a.elapsed_s is None else f"{a.elapsed_s:.3f}", t.get("seed", ""), t.get("sha256", "")])
    return buf.getvalue()


def analyse_study(studies: StudyStore, study: Study, n_resamples: int = stats.N_RESAMPLES) -> dict[str, Any]:
    """The results of the answers stored so far (the truth is read: owner side only)."""
    answers = collect(studies, study)
    result = stats.analyse(answers, seed=study.seed, n_resamples=n_resamples)
    truth = studies.truth(study.study_id)
    for row in result["images"]:
        t = truth.get(row["image"], {})
        row["seed"] = t.get("seed")
        row["sha256"] = t.get("sha256")
    per_reader = {r.reader_id: 0 for r in study.readers}
    for a in answers:
        per_reader[a.reader] += 1
    result["study"] = {
        "study_id": study.study_id, "title": study.title, "model": study.model, "reference": study.reference,
        "n_real": study.n_real, "n_fake": study.n_fake, "size": study.size, "time_limit_s": study.time_limit_s,
        "groups": study.groups, "n_readers": len(study.readers), "answers_per_reader": per_reader,
        "n_images": len(study.images), "disjoint": study.disjoint,
    }
    return stats.json_safe(result)


def contact_sheet(studies: StudyStore, study: Study, result: dict[str, Any], tiles: int = SHEET_TILES) -> bytes | None:
    """A PNG grid of the most-fooling fakes (as readers saw them), or None when no fake was answered."""
    from PIL import Image, ImageDraw

    fakes = [r for r in result["images"] if r["truth"] == "synthetic" and r["n_answers"]][:tiles]
    if not fakes:
        return None
    cols = min(4, len(fakes))
    rows = math.ceil(len(fakes) / cols)
    sheet = Image.new("L", (cols * TILE_PX, rows * (TILE_PX + 16)), 255)
    draw = ImageDraw.Draw(sheet)
    for i, row in enumerate(fakes):
        with Image.open(io.BytesIO(studies.image(study.study_id, row["image"]))) as img:
            tile = img.convert("L").resize((TILE_PX, TILE_PX), Image.Resampling.LANCZOS)
        x, y = (i % cols) * TILE_PX, (i // cols) * (TILE_PX + 16)
        sheet.paste(tile, (x, y))
        draw.text((x + 4, y + TILE_PX + 2), f"fooled {row['n_fooled']}/{row['n_answers']}  seed {row['seed']}", fill=0)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def time_figure(result: dict[str, Any]) -> bytes | None:
    """Accuracy against time taken (quantile bins), as a PNG; None without timed answers."""
    bins = result.get("accuracy_vs_time") or []
    if not bins:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3), dpi=100)
    ax.plot([b["median_s"] for b in bins], [100 * b["accuracy"] for b in bins], marker="o")
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("time per image (s, bin median)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Accuracy vs time taken")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def close_study(studies: StudyStore, study_id: str, *, log_to_mlflow: bool = True, settings=None,
                progress: Callable[[str], None] = lambda _: None, n_resamples: int = stats.N_RESAMPLES
                ) -> dict[str, Any]:
    """Close the study (idempotent), analyse it, store ``results.json`` and log to MLflow once.

    Closing again returns the stored results (and finishes an MLflow upload a previous close
    could not do, e.g. while MLflow was down).
    """
    study = studies.study(study_id)
    closed, _ = studies.close(study_id)
    key = studies.key(study_id, "results.json")
    if studies.store.exists(key):
        result = studies.get_json(key)
    else:
        progress(f"study {study_id}: analysing")
        result = analyse_study(studies, study, n_resamples)
        result["closed_at"] = closed["closed_at"]
        sheet = contact_sheet(studies, study, result)
        if sheet is not None:
            studies.store.put_bytes(studies.key(study_id, CONTACT_SHEET), sheet, content_type="image/png")
        studies.put_json(key, result)
    if log_to_mlflow and not result.get("mlflow_run_id"):
        from training.studies.tracking import log_study

        truth = studies.truth(study_id)
        csv_text = answers_csv(collect(studies, study), truth)
        sheet = studies.store.get_bytes(studies.key(study_id, CONTACT_SHEET)) \
            if studies.store.exists(studies.key(study_id, CONTACT_SHEET)) else None
        run_id = log_study(study, result, csv_text, {CONTACT_SHEET: sheet, TIME_FIGURE: time_figure(result)},
                           settings=settings)
        result["mlflow_run_id"] = run_id
        studies.put_json(key, result)
        progress(f"study {study_id}: logged to MLflow run {run_id}")
    return result


def stored_results(studies: StudyStore, study_id: str) -> dict[str, Any]:
    """The results of a closed study; Conflict while it is open."""
    study = studies.study(study_id)
    if studies.closed(study_id) is None:
        raise Conflict(f"study {study_id} is still open: close it first (synthray study close {study_id})")
    key = studies.key(study_id, "results.json")
    if not studies.store.exists(key):
        return close_study(studies, study.study_id, log_to_mlflow=False)
    return studies.get_json(key)


def status(studies: StudyStore, study_id: str) -> dict[str, Any]:
    """Status and counts for the owner (no truth, no answers' content)."""
    study = studies.study(study_id)
    closed = studies.closed(study_id)
    per_reader = {r.reader_id: len(studies.answered(study_id, r.reader_id)) for r in study.readers}
    total = len(study.images)
    return {
        "study_id": study_id, "title": study.title, "state": "closed" if closed else "open",
        "closed_at": closed["closed_at"] if closed else None, "created_at": study.created_at,
        "model": study.model, "reference": study.reference, "n_real": study.n_real, "n_fake": study.n_fake,
        "size": study.size, "time_limit_s": study.time_limit_s, "groups": study.groups,
        "readers": [{"reader_id": r.reader_id, "group": r.group, "answered": per_reader[r.reader_id], "total": total}
                    for r in study.readers],
        "answers": sum(per_reader.values()), "answers_expected": total * len(study.readers),
        "readers_done": sum(v >= total for v in per_reader.values()),
    }


def image_stack(studies: StudyStore, study: Study, ids: list[str]) -> np.ndarray:
    """Decoded pixels of some study images (tests, notebooks)."""
    from PIL import Image

    return np.stack([np.asarray(Image.open(io.BytesIO(studies.image(study.study_id, i)))) for i in ids])
