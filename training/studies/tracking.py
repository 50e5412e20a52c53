"""A closed study in MLflow: a run linked to the generator version it judged, and version tags.

The run (experiment :data:`EXPERIMENT`) carries the study's parameters, the overall, per-group
and per-reader metrics, the raw answers (CSV), ``results.json`` and the figures (most-fooling
fakes contact sheet, accuracy vs time). It is linked both ways:

* run tags name the generator (``synthray.study.model_name`` / ``model_version`` /
  ``model_run_id``) and the study id;
* the generator **version** gets ``study.*`` tags (latest closed study), which
  ``synthray registry show`` turns into the card's "Reader study" section
  (:func:`training.studies.card.study_section`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from infra.settings import Settings, get_settings
from infra.tracking import configure
from training.registry import tags as tag
from training.studies.store import Study

EXPERIMENT = "synthray-reader-studies"
STUDY_KIND = tag.READER_STUDY_KIND
STUDY_TAG_PREFIX = tag.STUDY_VERSION_PREFIX
STUDY_ID, MODEL_NAME, MODEL_VERSION, MODEL_RUN_ID = (tag.STUDY_ID, tag.STUDY_MODEL_NAME, tag.STUDY_MODEL_VERSION,
                                                     tag.STUDY_MODEL_RUN_ID)


def _metric_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-/" else "_" for c in text)


def study_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Flat MLflow metrics: overall, ``group.<g>.*``, ``reader.<r>.*``, κ; NaN/None left out."""
    keys = ("accuracy", "sensitivity", "specificity", "balanced_accuracy", "ci_low", "ci_high", "p_value", "n",
            "n_no_answer")
    out: dict[str, float] = {}
    for k in keys + ("reader_ba_mean", "reader_ba_sd"):
        out[k] = result["overall"].get(k)
    for g in result["groups"]:
        for k in keys + ("reader_ba_mean", "reader_ba_sd"):
            out[_metric_name(f"group.{g['group']}.{k}")] = g.get(k)
    for r in result["readers"]:
        for k in keys:
            out[_metric_name(f"reader.{r['reader']}.{k}")] = r.get(k)
    out["fleiss_kappa"] = result.get("fleiss_kappa")
    out["most_fooling_fake_rate"] = result.get("most_fooling_fake_rate")
    return {k: float(v) for k, v in out.items() if v is not None}


def version_tags(study: Study, result: dict[str, Any], run_id: str) -> dict[str, str]:
    o = result["overall"]

    def num(v: Any) -> str:
        return "" if v is None else f"{float(v):.6g}"

    groups = {g["group"]: {"balanced_accuracy": g.get("balanced_accuracy"), "n_readers": g.get("n_readers"),
                           "reader_ba_mean": g.get("reader_ba_mean"), "reader_ba_sd": g.get("reader_ba_sd")}
              for g in result["groups"]}
    return {f"{STUDY_TAG_PREFIX}{k}": v for k, v in {
        "id": study.study_id, "run_id": run_id, "closed_at": str(result.get("closed_at", "")),
        "n_readers": str(len(study.readers)), "n_real": str(study.n_real), "n_fake": str(study.n_fake),
        "size": str(study.size), "time_limit_s": "" if study.time_limit_s is None else str(study.time_limit_s),
        "reference": study.reference.get("dataset", "") + (f":{study.reference['selector']}" if study.reference.get("selector") else ""),
        "balanced_accuracy": num(o.get("balanced_accuracy")), "ci_low": num(o.get("ci_low")),
        "ci_high": num(o.get("ci_high")), "accuracy": num(o.get("accuracy")),
        "sensitivity": num(o.get("sensitivity")), "specificity": num(o.get("specificity")),
        "p_value": num(o.get("p_value")), "fleiss_kappa": num(result.get("fleiss_kappa")),
        "most_fooling_fake_rate": num(result.get("most_fooling_fake_rate")),
        "n_answers": str(o.get("n", 0)), "n_no_answer": str(o.get("n_no_answer", 0)),
        "groups": json.dumps(groups, sort_keys=True),
    }.items()}


def log_study(study: Study, result: dict[str, Any], answers_csv: str, figures: dict[str, bytes | None],
              settings: Settings | None = None) -> str:
    """Log a closed study; returns the run id. Also tags the generator version (``study.*``)."""
    mlflow = configure(settings or get_settings())
    client = mlflow.MlflowClient()
    mlflow.set_experiment(EXPERIMENT)
    model = study.model
    with mlflow.start_run(run_name=f"reader-study-{study.study_id}") as run:
        mlflow.set_tags({
            tag.KIND: STUDY_KIND, STUDY_ID: study.study_id, MODEL_NAME: model["name"],
            MODEL_VERSION: str(model["version"]), MODEL_RUN_ID: model.get("run_id") or "",
            "mlflow.note.content": f"Reader study {study.study_id} of {model['name']}/{model['version']}: "
                                   f"{len(study.readers)} readers, {study.n_real} real + {study.n_fake} synthetic "
                                   f"images at {study.size} px.",
        })
        mlflow.log_params({
            "study_id": study.study_id, "model": f"{model['name']}/{model['version']}",
            "reference": json.dumps(study.reference, sort_keys=True), "n_real": study.n_real, "n_fake": study.n_fake,
            "size": study.size, "readers": len(study.readers), "groups": json.dumps(study.groups, sort_keys=True),
            "time_limit_s": study.time_limit_s, "seed": study.seed,
            "encoding": json.dumps(study.encoding, sort_keys=True),
        })
        mlflow.log_metrics(study_metrics(result))
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "answers.csv").write_text(answers_csv)
            (root / "results.json").write_text(json.dumps(result, indent=1, sort_keys=True))
            for name, data in figures.items():
                if data:
                    (root / name).write_bytes(data)
            mlflow.log_artifacts(tmp, "reader_study")
        run_id = run.info.run_id
    for key, value in version_tags(study, result, run_id).items():
        client.set_model_version_tag(model["name"], str(model["version"]), key, value)
    return run_id
