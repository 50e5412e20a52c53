"""Reader studies on the real stack (SeaweedFS, MLflow), without Serve: the CLI and the storage layer.

The browser test (test_study_browser.py) covers the pages on the Serve app; here: creation with
recorded seeds, the --require-disjoint refusal, write-once answers under concurrency and a
"restart" (a fresh store instance), closing, MLflow and the model card's section.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from click.testing import CliRunner

from infra.settings import Settings
from tests.studies.conftest import GENERATOR, STUDY_DATASET

pytestmark = pytest.mark.stack


def _cli(*args: str):
    from services.cli.main import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def created(stack: Settings, study_generator, study_dataset):
    result = _cli("study", "create", "--model", f"{GENERATOR}@champion", "--reference",
                  f"{STUDY_DATASET}:split=test", "--n-real", "3", "--n-fake", "3", "--size", "96", "--readers", "3",
                  "--groups", "radiologist=2,surgeon=1", "--seed", "5", "--require-disjoint", "--json",
                  "--url", "http://127.0.0.1:9")
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{"):])


def _studies(stack: Settings):
    from infra.object_store import ObjectStore
    from training.studies.store import StudyStore

    return StudyStore(ObjectStore(stack))


def test_require_disjoint_refuses_a_training_image_in_one_error_line(study_generator) -> None:
    result = CliRunner().invoke(__import__("services.cli.main", fromlist=["main"]).main, [
        "study", "create", "--model", f"{GENERATOR}@champion", "--reference", f"{STUDY_DATASET}:split=train",
        "--n-real", "2", "--n-fake", "2", "--readers", "1", "--require-disjoint"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and "--require-disjoint" in errors[0] and "shared patient" in errors[0], result.output


def test_created_study_records_the_version_seeds_and_encodes_alike(created, stack: Settings) -> None:
    from training.registry.generators import load_generator
    from training.studies import images as enc

    studies = _studies(stack)
    study = studies.study(created["study_id"])
    assert created["study_id"] in studies.study_ids()
    listed = _cli("study", "list")
    assert created["study_id"] in listed.output and "open" in listed.output
    assert study.model["name"] == GENERATOR and study.model["version"] == "1"
    assert [r.group for r in study.readers] == ["radiologist", "radiologist", "surgeon"]
    assert study.disjoint.startswith("disjoint")
    truth = studies.truth(study.study_id)
    assert sorted(t["truth"] for t in truth.values()) == ["real"] * 3 + ["synthetic"] * 3
    assert all(len(i) == 16 and all(c in "0123456789abcdef" for c in i) for i in study.images)
    sampler = load_generator(f"models:/{GENERATOR}/1", stack)
    headers = set()
    for iid, t in truth.items():
        data = studies.image(study.study_id, iid)
        chunks = enc.png_chunks(data)
        headers.add(chunks[0][1])
        assert [c for c, _ in chunks if c != "IDAT"] == ["IHDR", "IEND"]
        if t["truth"] == "synthetic":  # the recorded seed reproduces the image (/v1/synthesize n=1 path)
            again = enc.study_png(sampler.generate(1, t["seed"])[0], 96)
            assert again == data
    assert len(headers) == 1  # one IHDR for every image: size, depth, colour type


def test_answers_are_write_once_under_concurrency_and_survive_a_restart(created, stack: Settings) -> None:
    from training.studies.reading import ReaderSession

    studies = _studies(stack)
    study = studies.study(created["study_id"])
    session = ReaderSession(studies, study, "r01")
    first = session.position().image_id
    with ThreadPoolExecutor(8) as pool:  # a double click times eight, racing
        stored = list(pool.map(lambda a: session.answer(first, a, 3), ["real", "synthetic"] * 4))
    assert stored.count(True) == 1
    winner = studies.answers(study.study_id, "r01")[first]["answer"]
    for _ in range(2):
        nxt = session.position().image_id
        session.answer(nxt, "synthetic")
    before = studies.answers(study.study_id, "r01")
    assert len(before) == 3
    fresh = _studies(stack)  # a new process' view: nothing lived in memory
    after = fresh.answers(study.study_id, "r01")
    assert after == before and after[first]["answer"] == winner
    resumed = ReaderSession(fresh, fresh.study(study.study_id), "r01").position()
    assert resumed.answered == 3 and resumed.image_id not in before


def test_close_logs_to_mlflow_and_the_card_gains_a_reader_study(created, stack: Settings) -> None:
    from infra.tracking import configure
    from training.studies.reading import ReaderSession

    studies = _studies(stack)
    study = studies.study(created["study_id"])
    truth = studies.truth(study.study_id)
    for reader in ("r02", "r03"):
        session = ReaderSession(studies, study, reader)
        while (pos := session.position()).image_id:
            right = truth[pos.image_id]["truth"]
            session.answer(pos.image_id, right if reader == "r02" else "real", 4)
    assert _cli("study", "results", study.study_id).exit_code == 1  # still open: one error line
    result = _cli("study", "close", study.study_id)
    assert result.exit_code == 0, result.output
    assert "Fleiss' kappa" in result.output and "group radiologist (2)" in result.output
    res = studies.get_json(studies.key(study.study_id, "results.json"))
    r02 = next(r for r in res["readers"] if r["reader"] == "r02")
    assert r02["balanced_accuracy"] == 1.0 and r02["n"] == 6
    client = configure(stack).MlflowClient()
    run = client.get_run(res["mlflow_run_id"])
    assert run.data.tags["synthray.study.model_version"] == "1"
    assert run.data.metrics["reader.r02.balanced_accuracy"] == 1.0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "reader_study")}
    assert {"reader_study/answers.csv", "reader_study/results.json", "reader_study/most_fooling_fakes.png"} <= artifacts
    version = client.get_model_version(GENERATOR, "1")
    assert version.tags["study.id"] == study.study_id
    show = _cli("registry", "show", f"{GENERATOR}/1")
    assert show.exit_code == 0, show.output
    assert "## Reader study" in show.output and study.study_id in show.output
    again = _cli("study", "close", study.study_id, "--json")  # idempotent: the same run
    assert json.loads(again.output[again.output.index("{"):])["mlflow_run_id"] == res["mlflow_run_id"]
    with pytest.raises(Exception, match="closed"):
        ReaderSession(studies, study, "r01").answer(study.images[0], "real")
    assert np.isfinite(res["overall"]["balanced_accuracy"])


def test_time_limit_records_no_answer_and_survives_a_reload(stack: Settings, study_dataset) -> None:
    """The clock starts at the first view; late answers and images left to expire become "no answer"."""
    from training.catalog.store import Catalog
    from training.studies.create import StudyRequest, freeze, plan
    from training.studies.reading import GRACE_S, ReaderSession

    studies = _studies(stack)
    request = StudyRequest(model="gan-x/1", reference=f"{STUDY_DATASET}:split=test", n_real=2, n_fake=2, size=64,
                           readers=1, time_limit_s=30, seed=3)
    model = {"name": "gan-x", "version": "1", "run_id": None, "spec": "gan-x/1", "uri": "models:/gan-x/1"}
    the_plan = plan(request, model, {}, Catalog(studies.store))
    assert the_plan.disjoint == "not checked"
    fakes = [np.full((64, 64), 100 + i, np.uint8) for i in range(2)]
    study = freeze(the_plan, fakes, Catalog(studies.store), studies).study
    now = [1000.0]
    session = ReaderSession(studies, study, "r01", clock=lambda: now[0])
    first = session.position()
    assert first.remaining_s == 30
    now[0] += 10  # a reload 10 s later: the clock keeps running
    assert session.position().remaining_s == 20 and session.position().image_id == first.image_id
    now[0] += 30 + GRACE_S  # answered too late: stored as no answer
    session.answer(first.image_id, "real", 5)
    assert studies.answers(study.study_id, "r01")[first.image_id]["answer"] is None
    second = session.position()  # shown now; the reader walks away for a minute
    now[0] += 60
    third = session.position()
    assert third.answered == 2 and third.image_id != second.image_id
    stored = studies.answers(study.study_id, "r01")[second.image_id]
    assert stored["answer"] is None and stored["timeout"] is True
    session.answer(third.image_id, "synthetic", 2)
    assert studies.answers(study.study_id, "r01")[third.image_id]["answer"] == "synthetic"
