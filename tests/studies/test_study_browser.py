"""A reader study in a real browser against the real Serve app on the local stack.

Headless Chromium from Debian's package (``/usr/bin/chromium``, installed by ``make setup``),
driven by Playwright without any browser download. One Serve start for the module:

1. the owner creates a 4 real + 4 synthetic study over HTTP (fakes from the Synthesizer);
2. blinding over HTTP: every reader page is the same HTML but for the image id and counts, the
   served PNGs of a real and a fake have the same headers and PNG structure, nothing of the
   truth is in any HTML or JSON a reader gets;
3. two readers in the browser: keyboard and clicks, one reloads midway and another closes the
   browser and comes back (both resume), a double-submitted answer (a dblclick and a replayed
   POST) is stored once;
4. the Serve ``Api`` replica is killed mid-study (``ray.kill``); after Serve restarts it every
   answer given before is there and the reader continues;
5. the owner closes the study and sees the results page; screenshots go to ``out/studies/``.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import httpx
import pytest

from infra.settings import PROJECT_ROOT, Settings
from services.serving import deploy as serve_ops
from tests.studies.conftest import GENERATOR, STUDY_DATASET

pytestmark = pytest.mark.stack

CHROMIUM = "/usr/bin/chromium"
SHOTS = PROJECT_ROOT / "out" / "studies"
N = 8  # images per reader


@pytest.fixture(scope="module")
def app(stack: Settings, study_generator, study_dataset):
    messages: list[str] = []
    try:
        yield serve_ops.up(stack, progress=messages.append)
    finally:
        serve_ops.down(stack, progress=lambda _: None)


@pytest.fixture(scope="module")
def owner(app, stack: Settings):
    from services.serving.auth import client_key

    with httpx.Client(base_url=app, timeout=120, headers={"Authorization": f"Bearer {client_key(stack)}"}) as c:
        yield c


@pytest.fixture(scope="module")
def study(owner) -> dict:
    response = owner.post("/v1/studies", json={
        "model": f"{GENERATOR}@champion", "reference": f"{STUDY_DATASET}:split=test", "n_real": 4, "n_fake": 4,
        "size": 128, "readers": 3, "groups": {"radiologist": 2, "surgeon": 1}, "seed": 9, "require_disjoint": True,
        "title": "Knee phantom, browser test"})
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture(scope="module")
def studies(stack: Settings):
    from infra.object_store import ObjectStore
    from training.studies.store import StudyStore

    return StudyStore(ObjectStore(stack))


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: 'make setup' installs Debian's chromium (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def _link(study: dict, reader: str) -> str:
    return next(r["url"] for r in study["readers"] if r["reader_id"] == reader)


def _token(study: dict, reader: str) -> str:
    return _link(study, reader).rsplit("/", 1)[1]


def test_owner_routes_need_the_key_and_validate(app, owner, study) -> None:
    sid = study["study_id"]
    assert study["model"]["version"] == "1" and study["disjoint"].startswith("disjoint")
    assert httpx.get(f"{app}/v1/studies/{sid}").status_code == 401
    state = owner.get(f"/v1/studies/{sid}").json()
    assert state["state"] == "open" and state["answers"] == 0 and state["answers_expected"] == 3 * N
    assert owner.get("/v1/studies/s-0123456789abcdef").status_code == 404
    bad = owner.post("/v1/studies", json={"model": f"{GENERATOR}@champion", "reference": STUDY_DATASET,
                                          "readers": 3, "groups": {"a": 1}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "groups", bad.text
    train = owner.post("/v1/studies", json={"model": f"{GENERATOR}@champion", "reference": f"{STUDY_DATASET}:split=train",
                                            "n_real": 2, "n_fake": 2, "readers": 1, "require_disjoint": True})
    assert train.status_code == 422 and "shared patient" in train.text, train.text
    assert owner.post(f"/v1/studies/{sid}/results").status_code == 405
    assert owner.get(f"/v1/studies/{sid}/results").status_code == 409  # open: no results yet
    assert httpx.get(f"{app}/study/not-a-real-token-at-all").status_code == 404


def test_blinding_of_pages_images_and_json(app, study, studies) -> None:
    """Reader r03 answers over plain HTTP; every page and image is checked against the truth."""
    from training.studies import images as enc

    truth = studies.truth(study["study_id"])
    secrets_ = {str(t.get(k)) for t in truth.values() for k in ("seed", "sha256", "patient_id", "source_path", "label")
                if t.get(k) is not None}
    link = _link(study, "r03")
    pages, images = set(), {}
    with httpx.Client(timeout=60, follow_redirects=True) as reader:
        for k in range(N):
            page = reader.get(link)
            progress = reader.get(f"{link}/progress")
            iid = re.search(r'name="image_id" value="([0-9a-f]{16})"', page.text).group(1)
            assert progress.json() == {"answered": k, "total": N, "done": False, "closed": False, "image_id": iid,
                                       "remaining_s": None}
            for text in (page.text, progress.text):
                assert not any(s in text for s in secrets_), "truth provenance leaked"
                assert "truth" not in text.lower()
            assert page.headers["referrer-policy"] == "no-referrer" and "no-store" in page.headers["cache-control"]
            pages.add(re.sub(r"\d", "0", page.text.replace(iid, "IMAGE")))
            img = reader.get(f"{link}/image/{iid}")
            images[truth[iid]["truth"]] = img
            answer = "real" if k % 2 else "synthetic"
            assert reader.post(f"{link}/answer", data={"image_id": iid, "answer": answer, "confidence": "2"}).status_code == 200
    assert len(pages) == 1, "reader pages differ beyond the image id and the counts"
    real, fake = images["real"], images["synthetic"]
    volatile = {"content-length", "date", "x-request-id"}
    assert real.headers.keys() == fake.headers.keys()
    assert {k: v for k, v in real.headers.items() if k not in volatile} == \
           {k: v for k, v in fake.headers.items() if k not in volatile}
    chunks_r, chunks_f = enc.png_chunks(real.content), enc.png_chunks(fake.content)
    assert chunks_r[0] == chunks_f[0] and {c for c, _ in chunks_r} == {c for c, _ in chunks_f} == {"IHDR", "IDAT", "IEND"}
    assert b"Synthetic" not in fake.content


def _progress(page) -> str:
    return page.locator("#progress-text").inner_text()


def _answer(page, k: int, how: str) -> None:
    """Answer the image on screen (the k-th, 0-based) and wait for the next page."""
    if how == "keys":
        page.keyboard.press(str(1 + k % 5))
        with page.expect_navigation():
            page.keyboard.press("s" if k % 2 else "r")
    else:
        with page.expect_navigation():
            page.click("#btn-synthetic" if k % 3 else "#btn-real")


def _kill_api_replica(app: str, stack: Settings) -> None:
    """ray.kill the Serve Api replica of this test's cluster, then wait for Serve to replace it."""
    import ray

    if not ray.is_initialized():
        ray.init(address=stack.ray_address, logging_level="ERROR")

    def replicas() -> set[str]:
        return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if "synthray" in a["name"] and "Api" in a["name"] and a["name"].startswith("SERVE_REPLICA")}

    before = replicas()
    assert before, ray.util.list_named_actors(all_namespaces=True)
    for name in before:
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if replicas() - before and httpx.get(f"{app}/healthz", timeout=5).status_code == 200:
                return
        except (httpx.TransportError, ValueError):
            pass
        time.sleep(0.5)
    raise AssertionError("Serve did not replace the killed Api replica within 120 s")


def test_two_readers_reload_resume_double_submit_and_a_replica_kill(app, stack, study, studies, browser) -> None:
    sid = study["study_id"]
    # reader r01: keyboard; reloads midway
    a = browser.new_context(viewport={"width": 900, "height": 820})
    page = a.new_page()
    page.goto(_link(study, "r01"))
    assert _progress(page) == f"0 / {N} answered"
    page.screenshot(path=str(SHOTS / "reader-page.png"))
    for k in range(3):
        _answer(page, k, "keys")
    page.reload()
    assert _progress(page) == f"3 / {N} answered"
    for k in range(3, N):
        _answer(page, k, "keys")
    assert "All done" in page.locator("#message-title").inner_text()
    a.close()

    # reader r02: clicks; a double click and a replayed POST store one answer
    b = browser.new_context()
    page = b.new_page()
    page.goto(_link(study, "r02"))
    first = page.locator('input[name="image_id"]').get_attribute("value")
    _answer(page, 0, "click")  # real
    replay = page.request.post(f"{_link(study, 'r02')}/answer", form={"image_id": first, "answer": "synthetic"})
    assert replay.ok
    second = page.locator('input[name="image_id"]').get_attribute("value")
    page.locator("#btn-synthetic").dblclick()
    page.wait_for_function(f"document.querySelector('input[name=image_id]') && "
                           f"document.querySelector('input[name=image_id]').value !== '{second}'")
    assert _progress(page) == f"2 / {N} answered"
    stored = studies.answers(sid, "r02")
    assert set(stored) == {first, second} and stored[first]["answer"] == "real"  # the first answer wins
    b.close()  # closes the browser mid-study

    # the Serve replica dies mid-study; nothing given before is lost
    before = {r: studies.answers(sid, r) for r in ("r01", "r02", "r03")}
    _kill_api_replica(app, stack)
    after = {r: studies.answers(sid, r) for r in ("r01", "r02", "r03")}
    assert after == before and [len(after[r]) for r in ("r01", "r02", "r03")] == [N, 2, N]

    # r02 comes back in a new browser context: resumes at 2 and finishes
    c = browser.new_context()
    page = c.new_page()
    page.goto(_link(study, "r02"))
    assert _progress(page) == f"2 / {N} answered"
    for k in range(2, N):
        _answer(page, k, "click")
    assert "All done" in page.locator("#message-title").inner_text()
    c.close()
    assert len(studies.answers(sid, "r02")) == N


def test_the_page_submits_no_answer_when_the_time_runs_out(owner, studies, browser) -> None:
    response = owner.post("/v1/studies", json={
        "model": f"{GENERATOR}/1", "reference": f"{STUDY_DATASET}:split=test", "n_real": 1, "n_fake": 1, "size": 64,
        "readers": 1, "time_limit_s": 3, "seed": 4})
    assert response.status_code == 201, response.text
    created = response.json()
    context = browser.new_context()
    page = context.new_page()
    page.goto(created["readers"][0]["url"])
    first = page.locator('input[name="image_id"]').get_attribute("value")
    assert int(page.locator("#countdown").inner_text()) in (2, 3)
    page.wait_for_function("document.getElementById('progress-text').innerText.startsWith('1 /')", timeout=15_000)
    context.close()
    stored = studies.answers(created["study_id"], "r01")[first]
    assert stored["answer"] is None and stored["timeout"] is True


def test_owner_closes_and_sees_the_results_page(app, owner, stack, study, studies, browser) -> None:
    sid = study["study_id"]
    closed = owner.post(f"/v1/studies/{sid}/close")
    assert closed.status_code == 200, closed.text
    body = closed.json()
    assert body["state"] == "closed" and body["overall"]["n"] == 3 * N and body["mlflow_run_id"]
    assert owner.post(f"/v1/studies/{sid}/close").json()["mlflow_run_id"] == body["mlflow_run_id"]
    results = owner.get(f"/v1/studies/{sid}/results").json()
    assert {r["reader"] for r in results["readers"]} == {"r01", "r02", "r03"}
    assert len(results["cohen_kappa"]) == 3 and results["fleiss_n_images"] == N

    context = browser.new_context(viewport={"width": 1100, "height": 1400},
                                  extra_http_headers={"Authorization": owner.headers["Authorization"]})
    page = context.new_page()
    page.goto(f"{app}/v1/studies/{sid}/report")
    assert page.locator("#study-state").inner_text() == "closed"
    assert page.locator("#fleiss-kappa").inner_text() != ""
    assert page.locator("#results-overall tr").count() == 1 + 1 + 2 + 3  # header, all, 2 groups, 3 readers
    assert page.locator("#contact-sheet").is_visible()
    page.screenshot(path=str(SHOTS / "results-page.png"), full_page=True)
    context.close()

    reader = browser.new_context()
    page = reader.new_page()
    page.goto(_link(study, "r01"))
    assert "closed" in page.locator("#message-title").inner_text()
    reader.close()
    assert (SHOTS / "reader-page.png").stat().st_size > 0 and os.path.getsize(SHOTS / "results-page.png") > 0
