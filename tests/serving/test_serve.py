"""The synthesis API on a real stack: MLflow registry → Ray Serve → HTTP, and the config.

Two generator versions are registered under one name (the alias ``champion`` moves to the
second), so the tests can tell an alias from a pinned version by the pixels they get back.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import httpx
import hypothesis
import numpy as np
import pytest
import schemathesis
import torch

from infra.settings import Settings
from services.serving import deploy as serve_ops
from services.serving.app import parse_server_timing
from services.serving.packaging import read_images, read_manifest

NAME = "gan-serve-test-wgan-gp-knee-small"
N, SEED = 5, 3


# -- the config file (no stack needed) -----------------------------------------------------
DEPLOYMENTS = {"Api", "ModelDirectory", "Synthesizer", "FidScorer", "Classifier", "Segmenter"}


def test_config_is_a_valid_serve_deploy_schema() -> None:
    config = serve_ops.load_config()
    (app,) = config.applications
    assert (app.name, app.route_prefix, app.import_path) == ("synthray", "/", "services.serving.app:build_app")
    deployments = {d.name: d for d in app.deployments}
    assert set(deployments) == DEPLOYMENTS
    # Must fit next to training on the 2-CPU local head, at full autoscaled size.
    def most(d) -> int:
        return d.autoscaling_config["max_replicas"] if isinstance(d.autoscaling_config, dict) else d.num_replicas

    assert sum(most(d) * d.ray_actor_options.num_cpus for d in deployments.values()) <= 1.0
    # Overload is refused with 503 + Retry-After, not buffered without bound.
    for name in DEPLOYMENTS - {"ModelDirectory"}:
        d = deployments[name]
        assert d.max_queued_requests > 0, name
        assert d.backpressure_config.status_code == 503 and d.backpressure_config.retry_after_s > 0, name
    assert deployments["ModelDirectory"].num_replicas == 1  # one alias map for every request
    assert app.args["max_batch_images"] >= app.args["max_sync_images"] >= 1


def test_config_import_path_builds_the_app() -> None:
    from ray._common.utils import import_attr
    from ray.serve import Application

    (app,) = serve_ops.load_config().applications
    assert isinstance(import_attr(app.import_path)(app.args), Application)
    with pytest.raises(ValueError, match="max_sync_images"):
        import_attr(app.import_path)({"max_sync_images": 0})
    with pytest.raises(ValueError, match="max_batch_images"):
        import_attr(app.import_path)({"max_sync_images": 300, "max_batch_images": 200})


def test_deploy_config_carries_settings_and_code_version(tmp_path) -> None:
    settings = Settings(mlflow_tracking_uri="http://127.0.0.1:1", state_dir=tmp_path)
    (app,) = serve_ops.deploy_config(settings).applications
    env = app.runtime_env["env_vars"]
    assert env["SYNTHRAY_MLFLOW_TRACKING_URI"] == "http://127.0.0.1:1"
    assert env[serve_ops.CODE_VERSION_VAR] == serve_ops.code_version()
    assert app.logging_config.encoding == "TEXT" and env["SYNTHRAY_LOG_FORMAT"] == "text"
    (app,) = serve_ops.deploy_config(Settings(state_dir=tmp_path, log_format="json")).applications
    assert app.logging_config.encoding == "JSON" and app.runtime_env["env_vars"]["SYNTHRAY_LOG_FORMAT"] == "json"


def test_batches_can_fill_so_serve_does_not_warn() -> None:
    """Ray warns (and a batch of 1-image requests stays small) when the Synthesizer admits
    fewer requests than max_batch_size; serve up refuses such a config instead."""
    config = serve_ops.load_config()
    (app,) = config.applications
    synthesizer = {d.name: d for d in app.deployments}["Synthesizer"]
    assert synthesizer.max_ongoing_requests >= app.args["max_batch_images"]
    serve_ops.check_batching(config)
    synthesizer.max_ongoing_requests = app.args["max_batch_images"] - 1
    with pytest.raises(serve_ops.ServeError, match="max_ongoing_requests .* below max_batch_images"):
        serve_ops.check_batching(config)


@pytest.mark.parametrize(
    ("model", "parsed"),
    [
        ("gan-x@champion", ("gan-x", "champion", None)),
        ("gan-x/12", ("gan-x", None, "12")),
        ("models:/gan-x@challenger", ("gan-x", "challenger", None)),
    ],
)
def test_parse_model_accepts_alias_version_and_uri(model, parsed) -> None:
    from services.serving.app import parse_model

    assert parse_model(model) == parsed


@pytest.mark.parametrize("model", ["gan-x", "gan-x@", "gan-x/0", "gan-x/v2", "a/b@c", "@champion", "gan x@champion", 'q"x@champion'])
def test_parse_model_rejects_ambiguous_references(model) -> None:
    from services.serving.app import parse_model

    with pytest.raises(ValueError, match="NAME@alias"):
        parse_model(model)


@pytest.mark.parametrize(("value", "words"), [("²", "unknown class '²'"), ("L9", "unknown class 'L9'"),
                                             ("3", "outside"), ("1", None), (1, None), ("L2", None)])
def test_class_values_resolve_or_name_the_field(value, words) -> None:
    """Class names or ASCII-digit indices; anything else is a 422 naming ``class``, never a crash."""
    from types import SimpleNamespace

    from infra.errors import BadInput
    from services.serving.model_directory import ModelRef
    from services.serving.synthesizer import resolve_label

    sampler = SimpleNamespace(conditional=True, num_classes=3, class_index=None)
    label = resolve_label(sampler, ModelRef("gan-x", "1", None, classes=("L1", "L2", "L3")), value)
    if words is None:
        assert label == {"1": 1, 1: 1, "L2": 1}[value]
    else:
        assert isinstance(label, BadInput) and label.field == "class" and words in label.message, label


def test_up_without_ray_names_the_fix(tmp_path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    settings = Settings(ray_address=dead, state_dir=tmp_path)
    with pytest.raises(serve_ops.ServeError, match=f"Ray is not running at {dead}; .*synthray stack up"):
        serve_ops.up(settings, progress=lambda _: None)


def test_unreachable_registry_is_a_503_not_a_crash(monkeypatch, tmp_path) -> None:
    import socket

    import mlflow

    from infra.errors import Unavailable
    from services.serving.model_directory import ModelDirectory

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        directory = ModelDirectory.func_or_class(settings=Settings(mlflow_tracking_uri=uri, state_dir=tmp_path))
        result = directory._lookup("gan-x@champion")
    finally:  # the directory points the process-wide MLflow client at the dead URI
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
    assert isinstance(result, Unavailable)
    assert result.http_status == 503 and uri in result.message


def test_backpressure_becomes_503_with_retry_after() -> None:
    import asyncio

    from ray.serve.exceptions import BackPressureError

    from infra.errors import Unavailable
    from services.serving.app import _call, error_response

    async def overloaded():
        raise BackPressureError(num_queued_requests=9, max_queued_requests=8, retry_after_s=2.4)

    with pytest.raises(Unavailable) as err:
        asyncio.run(_call(overloaded()))
    response = asyncio.run(error_response(None, err.value))
    assert response.status_code == 503 and response.headers["Retry-After"] == "2"
    assert "max_queued_requests=8" in json.loads(response.body)["detail"]


def test_api_keys_from_settings_and_file(tmp_path) -> None:
    from fastapi import HTTPException
    from fastapi.security import HTTPAuthorizationCredentials

    from services.serving.auth import KeyChecker, client_key, ensure_local_key

    settings = Settings(state_dir=tmp_path)
    path = ensure_local_key(settings)
    assert path == tmp_path / "api-keys" and (path.stat().st_mode & 0o777) == 0o600
    key = path.read_text().strip()
    assert len(key) >= 32 and client_key(settings) == key
    assert ensure_local_key(settings) is None  # never overwrites a configured key
    both = Settings(state_dir=tmp_path, api_keys="k-one, k-two")
    checker = KeyChecker(both)
    for good in ("k-one", "k-two", key):
        checker.check(HTTPAuthorizationCredentials(scheme="Bearer", credentials=good))
    for bad in (None, HTTPAuthorizationCredentials(scheme="Bearer", credentials="k-on"),
                HTTPAuthorizationCredentials(scheme="Basic", credentials="k-one")):
        with pytest.raises(HTTPException) as err:
            checker.check(bad)
        assert err.value.status_code == 401


# -- over HTTP -------------------------------------------------------------------------------
COND, CLASSIFIER, SWAP = "gan-serve-test-acgan", "classifier-serve-test", "gan-serve-swap-test"
SEGMENTER, SEGMENT_CLASSES = "segmenter-serve-test", ["background", "femur", "tibia", "fibula"]
PAIRED = "gan-serve-test-image-mask"
COND_CLASSES = ["L1", "L2", "L3"]
REFERENCE_NAME = "phantom-metrics"  # the metrics tests' dataset: same spec, one version
POLL_S = 1.0
TEST_ENV = {  # read by the replicas (serve up passes SYNTHRAY_* on), kept small for a 2-core machine
    "SYNTHRAY_BATCH_SHARD_SIZE": "25",
    "SYNTHRAY_BATCH_MAX_IMAGES": "2000",  # the fuzzer may ask for the maximum: keep such batches short
    "SYNTHRAY_REGISTRY_POLL_S": str(POLL_S),
    "SYNTHRAY_SERVE_MAX_BODY_BYTES": "1000000",
}


def _json_logs(stack: Settings) -> Settings:
    """The stack with the cluster's structured logs (the chart's SYNTHRAY_LOG_FORMAT=json)."""
    return stack.model_copy(update={"log_format": "json"})


def _register(seed: int, stack: Settings, name: str = NAME, preset: str = "wgan-gp-knee-small"):
    from training.registry.generators import log_generator
    from training.nets.presets import get_preset
    from training.nets.sampler import GeneratorSampler

    torch.manual_seed(seed)
    spec = get_preset(preset)
    generator, _ = spec.build()
    conditional = spec.family == "acgan"
    sampler = GeneratorSampler(generator, spec.latent_dim, num_classes=spec.num_classes if conditional else None)
    tags = {"classes": json.dumps(COND_CLASSES), "conditional": "True"} if conditional else None
    # No training run behind these: log them directly, and set champion as a promotion would.
    return log_generator(sampler, name, alias="champion", tags=tags, settings=stack)


def _register_classifier(stack: Settings):
    from training.registry.classifiers import log_classifier
    from training.nets.classifier import ImageClassifier, SmallCNN

    torch.manual_seed(0)
    return log_classifier(ImageClassifier(SmallCNN(num_classes=2), ["normal", "fracture"], image_size=64),
                          CLASSIFIER, alias="champion", settings=stack)


def _wait_gone(stack: Settings, timeout_s: float = 60) -> None:
    """Cancelled coordinators wind down (their running shards are cancelled) and exit."""
    from services.batches import api as batch_jobs

    deadline = time.monotonic() + timeout_s
    while batch_jobs.active_batches(stack):
        assert time.monotonic() < deadline, f"batches still active: {batch_jobs.active_batches(stack)}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def served(stack: Settings):
    """(base URL, first version, second version = champion); Serve stopped afterwards."""
    first = _register(1, stack)
    second = _register(2, stack)  # moves champion
    saved = {k: os.environ.get(k) for k in TEST_ENV}
    os.environ.update(TEST_ENV)
    messages: list[str] = []
    try:
        url = serve_ops.up(_json_logs(stack), progress=messages.append)
        print("\n".join(messages))
        yield url, first, second
    finally:
        serve_ops.down(stack, progress=print)
        # Batches outlive Serve by design; the ones the tests (and the fuzzer) started must not
        # keep the 2 cores busy for the modules after this one.
        from services.batches import api as batch_jobs

        for batch in batch_jobs.active_batches(stack):
            batch_jobs.cancel(batch, stack)
        _wait_gone(stack)
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


@pytest.fixture(scope="module")
def key(served, stack: Settings) -> str:
    from services.serving.auth import client_key

    found = client_key(stack)
    assert found, "serve up must have written a local key"
    return found


@pytest.fixture(scope="module")
def http(served, key):
    with httpx.Client(base_url=served[0], timeout=300, headers={"Authorization": f"Bearer {key}"}) as client:
        yield client


@pytest.fixture(scope="module")
def cond(stack: Settings):
    return _register(3, stack, name=COND, preset="acgan-spine-small")


@pytest.fixture(scope="module")
def classifier(stack: Settings):
    return _register_classifier(stack)


@pytest.fixture(scope="module")
def segmenter(stack: Settings):
    """An untrained, seeded MONAI U-Net registered as a segmenter: what it answers is checked, not how well."""
    from training.nets.segmenter import get_segmenter_preset
    from training.registry.segmenters import log_segmenter

    torch.manual_seed(0)
    return log_segmenter(get_segmenter_preset("unet-small").build(SEGMENT_CLASSES), SEGMENTER, alias="champion",
                         settings=stack)


@pytest.fixture(scope="module")
def paired(stack: Settings):
    """An untrained, seeded image + mask DCGAN (1 + 4 channels) registered as a generator."""
    import dataclasses

    from training.nets.presets import get_preset
    from training.nets.sampler import GeneratorSampler
    from training.registry.generators import log_generator

    torch.manual_seed(4)
    spec = dataclasses.replace(get_preset("dcgan-fracture-small"), mask_channels=len(SEGMENT_CLASSES))
    generator, _ = spec.build()
    sampler = GeneratorSampler(generator, spec.latent_dim, mask_classes=SEGMENT_CLASSES)
    return log_generator(sampler, PAIRED, alias="champion", settings=stack,
                         tags={"mask_classes": json.dumps(SEGMENT_CLASSES)})


@pytest.fixture(scope="module")
def reference(stack: Settings) -> str:
    from training.catalog.selection import publish_phantom
    from training.catalog.phantom import PhantomSpec

    manifest = publish_phantom(80, PhantomSpec(size=64, seed=5), name=REFERENCE_NAME, settings=stack,
                               progress=lambda _: None)
    return str(manifest.ref)


def _expected(uri: str, stack: Settings, n: int = N, seed: int = SEED, label: int | None = None) -> np.ndarray:
    from training.registry.generators import load_generator

    return load_generator(uri, stack).generate(n, seed, label=label)


def _json_record(stack: Settings, pattern: str, match, timeout_s: float = 20.0) -> dict:
    """The first JSON log line in Ray's session logs (``pattern`` under logs/) that ``match``es.

    Log files are flushed a moment after the request, so this polls.
    """
    from infra.stack import ray_temp_dir

    logs = ray_temp_dir(stack.state_dir) / "session_latest" / "logs"
    deadline = time.monotonic() + timeout_s
    while True:
        for path in sorted(logs.glob(pattern)):
            for line in path.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line[line.index("{"):]) if "{" in line else None
                except ValueError:
                    continue
                if isinstance(record, dict) and match(record):
                    return record
        assert time.monotonic() < deadline, f"no matching JSON line in {logs}/{pattern}"
        time.sleep(0.5)


def _post(http: httpx.Client, **body) -> httpx.Response:
    return http.post("/v1/synthesize", json={"model": f"{NAME}@champion", "n": N, "seed": SEED} | body)


def _error_fields(response: httpx.Response) -> dict[str, str]:
    """{field: message} of a 422 in FastAPI's shape."""
    assert response.status_code == 422, response.text
    return {err["loc"][-1]: err["msg"] for err in response.json()["detail"]}


def _wait_batch(http: httpx.Client, batch_id: str, timeout_s: float = 240) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        state = http.get(f"/v1/batches/{batch_id}").json()
        if state["state"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return state
        time.sleep(1)


@pytest.mark.stack
class TestHttp:
    def test_up_reports_running_and_probes(self, served, http, stack) -> None:
        url, _, _ = served
        assert url == f"http://127.0.0.1:{stack.serve_port}"
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok", "max_sync_images": 256}  # no key needed
        assert httpx.get(f"{url}/readyz").json() == {"status": "ready"}
        state = serve_ops.status(stack)
        assert state["running"] and state["healthy"]
        app = state["applications"]["synthray"]
        assert app["status"] == "RUNNING"
        assert {name: d["status"] for name, d in app["deployments"].items()} == dict.fromkeys(DEPLOYMENTS, "HEALTHY")

    def test_every_v1_route_needs_a_key(self, served, http) -> None:
        spec = http.get("/openapi.json").json()
        routes = [(method, path) for path, ops in spec["paths"].items() if path.startswith("/v1/") for method in ops]
        assert len(routes) >= 11
        for method, path in routes:
            url = served[0] + path.replace("{batch_id}", "b-0123456789abcdef0123")
            for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "Basic abc"}):
                response = httpx.request(method.upper(), url, headers=headers, json={})
                assert response.status_code == 401, (method, path, headers, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
        assert "HTTPBearer" in spec["components"]["securitySchemes"]

    def test_png_zip_matches_the_registered_champion(self, served, http, stack) -> None:
        _, _, champion = served
        response = _post(http, format="png-zip")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/zip"
        images = read_images(response.content)
        assert images.shape == (N, 64, 64) and images.dtype == np.uint8
        np.testing.assert_array_equal(images, _expected(champion.uri, stack))
        with zipfile.ZipFile(io.BytesIO(response.content)) as zf:
            assert len([n for n in zf.namelist() if n.endswith(".png")]) == N
        manifest = read_manifest(response.content)
        assert manifest["synthetic"] is True
        assert manifest["generator"] == {
            "model": NAME, "version": champion.version, "run_id": champion.run_id,
            "uri": f"models:/{NAME}/{champion.version}", "seed": SEED,
        }

    def test_npz_matches_a_pinned_version(self, served, http, stack) -> None:
        _, first, second = served
        response = _post(http, model=f"{NAME}/{first.version}", format="npz")
        assert response.status_code == 200, response.text
        images = read_images(response.content)
        assert images.shape == (N, 64, 64)
        np.testing.assert_array_equal(images, _expected(f"models:/{NAME}/{first.version}", stack))
        # The pinned older version really is another model than the champion.
        assert not np.array_equal(images, _expected(second.uri, stack))
        assert response.headers["x-model-version"] == first.version
        assert read_manifest(response.content)["generator"]["version"] == first.version

    @pytest.mark.parametrize("fmt", ["png-zip", "npz"])
    def test_same_request_same_bytes_other_seed_other_bytes(self, http, fmt) -> None:
        one, two = _post(http, format=fmt), _post(http, format=fmt)
        other = _post(http, format=fmt, seed=SEED + 1)
        assert one.status_code == two.status_code == other.status_code == 200
        assert one.content == two.content
        assert other.content != one.content

    def test_concurrent_requests_are_batched_yet_byte_identical(self, served, http, stack) -> None:
        # Many small requests at once share Serve batches; each must still equal its solo render.
        seeds = list(range(100, 112))
        with ThreadPoolExecutor(len(seeds)) as pool:
            responses = list(pool.map(lambda s: _post(http, n=3, seed=s, format="npz"), seeds))
        generator_uri = served[2].uri
        for seed, response in zip(seeds, responses, strict=True):
            assert response.status_code == 200, response.text
            np.testing.assert_array_equal(read_images(response.content), _expected(generator_uri, stack, 3, seed))

    def test_headers_carry_the_resolved_version_and_run(self, served, http) -> None:
        _, first, second = served
        assert first.version != second.version
        response = http.post(
            "/v1/synthesize",
            json={"model": f"{NAME}@champion", "n": 1, "seed": 11},
            headers={"X-Request-Id": "req-42"},
        )
        assert response.status_code == 200, response.text
        headers = response.headers
        assert headers["x-model-version"] == second.version  # the alias, resolved
        assert headers["x-mlflow-run-id"] == second.run_id
        assert headers["x-model-name"] == NAME
        assert headers["x-seed"] == "11"
        assert headers["x-synthetic"] == "true"
        assert headers.get_list("x-request-id") == ["req-42"]  # echoed once, by the Serve proxy
        generated = _post(http, n=1).headers.get_list("x-request-id")
        assert len(generated) == 1 and generated[0]

    def test_server_timing_says_where_the_time_went(self, served, http) -> None:
        """``Server-Timing`` (ms): the Synthesizer's render and pack happen inside the Api's window,
        which lies inside the client's; the body arrived before anything rendered."""
        started = time.perf_counter()
        response = _post(http, n=8, format="npz")
        client_ms = 1e3 * (time.perf_counter() - started)
        assert response.status_code == 200, response.text
        timing = parse_server_timing(response.headers["server-timing"])
        assert set(timing) == {"render", "pack", "request-body", "api"}, timing
        assert all(ms > 0 for ms in timing.values()), timing
        assert timing["request-body"] + timing["render"] + timing["pack"] < timing["api"] < client_ms, timing
        # Only synthesize says: a study's reader must not tell real from synthetic by timing.
        assert "server-timing" not in http.get("/healthz").headers

    def test_class_of_a_conditional_generator(self, http, cond, stack) -> None:
        by_name = http.post("/v1/synthesize", json={"model": f"{COND}@champion", "n": 4, "seed": 5, "class": "L2",
                                                    "format": "npz"})
        by_index = http.post("/v1/synthesize", json={"model": f"{COND}@champion", "n": 4, "seed": 5, "class": 1,
                                                     "format": "npz"})
        assert by_name.status_code == by_index.status_code == 200, by_name.text
        assert read_images(by_name.content).tobytes() == read_images(by_index.content).tobytes()
        np.testing.assert_array_equal(read_images(by_name.content), _expected(cond.uri, stack, 4, 5, label=1))
        assert read_manifest(by_name.content)["generator"]["class"] == "L2"

    def test_latent_interpolation_and_sweep(self, served, http, stack) -> None:
        from training.registry.generators import load_generator

        sampler = load_generator(served[2].uri, stack)
        body = {"model": f"{NAME}@champion", "seed_a": 1, "seed_b": 2, "steps": 5, "format": "npz"}
        path = http.post("/v1/latent/interpolate", json=body)
        assert path.status_code == 200, path.text
        images = read_images(path.content)
        assert images.shape == (5, 64, 64)
        # The ends of the line are the two seeds' own images.
        np.testing.assert_array_equal(images[0], sampler.generate(1, 1)[0])
        np.testing.assert_array_equal(images[-1], sampler.generate(1, 2)[0])
        sweep = http.post("/v1/latent/sweep", json={"model": f"{NAME}@champion", "seed": 4, "dim": 7, "steps": 3,
                                                    "format": "npz"})
        assert sweep.status_code == 200, sweep.text
        z = sampler.latents(1, 4).repeat(3, 1)
        z[:, 7] = torch.tensor([-4.2, 0.0, 4.2])
        np.testing.assert_array_equal(read_images(sweep.content), sampler.render(z))
        assert read_manifest(sweep.content)["generator"]["range"] == [-4.2, 4.2]

    def test_models_lists_generators_and_classifiers(self, served, http, classifier) -> None:
        listed = {m["name"]: m for m in http.get("/v1/models").json()["models"]}
        assert listed[NAME]["aliases"]["champion"] == served[2].version
        assert listed[NAME]["kind"] == "gan-generator"
        assert listed[CLASSIFIER]["kind"] == "classifier"
        assert listed[CLASSIFIER]["aliases"] == {"champion": classifier.version}

    def test_classify_uploaded_pngs_and_npz(self, http, classifier, stack) -> None:
        from training.catalog.store import encode_png
        from training.registry.classifiers import load_classifier

        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, images=images[:2])
        files = [("files", ("a.png", encode_png(images[2]), "image/png")),
                 ("files", ("b.npz", buffer.getvalue(), "application/octet-stream"))]
        response = http.post("/v1/classify", files=files, data={"model": f"{CLASSIFIER}@champion"})
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert len(results) == 3
        expected = load_classifier(classifier.uri, stack).predict_proba(np.stack([images[2], images[0], images[1]]))
        for row, probs in zip(results, expected, strict=True):
            got = [row["probabilities"][c] for c in ("normal", "fracture")]
            np.testing.assert_allclose(got, probs, rtol=1e-5, atol=1e-6)
            assert row["label"] == ["normal", "fracture"][int(np.argmax(probs))]
            assert row["version"] == classifier.version

    def test_segment_uploaded_images_returns_label_maps_at_their_size(self, http, segmenter, stack) -> None:
        import base64

        from training.catalog.store import decode_png, encode_png
        from training.registry.segmenters import load_segmenter

        rng = np.random.default_rng(1)
        images = [rng.integers(0, 256, (32, 32), dtype=np.uint8), rng.integers(0, 256, (48, 40), dtype=np.uint8)]
        files = [("files", (f"{i}.png", encode_png(img), "image/png")) for i, img in enumerate(images)]
        response = http.post("/v1/segment", files=files, data={"model": f"{SEGMENTER}@champion"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["version"] == segmenter.version and body["classes"] == SEGMENT_CLASSES
        expected = load_segmenter(segmenter.uri, stack).predict(images)
        for row, img, want in zip(body["results"], images, expected, strict=True):
            labels = decode_png(base64.b64decode(row["mask_png"]))
            assert labels.shape == img.shape == (row["height"], row["width"])
            np.testing.assert_array_equal(labels, want)
            assert row["counts"] == {c: int((want == i).sum()) for i, c in enumerate(SEGMENT_CLASSES)}
        again = http.post("/v1/segment", files=files, data={"model": f"{SEGMENTER}/{segmenter.version}"})
        assert again.json()["results"] == body["results"]  # a pinned version answers the same

    def test_image_mask_pairs_over_http_are_byte_identical(self, http, paired, stack) -> None:
        """Issue 26: mask-NNNNN.png next to img-NNNNN.png, a masks array in npz, same request same bytes."""
        from services.serving.packaging import read_masks
        from training.registry.generators import load_generator

        body = {"model": f"{PAIRED}@champion", "n": 3, "seed": 7}
        want_images, want_masks = load_generator(paired.uri, stack).generate_pairs(3, 7)
        for fmt in ("png-zip", "npz"):
            one, two = (http.post("/v1/synthesize", json=body | {"format": fmt}) for _ in range(2))
            assert one.status_code == 200, one.text
            assert one.content == two.content
            np.testing.assert_array_equal(read_images(one.content), want_images)
            np.testing.assert_array_equal(read_masks(one.content), want_masks)
            assert read_manifest(one.content)["generator"]["mask_classes"] == SEGMENT_CLASSES
        zipped = http.post("/v1/synthesize", json=body | {"format": "png-zip"}).content
        with zipfile.ZipFile(io.BytesIO(zipped)) as zf:
            assert sorted(zf.namelist()) == ["img-00000.png", "img-00001.png", "img-00002.png", "manifest.json",
                                             "mask-00000.png", "mask-00001.png", "mask-00002.png"]
        refused = http.post("/v1/synthesize", json=body | {"format": "dicom-zip"})
        assert refused.status_code == 422 and "dicom-zip carries no masks" in refused.text
        filtered = http.post("/v1/synthesize", json=body | {"filter": "near-copy"})
        assert filtered.status_code == 422, filtered.text

    def test_batch_shards_of_a_pair_model_hold_masks(self, http, paired, stack) -> None:
        from services.serving.packaging import read_masks
        from training.registry.generators import load_generator

        submitted = http.post("/v1/batches", json={"model": f"{PAIRED}@champion", "n": 4, "seed": 2})
        assert submitted.status_code == 202, submitted.text
        state = _wait_batch(http, submitted.json()["batch_id"])
        assert state["state"] == "succeeded", state
        shard = httpx.get(state["urls"]["shards"][0], timeout=60).content
        meta = read_manifest(shard)["generator"]
        assert meta["mask_classes"] == SEGMENT_CLASSES and meta["call"].startswith("sampler.generate_pairs")
        images, masks = load_generator(paired.uri, stack).generate_pairs(4, meta["shard_seed"])
        np.testing.assert_array_equal(read_images(shard), images)
        np.testing.assert_array_equal(read_masks(shard), masks)

    def test_fid_of_generated_images_against_a_reference(self, http, reference, served, stack) -> None:

        body = {"reference": reference, "candidate": {"model": f"{NAME}@champion", "n": 40, "seed": 9}}
        response = http.post("/v1/fid", json=body)
        assert response.status_code == 200, response.text
        got = response.json()
        assert set(got) >= {"fid", "n_real", "n_fake", "weights_sha256", "reference_key"}
        assert got["n_fake"] == 40 and 2 <= got["n_real"] <= 80  # the default split of the 80
        assert got["fid"] > 0

    def test_batch_job_end_to_end(self, served, http, reference, stack) -> None:
        body = {"model": f"{NAME}@champion", "n": 60, "seed": 3}  # shards of 25: 25 + 25 + 10
        submitted = http.post("/v1/batches", json=body)
        assert submitted.status_code == 202, submitted.text
        batch_id = submitted.json()["batch_id"]
        assert submitted.headers["location"] == f"/v1/batches/{batch_id}"
        again = http.post("/v1/batches", json=body)  # an idempotent retry of the POST
        assert again.status_code == 202 and again.json()["batch_id"] == batch_id
        state = _wait_batch(http, batch_id)
        assert state["state"] == "succeeded", state
        assert state["progress"]["images_done"] == state["progress"]["images_total"] == 60
        manifest = httpx.get(state["urls"]["manifest"], timeout=60).json()  # presigned: no API key
        assert len(state["urls"]["shards"]) == 3
        assert manifest["synthetic"] is True and manifest["model"]["version"] == served[2].version
        assert [shard["count"] for shard in manifest["shards"]] == [25, 25, 10]
        # Finished: cancel is a no-op, and the batch can be scored.
        assert http.post(f"/v1/batches/{batch_id}/cancel").json()["state"] == "succeeded"
        fid = http.post("/v1/fid", json={"reference": reference, "candidate": {"batch_id": batch_id}})
        assert fid.status_code == 200, fid.text
        assert fid.json()["n_fake"] == 60
        # SYNTHRAY_LOG_FORMAT=json: the coordinator's records are JSON lines with the batch id as
        # the request id, the model version and the elapsed time.
        done = _json_record(stack, "worker-*.err", lambda r: r.get("batch_id") == batch_id
                            and r.get("event") == "succeeded")
        assert done["logger"] == "synthray.batch" and done["request_id"] == batch_id
        assert done["model_version"] == served[2].version and done["elapsed_s"] > 0

    def test_request_logs_are_json_lines(self, served, http, stack) -> None:
        """The Api's request record (Serve's JSON encoding): request id, model version, timing."""
        response = http.post("/v1/synthesize", json={"model": f"{NAME}@champion", "n": 1, "seed": 5},
                             headers={"X-Request-Id": "req-json-7"})
        assert response.status_code == 200, response.text
        record = _json_record(stack, "serve/replica_synthray_Api_*.log",
                              lambda r: r.get("request_id") == "req-json-7" and r.get("message") == "request")
        assert record["model_version"] == served[2].version and record["model"] == NAME
        assert record["status"] == 200 and record["path_template"] == "/v1/synthesize"
        assert 0 < record["duration_ms"] < 300_000 and record["deployment"] == "synthray_Api"
        # The batching warning is fixed at its cause: the Synthesizer replicas (which set
        # max_batch_size at start) never logged it.
        from infra.stack import ray_temp_dir

        logs = sorted((ray_temp_dir(stack.state_dir) / "session_latest" / "logs" / "serve").glob(
            "replica_synthray_Synthesizer_*.log"))
        assert logs and not [p for p in logs if "larger than `max_ongoing_requests`" in p.read_text(errors="replace")]

    def test_alias_swap_under_concurrent_load(self, http, stack) -> None:
        """champion moves while requests run: none fails, each answer is wholly one version."""
        import mlflow

        old = _register(10, stack, name=SWAP)
        body = {"model": f"{SWAP}@champion", "n": 2, "seed": 1, "format": "npz"}
        assert http.post("/v1/synthesize", json=body).headers["x-model-version"] == old.version
        stop = threading.Event()
        seen: list[tuple[float, str, bytes, int]] = []

        def hammer() -> None:
            while not stop.is_set():
                started = time.monotonic()
                response = http.post("/v1/synthesize", json=body)
                seen.append((started, response.headers.get("x-model-version", ""), response.content,
                             response.status_code))

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(2)
        new = _register(11, stack, name=SWAP)  # moves champion in the registry
        reloaded = http.post("/v1/admin/reload")
        after_reload = time.monotonic()
        time.sleep(3)
        stop.set()
        for thread in threads:
            thread.join()
        assert reloaded.status_code == 200 and SWAP in reloaded.json()["moved"]
        assert {status for _, _, _, status in seen} == {200}
        expected = {v.version: _expected(v.version_uri, stack, 2, 1) for v in (old, new)}
        for _, version, content, _ in seen:
            np.testing.assert_array_equal(read_images(content), expected[version])
        versions = [version for _, version, _, _ in seen]
        assert old.version in versions and new.version in versions
        assert {version for started, version, _, _ in seen if started > after_reload} == {new.version}
        # Without a reload, the poll alone picks a move up within its interval.
        mlflow.MlflowClient().set_registered_model_alias(SWAP, "champion", old.version)
        moved_at, deadline = time.monotonic(), time.monotonic() + POLL_S + 30
        while http.post("/v1/synthesize", json=body).headers["x-model-version"] != old.version:
            assert time.monotonic() < deadline, "the poll never picked up the moved alias"
            time.sleep(0.2)
        print(f"alias move seen by the API after {time.monotonic() - moved_at:.1f} s (poll {POLL_S} s)")

    def test_deleted_or_archived_versions_are_404_after_reload_and_poll(self, http, stack) -> None:
        """Issue 21 item 3: the version cache honours deletion and archival (reload and poll alike)."""
        import mlflow

        name = "gan-serve-delete-test"
        _register(20, stack, name=name)
        second = _register(21, stack, name=name)
        third = _register(22, stack, name=name)
        client = mlflow.MlflowClient()
        for version in (second, third):
            body = {"model": f"{name}/{version.version}", "n": 1, "seed": 1, "format": "npz"}
            first = http.post("/v1/synthesize", json=body)
            assert first.status_code == 200 and first.headers["x-model-version"] == version.version
        client.delete_model_version(name, second.version)  # deleted, then an explicit reload
        assert http.post("/v1/admin/reload").status_code == 200
        gone = http.post("/v1/synthesize", json={"model": f"{name}/{second.version}", "n": 1, "seed": 1})
        assert gone.status_code == 404, gone.text
        client.transition_model_version_stage(name, third.version, "Archived")  # archived; only the poll runs
        deadline = time.monotonic() + POLL_S + 30
        body = {"model": f"{name}/{third.version}", "n": 1, "seed": 1, "format": "npz"}
        while (answer := http.post("/v1/synthesize", json=body)).status_code == 200:
            assert time.monotonic() < deadline, "the poll never dropped the archived version"
            time.sleep(0.2)
        assert answer.status_code == 404 and "archived" in answer.text, answer.text

    def test_metrics_count_requests_and_images(self, served, http) -> None:
        _post(http, n=2)
        text = httpx.get(f"{served[0]}/metrics").text
        assert f'synthray_images_generated_total{{endpoint="synthesize",model="{NAME}",version="{served[2].version}"}}' in text
        assert 'synthray_http_requests_total{method="POST",route="/v1/synthesize",status="200"}' in text
        assert 'synthray_http_request_seconds_bucket' in text

    def test_generate_cli_as_a_data_team_uses_it(self, served, stack, tmp_path) -> None:
        out = tmp_path / "set"
        cli = [sys.executable, "-m", "services.cli.main", "generate", "--model", f"{NAME}@champion", "--n", "4",
               "--seed", "3", "--out", str(out)]
        done = subprocess.run(cli, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        pngs = sorted(out.glob("*.png"))
        assert len(pngs) == 4 and (out / "manifest.json").exists()
        from training.catalog.store import decode_png

        np.testing.assert_array_equal(np.stack([decode_png(p.read_bytes()) for p in pngs]),
                                      _expected(served[2].uri, stack, 4, 3))
        refused = subprocess.run(cli + ["--api-key", "nope"], capture_output=True, text=True, timeout=300)
        assert refused.returncode == 1 and "401" in refused.stderr and "invalid API key" in refused.stderr

    def test_generate_cli_above_the_sync_cap_polls_a_batch_and_downloads_its_shards(self, served, tmp_path) -> None:
        """260 > max_sync_images: a batch job (shards of 25) with its two bars, polling then downloading
        (``--verbose`` off a terminal: a line per 5 %, so both bars show even on a fast run)."""
        out = tmp_path / "big"
        done = subprocess.run([sys.executable, "-m", "services.cli.main", "--verbose", "generate", "--model",
                               f"{NAME}@champion", "--n", "260", "--seed", "4", "--out", str(out)],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        batch = re.search(r"^batch (\S+) submitted \(260 images\)$", done.stdout, re.M)
        assert batch, done.stdout
        assert re.search(rf"^batch {batch[1]}: 260/260 img \(100 %\), succeeded", done.stderr, re.M), done.stderr
        assert re.search(rf"^batch {batch[1]}: download: 12/12 file \(100 %\)$", done.stderr, re.M), done.stderr
        assert len(list(out.glob("*.npz"))) == 11 and len(list(out.iterdir())) == 12  # 10 x 25 + 10, and the manifest

    def test_generate_cli_dicom_format_is_marked_synthetic_and_valid(self, served, stack, tmp_path) -> None:
        import pydicom
        from click.testing import CliRunner

        from services.cli.main import main
        from training.catalog.dicom_export import validate

        out = tmp_path / "dicom"
        done = CliRunner().invoke(main, ["generate", "--model", f"{NAME}@champion", "--n", "2", "--seed", "3",
                                         "--out", str(out), "--format", "dicom"])
        assert done.exit_code == 0, done.output
        files = sorted(out.glob("*.dcm"))
        assert len(files) == 2 and json.loads((out / "manifest.json").read_text())["synthetic"] is True
        datasets = [pydicom.dcmread(f) for f in files]
        np.testing.assert_array_equal(np.stack([d.pixel_array for d in datasets]), _expected(served[2].uri, stack, 2, 3))
        for ds in datasets:
            assert ds.ConversionType == "SYN" and list(ds.ImageType) == ["DERIVED", "SECONDARY"]
            assert ds.PatientID == f"SYNTHETIC-{NAME}-v{served[2].version}"[:64]
            assert f"models:/{NAME}/{served[2].version}" in ds.ImageComments and "seed 3" in ds.ImageComments
        output, errors = validate(files[0])
        assert "SCImage" in output and not errors, output

    def test_up_twice_keeps_serving(self, served, http, stack) -> None:
        messages: list[str] = []
        assert serve_ops.up(_json_logs(stack), progress=messages.append) == served[0]
        assert any("RUNNING" in m for m in messages), messages
        assert _post(http, n=1).status_code == 200

# -- bad input: every row is a 4xx that names the field, never a 5xx ---------------------------
def _png_bytes() -> bytes:
    from training.catalog.store import encode_png

    return encode_png(np.zeros((8, 8), np.uint8))


BAD_INPUT = [
    # (id, method, path, request kwargs (model names filled in), status, field or None)
    ("n-zero", "POST", "/v1/synthesize", {"json": {"n": 0}}, 422, "n"),
    ("n-over-cap", "POST", "/v1/synthesize", {"json": {"n": 257}}, 422, "n"),
    ("seed-negative", "POST", "/v1/synthesize", {"json": {"seed": -1}}, 422, "seed"),
    ("format-unknown", "POST", "/v1/synthesize", {"json": {"format": "gif"}}, 422, "format"),
    ("field-unknown", "POST", "/v1/synthesize", {"json": {"colour": "red"}}, 422, "colour"),
    ("model-bare-name", "POST", "/v1/synthesize", {"json": {"model": NAME}}, 422, "model"),
    ("model-version-0", "POST", "/v1/synthesize", {"json": {"model": f"{NAME}/0"}}, 422, "model"),
    ("model-unknown", "POST", "/v1/synthesize", {"json": {"model": f"{NAME}-nope@champion"}}, 404, None),
    ("alias-unknown", "POST", "/v1/synthesize", {"json": {"model": f"{NAME}@no-such-alias"}}, 404, None),
    ("version-unknown", "POST", "/v1/synthesize", {"json": {"model": f"{NAME}/999"}}, 404, None),
    ("class-on-unconditional", "POST", "/v1/synthesize", {"json": {"class": "L1"}}, 422, "class"),
    ("class-unknown-name", "POST", "/v1/synthesize", {"json": {"model": f"{COND}@champion", "class": "L9"}}, 422, "class"),
    ("class-index-too-big", "POST", "/v1/synthesize", {"json": {"model": f"{COND}@champion", "class": 3}}, 422, "class"),
    ("classifier-as-generator", "POST", "/v1/synthesize", {"json": {"model": f"{CLASSIFIER}@champion"}}, 422, "model"),
    ("not-json", "POST", "/v1/synthesize", {"content": b"{not json", "headers": {"content-type": "application/json"}},
     422, None),
    ("body-too-large", "POST", "/v1/synthesize", {"content": b"x" * 1_000_001,
                                                   "headers": {"content-type": "application/json"}}, 413, None),
    ("batch-n-zero", "POST", "/v1/batches", {"json": {"n": 0}}, 422, "n"),
    ("batch-n-over-max", "POST", "/v1/batches", {"json": {"n": 100_001}}, 422, "n"),
    ("batch-per-class-sum", "POST", "/v1/batches", {"json": {"model": f"{COND}@champion", "n": 10,
                                                             "per_class": {"L1": 3}}}, 422, None),
    ("batch-per-class-unconditional", "POST", "/v1/batches", {"json": {"n": 3, "per_class": {"L1": 3}}}, 422,
     "per_class"),
    ("batch-per-class-unknown", "POST", "/v1/batches", {"json": {"model": f"{COND}@champion", "n": 3,
                                                                 "per_class": {"L9": 3}}}, 422, "per_class"),
    ("batch-unknown", "GET", "/v1/batches/b-0123456789abcdef0123", {}, 404, None),
    ("batch-malformed-id", "GET", "/v1/batches/..%2Fetc", {}, 404, None),
    ("cancel-unknown", "POST", "/v1/batches/b-0123456789abcdef0123/cancel", {}, 404, None),
    ("fid-bad-reference", "POST", "/v1/fid", {"json": {"reference": "a:b:c:d", "candidate": {"batch_id": "b-01234567"}}},
     422, "reference"),
    ("fid-unknown-batch", "POST", "/v1/fid", {"json": {"reference": REFERENCE_NAME,
                                                       "candidate": {"batch_id": "b-0123456789abcdef0123"}}}, 404, None),
    ("fid-one-image", "POST", "/v1/fid", {"json": {"reference": REFERENCE_NAME,
                                                   "candidate": {"model": f"{NAME}@champion", "n": 1}}}, 422, "n"),
    ("fid-too-many", "POST", "/v1/fid", {"json": {"reference": REFERENCE_NAME,
                                                  "candidate": {"model": f"{NAME}@champion", "n": 5001}}}, 422,
     "candidate"),
    ("classify-not-an-image", "POST", "/v1/classify", {"files": [("files", ("x.png", b"hello", "image/png"))]}, 422,
     "files"),
    ("classify-no-files", "POST", "/v1/classify", {"data": {"model": f"{CLASSIFIER}@champion"}}, 422, "files"),
    ("classify-unknown-model", "POST", "/v1/classify", {"data": {"model": "nope@champion"},
                                                        "files": [("files", ("a.png", "PNG", "image/png"))]}, 404, None),
    ("classify-generator", "POST", "/v1/classify", {"data": {"model": f"{NAME}@champion"},
                                                    "files": [("files", ("a.png", "PNG", "image/png"))]}, 422, None),
    ("segment-no-files", "POST", "/v1/segment", {"data": {"model": f"{SEGMENTER}@champion"}}, 422, "files"),
    ("segment-not-an-image", "POST", "/v1/segment", {"files": [("files", ("x.png", b"hello", "image/png"))]}, 422,
     "files"),
    ("segment-unknown-model", "POST", "/v1/segment", {"data": {"model": "nope@champion"},
                                                      "files": [("files", ("a.png", "PNG", "image/png"))]}, 404, None),
    ("segment-classifier", "POST", "/v1/segment", {"data": {"model": f"{CLASSIFIER}@champion"},
                                                   "files": [("files", ("a.png", "PNG", "image/png"))]}, 422, None),
    ("segment-generator", "POST", "/v1/segment", {"data": {"model": f"{NAME}@champion"},
                                                  "files": [("files", ("a.png", "PNG", "image/png"))]}, 422, None),
    ("sweep-dim-too-big", "POST", "/v1/latent/sweep", {"json": {"model": f"{NAME}@champion", "seed": 1, "dim": 4000}},
     422, "dim"),
    ("interpolate-one-step", "POST", "/v1/latent/interpolate",
     {"json": {"model": f"{NAME}@champion", "seed_a": 1, "seed_b": 2, "steps": 1}}, 422, "steps"),
]


@pytest.mark.stack
@pytest.mark.parametrize(("method", "path", "kwargs", "status", "field"), [row[1:] for row in BAD_INPUT],
                         ids=[row[0] for row in BAD_INPUT])
def test_bad_input_is_a_4xx_naming_the_field(served, http, cond, classifier, reference, method, path, kwargs,
                                             status, field) -> None:
    kwargs = dict(kwargs)
    if path == "/v1/synthesize" and "json" in kwargs:
        kwargs["json"] = {"model": f"{NAME}@champion", "n": N, "seed": SEED} | kwargs["json"]
    if path == "/v1/batches":
        kwargs["json"] = {"model": f"{NAME}@champion", "n": 3, "seed": 0} | kwargs["json"]
    if "files" in kwargs:
        kwargs["files"] = [(k, (name, _png_bytes() if data == "PNG" else data, media))
                           for k, (name, data, media) in kwargs["files"]]
    response = http.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    if field is not None:
        assert field in {str(err["loc"][-1]) for err in body["detail"]}, body
    else:
        assert body["detail"], body


# -- the one error table over HTTP: each path answers with the status of the class it raises -----
def _error_paths() -> list[tuple]:
    from infra.errors import BadInput, NotFound
    from services.batches.api import BatchNotFound
    from training.catalog.store import DatasetNotFound

    unknown_batch = "b-0123456789abcdef0123"
    return [
        # (id, method, path, request kwargs, the infra.errors class raised on that path, field or None)
        ("422-class-from-synthesizer", "POST", "/v1/synthesize",
         {"json": {"model": f"{NAME}@champion", "n": 1, "seed": 0, "class": "L1"}}, BadInput, "class"),
        ("422-reference-from-fid-scorer", "POST", "/v1/fid",
         {"json": {"reference": "a:b:c:d", "candidate": {"batch_id": unknown_batch}}}, BadInput, "reference"),
        ("422-per-class-from-synthesizer", "POST", "/v1/batches",
         {"json": {"model": f"{NAME}@champion", "n": 3, "seed": 0, "per_class": {"L1": 3}}}, BadInput, "per_class"),
        ("404-model-from-directory", "POST", "/v1/synthesize",
         {"json": {"model": f"{NAME}-nope@champion", "n": 1, "seed": 0}}, NotFound, None),
        ("404-batch-from-api", "GET", f"/v1/batches/{unknown_batch}", {}, NotFound, None),
        ("404-batch-from-fid-scorer", "POST", "/v1/fid",
         {"json": {"reference": REFERENCE_NAME, "candidate": {"batch_id": unknown_batch}}}, BatchNotFound, None),
        ("404-dataset-from-catalog", "POST", "/v1/fid",
         {"json": {"reference": "no-such-dataset", "candidate": {"model": f"{NAME}@champion", "n": 2}}},
         DatasetNotFound, None),
    ]


ERROR_PATHS = _error_paths()


@pytest.mark.stack
@pytest.mark.parametrize(("method", "path", "kwargs", "error", "field"), [row[1:] for row in ERROR_PATHS],
                         ids=[row[0] for row in ERROR_PATHS])
def test_error_paths_answer_with_their_class_status(served, http, reference, method, path, kwargs, error,
                                                    field) -> None:
    """422/404 raised or returned anywhere behind the Api come out with the class's http_status."""
    response = http.request(method, path, **kwargs)
    assert response.status_code == error.http_status, response.text
    detail = response.json()["detail"]
    if field is not None:  # a 422 naming its field: FastAPI's validation shape
        assert [err["loc"] for err in detail] == [["body", field]], detail
    else:
        assert isinstance(detail, str) and detail, detail
    assert "retry-after" not in response.headers


@pytest.mark.stack
def test_scoring_an_unfinished_batch_is_a_conflict(served, http, reference) -> None:
    """409: the batch exists but has not succeeded (cancelled at once), so it has no images to score."""
    from infra.errors import Conflict
    from services.batches.api import BatchNotReady

    submitted = http.post("/v1/batches", json={"model": f"{NAME}@champion", "n": 2000, "seed": 4242})
    assert submitted.status_code == 202, submitted.text
    batch_id = submitted.json()["batch_id"]
    cancelled = http.post(f"/v1/batches/{batch_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled", cancelled.text
    response = http.post("/v1/fid", json={"reference": reference, "candidate": {"batch_id": batch_id}})
    assert response.status_code == BatchNotReady.http_status == Conflict.http_status == 409, response.text
    assert "cancelled, not succeeded" in response.json()["detail"]


# -- schemathesis against the served OpenAPI spec ------------------------------------------------
# Driven through hypothesis directly (schemathesis' pytest plugin does not run under pytest 9).
FUZZ_EXAMPLES = 8  # per operation: bounded, on loopback


@pytest.mark.stack
def test_openapi_fuzz_never_a_server_error(served, key) -> None:
    schema = schemathesis.openapi.from_url(f"{served[0]}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14
    auth = {"Authorization": f"Bearer {key}"}
    calls: list[str] = []
    for operation in operations:
        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                             suppress_health_check=list(hypothesis.HealthCheck))
        def fuzz(case) -> None:
            response = case.call(base_url=served[0], headers=auth, timeout=120)
            calls.append(f"{case.method} {case.path} {response.status_code}")
            case.validate_response(response, checks=[schemathesis.checks.not_a_server_error])

        fuzz()
    print(f"schemathesis: {len(calls)} requests, statuses {sorted({c.rsplit(' ', 1)[1] for c in calls})}")
    assert len(calls) >= len(operations)


# Issue 21 item 4: the string and number fields schemathesis' generic strategies rarely reach:
# non-ASCII digits ("²".isdigit() is True, int("²") raises), very long digit strings, and
# numbers far beyond int64. Each request is one of the kinds; none may answer 5xx.
_NON_ASCII_DIGITS = "²³¹٣۴߅०১੨૩୪௫౬೭൮๙໑༢၃႔០᠑᥆᧕᪀᭒᮳᱄᱕꘠꣐꤁꧑꩓꯰０"
_ODD_STRINGS = hypothesis.strategies.one_of(
    hypothesis.strategies.text(alphabet=_NON_ASCII_DIGITS, min_size=1, max_size=4),
    hypothesis.strategies.integers(min_value=10**18, max_value=10**400).map(str),  # long digit strings
    hypothesis.strategies.text(alphabet="0123456789" + _NON_ASCII_DIGITS, min_size=300, max_size=2000),
)
_ODD_NUMBERS = hypothesis.strategies.one_of(
    hypothesis.strategies.integers(min_value=2**63, max_value=10**60),
    hypothesis.strategies.integers(max_value=-1, min_value=-(10**60)),
    hypothesis.strategies.floats(allow_nan=False, allow_infinity=False, min_value=1e19, max_value=1e300),
)


@pytest.mark.stack
def test_odd_digits_and_huge_numbers_are_never_a_server_error(served, http, reference) -> None:
    model = f"{NAME}@champion"
    statuses: list[int] = []

    @hypothesis.given(text=_ODD_STRINGS, number=_ODD_NUMBERS)
    @hypothesis.settings(max_examples=FUZZ_EXAMPLES * 2, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    def fuzz(text: str, number) -> None:
        requests = [
            ("/v1/synthesize", {"model": model, "n": 1, "seed": 1, "class": text}),
            ("/v1/synthesize", {"model": model, "n": 1, "seed": number}),
            ("/v1/synthesize", {"model": model, "n": number, "seed": 1}),
            ("/v1/synthesize", {"model": f"{NAME}/{text}", "n": 1, "seed": 1}),
            ("/v1/batches", {"model": model, "n": 2, "seed": 1, "per_class": {text: 1}}),
            ("/v1/latent/sweep", {"model": model, "seed": 1, "dim": number}),
            ("/v1/fid", {"reference": f"{reference}:{text}", "candidate": {"model": model, "n": 2, "seed": 1}}),
        ]
        for path, body in requests:
            response = http.post(path, json=body)
            statuses.append(response.status_code)
            assert response.status_code < 500, (path, body, response.status_code, response.text[:300])

    fuzz()
    assert statuses and all(400 <= s < 500 for s in statuses), sorted(set(statuses))


# -- near-copy filter over HTTP (issue 29) ------------------------------------------------------
PLANTED, FRESH = "gan-serve-planted-copier", "gan-serve-fresh-bank"


@pytest.fixture(scope="module")
def privacy_models(stack: Settings, reference: str):
    """A half-copying generator over 8 training images (index packed, default filter none) and a
    fresh one (new phantoms, default filter near-copy); returns (planted sampler, fresh sampler,
    training pixels, index). 64-d Inception features keep the replicas' filtering cheap."""
    import tempfile
    from pathlib import Path

    from training.catalog.phantom import PhantomSpec, make_phantom
    from training.evaluate import reference_images, reference_statistics
    from training.evaluate.nearcopy import INDEX_FILE, NearCopyIndex
    from training.nets.bank import BankGenerator
    from training.nets.sampler import GeneratorSampler
    from training.registry.generators import log_generator
    from training.registry.privacy import privacy_tags

    ref = reference_statistics(reference, split="train", n=8, settings=stack, dims=64)
    train = reference_images(ref, settings=stack)
    index = NearCopyIndex.from_reference(ref)
    fresh_bank = np.stack([p.pixels for p in make_phantom(8, PhantomSpec(size=64, seed=777))])
    samplers = {PLANTED: (GeneratorSampler(BankGenerator(train, 0.5), 8), "none"),
                FRESH: (GeneratorSampler(BankGenerator(fresh_bank, 1.0), 8), "near-copy")}
    for name, (sampler, default) in samplers.items():
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / INDEX_FILE).write_bytes(index.to_bytes())
            log_generator(sampler, name, alias="champion", tags=privacy_tags(None, index, default),
                          card_dir=Path(tmp), settings=stack)
    return samplers[PLANTED][0], samplers[FRESH][0], train, index


def _copies(images: np.ndarray, train: np.ndarray) -> list[int]:
    return [i for i, img in enumerate(images) if any(np.array_equal(img, t) for t in train)]


@pytest.mark.stack
def test_near_copy_filter_rejects_planted_copies_reproducibly(served, http, privacy_models, stack) -> None:
    from training.evaluate.nearcopy import embedder, filtered_generate

    planted, _, train, index = privacy_models
    body = {"model": f"{PLANTED}@champion", "n": 6, "seed": 11, "format": "npz"}
    raw = planted.generate(6, 11)
    assert len(_copies(raw, train)) >= 2  # unfiltered, the planted generator leaks (its default is none)
    plain = http.post("/v1/synthesize", json=body)
    assert plain.status_code == 200 and plain.headers["x-filter"] == "none"
    assert np.array_equal(read_images(plain.content), raw) and "x-near-copy-rejected" not in plain.headers

    first = http.post("/v1/synthesize", json=body | {"filter": "near-copy"})
    second = http.post("/v1/synthesize", json=body | {"filter": "near-copy"})
    assert first.status_code == 200, first.text
    assert first.content == second.content  # the same request, the same bytes
    images = read_images(first.content)
    assert _copies(images, train) == []  # every planted copy was rejected
    expected, report = filtered_generate(planted, 6, 11, index, embedder(index, stack))
    assert np.array_equal(images, expected)
    assert int(first.headers["x-near-copy-rejected"]) == report.rejected >= len(_copies(raw, train))
    assert first.headers["x-near-copy-replacement-seed"] == str(report.replacement_seed)
    assert read_manifest(first.content)["generator"]["filter"]["rejected_rows"] == _copies(raw, train)


@pytest.mark.stack
def test_fresh_generator_loses_nothing_under_its_default_filter(served, http, privacy_models) -> None:
    _, fresh, _, _ = privacy_models
    response = http.post("/v1/synthesize", json={"model": f"{FRESH}@champion", "n": 6, "seed": 11, "format": "npz"})
    assert response.status_code == 200, response.text
    assert response.headers["x-filter"] == "near-copy" and response.headers["x-near-copy-rejected"] == "0"
    assert np.array_equal(read_images(response.content), fresh.generate(6, 11))


@pytest.mark.stack
def test_filtered_batch_counts_rejections_in_its_manifest(served, http, privacy_models) -> None:
    _, _, train, _ = privacy_models
    body = {"model": f"{PLANTED}@champion", "n": 8, "seed": 4, "filter": "near-copy"}
    submitted = http.post("/v1/batches", json=body)
    assert submitted.status_code == 202, submitted.text
    from services.batches.ids import BatchModel, batch_id

    model = BatchModel(PLANTED, submitted.json()["model"]["version"], None)
    assert batch_id(model, 8, 4, None) != submitted.json()["batch_id"]  # other pixels, another batch
    assert batch_id(model, 8, 4, None, "near-copy", 1.0) == submitted.json()["batch_id"]
    state = _wait_batch(http, submitted.json()["batch_id"])
    assert state["state"] == "succeeded", state
    manifest = httpx.get(state["urls"]["manifest"], timeout=60).json()
    assert manifest["filter"] == "near-copy" and manifest["near_copy_rejected"] >= 1
    assert manifest["near_copy_rejected"] == sum(row["near_copy"]["rejected"] for row in manifest["shards"])
    shards = [read_images(httpx.get(url, timeout=60).content) for url in state["urls"]["shards"]]
    assert sum(len(s) for s in shards) == 8 and all(_copies(s, train) == [] for s in shards)


@pytest.mark.stack
@pytest.mark.parametrize(("path", "extra", "field"), [
    ("/v1/synthesize", {"filter": "nearcopy"}, "filter"),
    ("/v1/synthesize", {"filter": "near-copy", "filter_percentile": 0}, "filter_percentile"),
    ("/v1/synthesize", {"filter": "near-copy", "filter_percentile": 75}, "filter_percentile"),
    ("/v1/synthesize", {"filter": "near-copy", "filter_percentile": "x"}, "filter_percentile"),
    ("/v1/synthesize", {"filter_percentile": 5}, "filter_percentile"),  # the default filter is none
    ("/v1/batches", {"filter": 3}, "filter"),
    ("/v1/synthesize", {"filter": "near-copy", "model": f"{NAME}@champion"}, "filter"),  # no index
    ("/v1/batches", {"filter": "near-copy", "model": f"{NAME}@champion"}, "filter"),
])
def test_bad_filter_is_a_422_naming_the_field(served, http, privacy_models, path, extra, field) -> None:
    response = http.post(path, json={"model": f"{PLANTED}@champion", "n": 2, "seed": 0} | extra)
    assert field in _error_fields(response), response.text


@pytest.mark.stack
def test_generate_cli_passes_the_filter(served, key, privacy_models, tmp_path) -> None:
    from click.testing import CliRunner

    from services.cli.main import main

    _, _, train, _ = privacy_models
    out = CliRunner().invoke(main, ["generate", "--model", f"{PLANTED}@champion", "--n", "6", "--seed", "11",
                                    "--filter", "near-copy", "--out", str(tmp_path), "--url", served[0],
                                    "--api-key", key], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert re.search(r"near-copy filter: [1-9]\d* near copies rejected", out.output), out.output
    from PIL import Image

    images = np.stack([np.asarray(Image.open(p)) for p in sorted(tmp_path.glob("*.png"))])
    assert len(images) == 6 and _copies(images, train) == []


# -- last: stopping ---------------------------------------------------------------------------
# -- a multi-label conditional GAN (chest paper's multi-hot conditions), trained and served ------
MULTI = "gan-serve-test-chest-acgan"
FINDINGS = ["Atelectasis", "Effusion", "Pneumonia"]


@pytest.fixture(scope="module")
def multilabel_gan(stack: Settings, tmp_path_factory):
    """acgan-spine-small trained one short epoch on the NIH-style chest phantom (3 findings), registered."""
    from training.catalog.chest_phantom import write_chest_phantom
    from training.catalog.ingest import IngestOptions, ingest
    from training.catalog.selection import catalog
    from training.gan.trainer import GanTrainConfig, train_gan
    from training.registry.generators import log_generator

    table = write_chest_phantom(tmp_path_factory.mktemp("chest"), 48, size=64, seed=7)
    options = IngestOptions(name="chest-serve-test", layout="nih-cxr14", preset="none", classes=FINDINGS)
    manifest = ingest(table, options, catalog(stack), lambda _: None).manifest
    cfg = GanTrainConfig(dataset=str(manifest.ref), arch="acgan-spine-small", epochs=1, workers=1, batch_size=16,
                         grid_size=4, fid_every=1, fid_n=16, split=None)
    result = train_gan(cfg, settings=stack, progress=lambda _: None)
    tags = {"classes": json.dumps(FINDINGS), "conditional": "True"}
    return result, log_generator(result.sampler, MULTI, alias="champion", tags=tags, settings=stack)


@pytest.mark.stack
def test_multilabel_gan_trains_on_multi_hot_and_serves_labels(served, http, multilabel_gan, stack) -> None:
    from training.registry.generators import load_generator

    result, registered = multilabel_gan
    sampler = load_generator(registered.uri, stack)
    assert result.sampler.is_multilabel and sampler.is_multilabel and sampler.num_classes == 3
    assert result.metrics["loss_class"] > 0  # the multi-label AC term was trained on (BCE over findings)
    # FID copied the reference's label sets (multi-hot conditions), n_fake = n_real
    assert np.isfinite(result.metrics["fid"]) and result.metrics["fid_n_fake"] == result.metrics["fid_n_real"] == 16
    body = {"model": f"{MULTI}@champion", "n": 3, "seed": 4, "labels": [1, 0, 1], "format": "npz"}
    ok = http.post("/v1/synthesize", json=body)
    assert ok.status_code == 200, ok.text
    np.testing.assert_array_equal(read_images(ok.content), sampler.generate(3, 4, label=[1, 0, 1]))
    assert read_manifest(ok.content)["generator"]["labels"] == [1, 0, 1]
    other = http.post("/v1/synthesize", json=body | {"labels": [0, 1, 0]})
    assert read_images(other.content).tobytes() != read_images(ok.content).tobytes()  # the condition matters
    # interpolate and sweep take the same condition
    line = http.post("/v1/latent/interpolate", json={"model": f"{MULTI}@champion", "seed_a": 4, "seed_b": 5,
                                                     "steps": 3, "labels": [1, 0, 1], "format": "npz"})
    assert line.status_code == 200, line.text
    np.testing.assert_array_equal(read_images(line.content)[0], sampler.generate(1, 4, label=[1, 0, 1])[0])
    for labels, words in (([1, 0], "3 entries"), ([1, 0, 2], "less than or equal to 1"), ([1, True, 0], "integer")):
        bad = http.post("/v1/synthesize", json=body | {"labels": labels})
        assert bad.status_code == 422, bad.text
        assert any("labels" in map(str, e["loc"]) and words in e["msg"] for e in bad.json()["detail"]), bad.text
    for model, extra, field in ((f"{NAME}@champion", {"labels": [1, 0, 1]}, "labels"),
                                (f"{MULTI}@champion", {"labels": None, "class": "Effusion"}, "class")):
        bad = http.post("/v1/synthesize", json=body | {"model": model} | extra)
        assert bad.status_code == 422 and field in _error_fields(bad), bad.text


@pytest.mark.stack
def test_label_transition_frames_and_difference_maps(served, http, multilabel_gan, stack) -> None:
    from training.registry.generators import load_generator

    _, registered = multilabel_gan
    sampler = load_generator(registered.uri, stack)
    body = {"model": f"{MULTI}@champion", "seed": 9, "condition": "Pneumonia", "steps": 5, "labels": [1, 0, 0],
            "format": "npz"}
    got = http.post("/v1/latent/transition", json=body)
    assert got.status_code == 200, got.text
    images, meta = read_images(got.content), read_manifest(got.content)["generator"]
    frames, maps = images[:5], images[5:]
    assert images.shape == (10, 64, 64) and meta["values"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    # z fixed, condition moved: the ends are the plain [1,0,0] and [1,0,1] images of that seed
    np.testing.assert_array_equal(frames[0], sampler.generate(1, 9, label=[1, 0, 0])[0])
    np.testing.assert_array_equal(frames[-1], sampler.generate(1, 9, label=[1, 0, 1])[0])
    expected = (frames.astype(np.int16) - frames[0].astype(np.int16) + 255) // 2
    np.testing.assert_array_equal(maps, expected.astype(np.uint8))
    assert (maps[0] == 127).all() and (maps[-1] != 127).any()
    for extra, field in (({"condition": "Flu"}, "condition"), ({"condition": 3}, "condition"),
                         ({"model": f"{NAME}@champion"}, "model"), ({"labels": [1, 1]}, "labels")):
        bad = http.post("/v1/latent/transition", json=body | extra)
        assert bad.status_code == 422 and field in _error_fields(bad), (extra, bad.text)


@pytest.mark.stack
def test_generate_cli_takes_multi_hot_labels(served, multilabel_gan, stack, tmp_path) -> None:
    from click.testing import CliRunner

    from services.cli.main import main
    from training.catalog.store import decode_png
    from training.registry.generators import load_generator

    out = CliRunner().invoke(main, ["generate", "--model", f"{MULTI}@champion", "--n", "2", "--seed", "1",
                                    "--labels", "1,0,1", "--out", str(tmp_path)])
    assert out.exit_code == 0, out.output
    pngs = sorted(tmp_path.glob("*.png"))
    np.testing.assert_array_equal(np.stack([decode_png(p.read_bytes()) for p in pngs]),
                                  load_generator(multilabel_gan[1].uri, stack).generate(2, 1, label=[1, 0, 1]))
    bad = CliRunner().invoke(main, ["generate", "--model", f"{MULTI}@champion", "--n", "2", "--labels", "1,x",
                                    "--out", str(tmp_path)])
    assert bad.exit_code != 0 and "--labels" in bad.output


@pytest.mark.stack
def test_zz_down_stops_serving(served, stack) -> None:
    serve_ops.down(stack, progress=lambda _: None)
    assert serve_ops.status(stack)["running"] is False
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{served[0]}/healthz", timeout=5)
    messages: list[str] = []
    serve_ops.down(stack, progress=messages.append)  # second down: a no-op
    assert messages == ["Ray Serve is not running"]

