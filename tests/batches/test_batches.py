"""Batch jobs (POST /v1/batches backend) on a real stack: Ray tasks, SeaweedFS objects, MLflow registry.

Two small untrained generators are registered (unconditional and a 3-class AC-GAN); batches
use 500-image shards so a few thousand images make several shards on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from infra.settings import PROJECT_ROOT, Settings
from services.batches import api as bj
from services.serving.packaging import read_images, read_manifest

UNCOND, COND = "gan-batch-test-wgan-gp-knee-small", "gan-batch-test-acgan-spine-small"
SHARD = 500


# -- pure functions (no stack) -----------------------------------------------------------------
MODEL = bj.BatchModel("gan-x", "3", "r1")


def test_batch_id_is_a_content_hash_of_the_resolved_request() -> None:
    first = bj.batch_id(MODEL, 1000, 7, None)
    assert first == bj.batch_id(bj.BatchModel("gan-x", "3", "another-run"), 1000, 7, None)
    assert first.startswith("b-") and len(first) == 22
    others = {bj.batch_id(bj.BatchModel("gan-x", "4", "r1"), 1000, 7, None), bj.batch_id(MODEL, 1001, 7, None),
              bj.batch_id(MODEL, 1000, 8, None), bj.batch_id(MODEL, 1000, 7, {0: 1000})}
    assert first not in others and len(others) == 4
    # Key order, string keys and zero counts do not change the request.
    assert bj.batch_id(MODEL, 10, 1, {2: 4, 0: 6}) == bj.batch_id(MODEL, 10, 1, {"0": 6, "2": 4, 1: 0})


def test_shard_plan_and_seed_rule() -> None:
    shards = bj.plan_shards("b-" + "0" * 20, 1200, 7, ((0, 700), (2, 500)), 500)
    assert [(s.label, s.k, s.count, s.offset) for s in shards] == [(0, 0, 500, 0), (0, 1, 200, 500), (2, 0, 500, 700)]
    assert [s.key.rsplit("/", 1)[1] for s in shards] == ["0-000000.npz", "0-000001.npz", "2-000000.npz"]
    expected = int(np.random.SeedSequence([7, 3, 0]).generate_state(1, np.uint64)[0]) & (2**63 - 1)
    assert shards[2].seed == bj.shard_seed(7, 2, 0) == expected
    (single,) = bj.plan_shards("b-" + "0" * 20, 3, 7, None, 500)
    assert single.seed == bj.shard_seed(7, None, 0) and single.key.endswith("/shards/all-000000.npz")
    assert len({s.seed for s in bj.plan_shards("b-" + "0" * 20, 10_000, 1, None, 100)}) == 100


@pytest.mark.parametrize(
    ("n", "per_class", "match"),
    [(10, {0: 4, 1: 5}, "per_class counts sum to 9, but n is 10"), (10, {}, "per_class"),
     (10, {-1: 10}, "per_class"), (10, {"x": 10}, "per_class"), (10, {0: -1, 1: 11}, "per_class"),
     (0, None, "n must be"), (11, None, "batch_max_images")],
)
def test_invalid_requests_name_the_field(n, per_class, match) -> None:
    settings = Settings(batch_max_images=10)
    with pytest.raises(ValueError, match=match):
        bj.submit(MODEL, n, 1, per_class, settings)


def test_importing_the_module_does_not_import_torch() -> None:
    code = "import sys, services.batches.api; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT).returncode == 0


def test_shard_threads_share_the_node_among_the_shards_that_fit() -> None:
    """A lone shard on a node uses every usable CPU (Ray would give it one thread per reserved
    CPU); many shards on one node get their reserved CPUs' worth, never fewer."""
    from infra.cpus import available_cpus
    from services.batches.shard import shard_threads

    cpus = available_cpus()
    assert shard_threads(1.0, 1) == cpus
    assert shard_threads(0.5, 2) == max(1, cpus // 2)
    assert shard_threads(1.0, 10 * cpus) == 1
    assert shard_threads(2.5, 10 * cpus) == 3


# -- the real stack ------------------------------------------------------------------------------
def _register(stack: Settings, name: str, arch: str, conditional: bool):
    import torch

    from training.registry.generators import log_generator
    from training.nets.presets import get_preset
    from training.nets.sampler import GeneratorSampler

    torch.manual_seed(5)
    preset = get_preset(arch)
    generator, _ = preset.build()
    sampler = GeneratorSampler(generator, preset.latent_dim, num_classes=preset.num_classes if conditional else None)
    reg = log_generator(sampler, name, alias="champion", settings=stack)
    return bj.BatchModel(reg.name, reg.version, reg.run_id)


@pytest.fixture(scope="module")
def small(stack: Settings) -> Settings:
    return stack.model_copy(update={"batch_shard_size": SHARD})


@pytest.fixture(scope="module")
def uncond(stack: Settings) -> bj.BatchModel:
    return _register(stack, UNCOND, "wgan-gp-knee-small", conditional=False)


@pytest.fixture(scope="module")
def cond(stack: Settings) -> bj.BatchModel:
    return _register(stack, COND, "acgan-spine-small", conditional=True)


def _wait(batch: str, settings: Settings, until=lambda s: s["state"] in bj.TERMINAL, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        status = bj.get_status(batch, settings)
        assert status is not None
        if until(status):
            return status
        assert time.monotonic() < deadline, f"batch {batch} stuck: {status}"
        time.sleep(0.25)


def _generate(model: bj.BatchModel, stack: Settings, count: int, seed: int, label: int | None = None) -> np.ndarray:
    from training.registry.generators import load_generator

    return load_generator(model.uri, stack).generate(count, seed, label=label)


@pytest.fixture(scope="module")
def finished(uncond, small, store):
    """2,500 images in 5 shards; shard 2's first attempt is killed (test hook) and retried by Ray."""
    status = bj.submit(uncond, 2500, 7, None, small, fail_once=2)
    assert status["state"] in (bj.QUEUED, bj.RUNNING) and status["progress"]["shards_total"] == 5
    return _wait(status["batch_id"], small)


@pytest.mark.stack
class TestBatch:
    def test_succeeds_with_a_verifiable_manifest(self, finished, uncond, store) -> None:
        bid = finished["batch_id"]
        assert finished["state"] == bj.SUCCEEDED, finished
        assert finished["progress"] | {"images_per_s": 0} == {
            "shards_done": 5, "shards_total": 5, "shards_reused": 0, "images_done": 2500, "images_total": 2500,
            "images_per_s": 0}
        assert finished["manifest_uri"] == store.uri(f"synthetic/{bid}/manifest.json")
        manifest = json.loads(store.get_bytes(bj.manifest_key(bid)))
        assert manifest["synthetic"] is True and manifest["count"] == 2500 and manifest["totals"] == {"all": 2500}
        assert manifest["model"] == {"name": UNCOND, "version": uncond.version, "run_id": uncond.run_id,
                                     "uri": uncond.uri}
        assert [r["key"] for r in manifest["shards"]] == [f"synthetic/{bid}/shards/all-{k:06d}.npz" for k in range(5)]
        for row, (key, data) in zip(manifest["shards"], store.get_many(r["key"] for r in manifest["shards"]),
                                    strict=True):
            assert hashlib.sha256(data).hexdigest() == row["sha256"], key
            assert row["count"] == 500 and row["shard_seed"] == bj.shard_seed(7, None, row["k"])
            images = read_images(data)
            assert hashlib.sha256(images.tobytes()).hexdigest() == row["sha256_pixels"]
            embedded = read_manifest(data)
            assert embedded["synthetic"] is True and embedded["generator"]["shard_seed"] == row["shard_seed"]

    def test_the_killed_shard_was_retried_with_the_same_images(self, finished, uncond, stack, store) -> None:
        bid = finished["batch_id"]
        assert store.exists(f"_test-hooks/batches/{bid}/fail-once-000002")  # its first attempt died
        retried = read_images(store.get_bytes(f"synthetic/{bid}/shards/all-000002.npz"))
        np.testing.assert_array_equal(retried, _generate(uncond, stack, 500, bj.shard_seed(7, None, 2)))

    def test_every_object_is_marked_synthetic(self, finished, uncond, store) -> None:
        bid = finished["batch_id"]
        base = {"synthetic": "true", "model": UNCOND, "model-version": uncond.version, "run-id": uncond.run_id,
                "seed": "7", "batch-id": bid}
        for key in (bj.manifest_key(bid), bj.status_key(bid)):
            assert store.head(key)["Metadata"].items() >= base.items(), key
        meta = store.head(f"synthetic/{bid}/shards/all-000003.npz")["Metadata"]
        assert meta.items() >= (base | {"shard": "3", "class": "all", "count": "500",
                                        "shard-seed": str(bj.shard_seed(7, None, 3))}).items()

    def test_presigned_urls_and_load_images(self, finished, small, store) -> None:
        bid = finished["batch_id"]
        urls = finished["urls"]
        assert len(urls["shards"]) == 5 and urls["expires_in_s"] == small.batch_url_ttl_s
        assert httpx.get(urls["manifest"]).content == store.get_bytes(bj.manifest_key(bid))
        assert httpx.get(urls["shards"][4]).content == store.get_bytes(f"synthetic/{bid}/shards/all-000004.npz")
        first = bj.load_images(bid, small, limit=600)
        assert first.shape == (600, 64, 64) and first.dtype == np.uint8
        np.testing.assert_array_equal(first[500:], read_images(store.get_bytes(
            f"synthetic/{bid}/shards/all-000001.npz"))[:100])

    def test_resubmitting_returns_the_same_batch_without_regenerating(self, finished, uncond, stack, store) -> None:
        bid = finished["batch_id"]
        keys = sorted(store.list_keys(f"synthetic/{bid}/"))
        stamps = {k: store.head(k)["LastModified"] for k in keys}
        # Another shard size in the settings: the batch keeps the layout it was made with.
        again = bj.submit(uncond, 2500, 7, None, stack)
        assert again["batch_id"] == bid == bj.batch_id(uncond, 2500, 7, None)
        assert again["state"] == bj.SUCCEEDED and again["shard_size"] == SHARD
        assert {k: store.head(k)["LastModified"] for k in store.list_keys(f"synthetic/{bid}/")} == stamps
        assert bj.cancel(bid, stack)["state"] == bj.SUCCEEDED  # finished: cancel is a no-op

    def test_status_from_another_process(self, finished, stack) -> None:
        code = ("import json, sys; from infra.settings import get_settings; from services.batches.api import get_status;"
                "s = get_status(sys.argv[1], get_settings()); print(json.dumps([s['state'], s['progress']]))")
        out = subprocess.run([sys.executable, "-c", code, finished["batch_id"]], cwd=PROJECT_ROOT, check=True,
                             capture_output=True, text=True, timeout=120).stdout
        assert json.loads(out.strip().splitlines()[-1]) == [bj.SUCCEEDED, finished["progress"]]

    def test_cancel_stops_the_batch_and_resubmitting_resumes_it(self, uncond, stack, store) -> None:
        small = stack.model_copy(update={"batch_shard_size": 125})  # 8 shards, cheap to cancel and resume
        status = bj.submit(uncond, 1000, 11, None, small)
        bid = status["batch_id"]
        _wait(bid, small, until=lambda s: s["progress"]["shards_done"] >= 1 or s["state"] in bj.TERMINAL)
        cancelled = bj.cancel(bid, small)
        assert cancelled["state"] == bj.CANCELLED and cancelled["manifest_uri"] is None
        # The coordinator winds down and exits; status.json keeps the final word.
        final = _wait(bid, small, until=lambda s: bj._actor(bid) is None)
        assert final["state"] == bj.CANCELLED and final["progress"]["shards_done"] < 8
        written = set(store.list_keys(f"synthetic/{bid}/shards/"))
        time.sleep(2)
        assert set(store.list_keys(f"synthetic/{bid}/shards/")) == written  # nothing runs any more
        assert not store.exists(bj.manifest_key(bid)) and bj.get_status(bid, small)["urls"] is None
        with pytest.raises(ValueError, match="cancelled, not succeeded"):
            bj.load_images(bid, small)

        resumed = bj.submit(uncond, 1000, 11, None, small)
        assert resumed["batch_id"] == bid and resumed["runs"] == 2
        done = _wait(bid, small)
        assert done["state"] == bj.SUCCEEDED and done["progress"]["images_done"] == 1000
        assert done["progress"]["shards_reused"] == len(written) >= 1
        assert json.loads(store.get_bytes(bj.manifest_key(bid)))["count"] == 1000

    def test_per_class_on_a_conditional_generator(self, cond, small, stack, store) -> None:
        with pytest.raises(ValueError, match="per_class"):
            bj.submit(cond, 700, 3, {0: 600, 2: 99}, small)
        bid = bj.submit(cond, 700, 3, {0: 600, 2: 100}, small)["batch_id"]
        done = _wait(bid, small)
        assert done["state"] == bj.SUCCEEDED, done
        manifest = json.loads(store.get_bytes(bj.manifest_key(bid)))
        assert manifest["totals"] == {"0": 600, "2": 100} and manifest["per_class"] == {"0": 600, "2": 100}
        assert [(r["class"], r["k"], r["count"]) for r in manifest["shards"]] == [(0, 0, 500), (0, 1, 100), (2, 0, 100)]
        images = bj.load_images(bid, small)
        assert images.shape == (700, 64, 64)
        np.testing.assert_array_equal(images[600:], _generate(cond, stack, 100, bj.shard_seed(3, 2, 0), label=2))
        assert store.head(f"synthetic/{bid}/shards/2-000000.npz")["Metadata"]["class"] == "2"

    def test_per_class_on_an_unconditional_generator_fails_the_batch(self, uncond, small) -> None:
        bid = bj.submit(uncond, 10, 1, {0: 10}, small)["batch_id"]
        failed = _wait(bid, small)
        assert failed["state"] == bj.FAILED and "per_class" in failed["error"] and "unconditional" in failed["error"]

    def test_unknown_batches_are_none(self, stack) -> None:
        for bid in ("b-" + "0" * 20, "b-nothex", "../etc", ""):
            assert bj.get_status(bid, stack) is None
            assert bj.cancel(bid, stack) is None
        with pytest.raises(ValueError, match="unknown batch"):
            bj.load_images("b-" + "0" * 20, stack)
