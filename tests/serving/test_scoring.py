"""Scoring: served FID against catalog references, served classifiers, and upload decoding.

The deployments are exercised as plain classes (``Deployment.func_or_class``) against the
real stack; ``@serve.multiplexed`` needs a Serve replica, so the in-process classifier swaps
only that cache for a plain loader, and one test deploys ``Classifier`` on real Serve.
"""

from __future__ import annotations

import asyncio
import io
import sys
import types

import numpy as np
import pytest

from infra.errors import Conflict, SynthrayError
from infra.settings import Settings
from services.serving.classifier import Classifier, ClassifierRef
from services.serving.fid_scorer import FidScorer
from services.serving.uploads import MAX_PIXELS, UploadError, decode_upload, decode_uploads

DATASET = "phantom-metrics"  # the metrics tests' phantom: same spec, same version
DIMS = 64  # Inception block of the in-process scorer (see the scorer fixture)
CLF = "clf-scoring-test"
CLASSES = ["KL0", "KL2", "KL4"]


def _png(pixels: np.ndarray, **kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, **kw).save(buf, format="PNG")
    return buf.getvalue()


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


# -- uploads (no stack) --------------------------------------------------------------------------
def test_decode_png_jpeg_npz_and_npy_to_grayscale_uint8() -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    rgb = rng.integers(0, 256, (2, 8, 9, 3), dtype=np.uint8)
    (png,) = decode_upload("a.png", _png(gray))
    np.testing.assert_array_equal(png, gray)
    (from_rgb,) = decode_upload("rgb.png", _png(rgb[0]))
    np.testing.assert_array_equal(from_rgb, np.asarray(Image.fromarray(rgb[0]).convert("L")))
    # 16-bit grayscale is scaled to 8 bits, not clipped.
    (wide,) = decode_upload("w.png", _png(np.array([[0, 257, 65535]], dtype=np.uint16)))
    np.testing.assert_array_equal(wide, [[0, 1, 255]])
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, format="JPEG", quality=95)
    (jpeg,) = decode_upload("a.jpg", buf.getvalue())
    assert jpeg.shape == gray.shape and jpeg.dtype == np.uint8 and np.abs(jpeg.astype(int) - gray).mean() < 20
    stacked = decode_upload("s.npz", _npz(images=rng.integers(0, 256, (3, 5, 6), dtype=np.uint8), other=np.zeros(2)))
    assert [a.shape for a in stacked] == [(5, 6)] * 3
    colour = decode_upload("c.npz", _npz(x=rgb))  # one array of any name; RGB as PIL converts it
    np.testing.assert_array_equal(colour[1], np.asarray(Image.fromarray(rgb[1]).convert("L")))
    npy = io.BytesIO()
    np.save(npy, gray)
    np.testing.assert_array_equal(decode_upload("one.npy", npy.getvalue())[0], gray)
    # The request budget spans files.
    assert len(decode_uploads([("a.png", _png(gray)), ("s.npz", _npz(images=np.zeros((2, 4, 4), np.uint8)))])) == 3


def _bad_uploads() -> list[tuple[str, bytes, dict, str]]:
    png = _png(np.zeros((16, 16), np.uint8))
    return [
        ("truncated.png", png[: len(png) // 2], {}, "cannot decode"),
        ("notes.txt", b"hello, these are not pixels\n", {}, "not a PNG, JPEG"),
        ("empty.png", b"", {}, "empty"),
        ("nothing.npz", _npz(), {}, "no arrays"),
        ("float.npz", _npz(images=np.zeros((2, 4, 4), np.float32)), {}, "uint8"),
        ("two.npz", _npz(a=np.zeros((2, 4, 4), np.uint8), b=np.zeros((2, 4, 4), np.uint8)), {}, "'images'"),
        ("objects.npz", _npz(images=np.array([{"a": 1}], dtype=object)), {}, "uint8"),
        ("flat.npz", _npz(images=np.zeros(5, np.uint8)), {}, "must be (H, W)"),
        ("zero.npz", _npz(images=np.zeros((0, 4, 4), np.uint8)), {}, "no images"),
        ("many.npz", _npz(images=np.zeros((3, 4, 4), np.uint8)), {"max_images": 2}, "more than the 2"),
        ("huge.npz", _npz(images=np.zeros((1, 4097, 4096), np.uint8)), {}, f"more than the {MAX_PIXELS}"),
        ("huge.png", _png(np.zeros((40, 40), np.uint8)), {"max_pixels": 1000}, "more than the 1000"),
        ("broken.npz", b"PK\x03\x04" + b"\0" * 40, {}, "not a readable .npz"),
    ]


_BAD_UPLOADS = _bad_uploads()


@pytest.mark.parametrize(("filename", "data", "kwargs", "message"), _BAD_UPLOADS, ids=[row[0] for row in _BAD_UPLOADS])
def test_bad_uploads_name_the_file(filename: str, data: bytes, kwargs: dict, message: str) -> None:
    with pytest.raises(UploadError) as info:
        decode_upload(filename, data, **kwargs)
    assert info.value.field == filename and str(info.value).startswith(f"{filename}: ")
    assert message in info.value.message, info.value.message
    assert isinstance(info.value, ValueError)


def test_request_budget_names_the_file_over_it() -> None:
    png = _png(np.zeros((4, 4), np.uint8))
    with pytest.raises(UploadError) as info:
        decode_uploads([("a.png", png), ("b.png", png), ("c.png", png)], max_images=2)
    assert info.value.field == "c.png"


# -- FID (stack) ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(stack: Settings) -> str:
    from training.catalog.selection import publish_phantom
    from training.catalog.phantom import PhantomSpec

    return str(publish_phantom(80, PhantomSpec(size=64, seed=5), name=DATASET, settings=stack, progress=lambda _: None).ref)


@pytest.fixture(scope="module")
def scorer(stack: Settings) -> FidScorer:
    """A replica on 64-d features: the same code as FID, without 2048-d eigendecompositions."""
    return FidScorer.func_or_class(stack, dims=DIMS)


@pytest.fixture(scope="module")
def fake() -> np.ndarray:
    from training.catalog.phantom import PhantomSpec, make_phantom

    return np.stack([img.pixels for img in make_phantom(12, PhantomSpec(size=64, seed=11))])


@pytest.fixture
def counted_references(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Calls of reference_statistics (the S3-cached layer under the replica's memo)."""
    import training.evaluate.reference as reference_module

    calls: list[tuple] = []
    real = reference_module.reference_statistics

    def counting(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(reference_module, "reference_statistics", counting)
    return calls


@pytest.mark.stack
def test_served_fid_equals_fid_to_reference(stack, fake) -> None:
    """The deployed configuration (2048-d) against the library, for the same images.

    A small dataset of its own keeps the 2048-d Inception passes few (n_real ~ 20).
    """
    from training.catalog.selection import publish_phantom
    from training.evaluate.reference import fid_to_reference, reference_statistics
    from training.catalog.phantom import PhantomSpec

    small = str(publish_phantom(30, PhantomSpec(size=64, seed=7), name="phantom-scoring", settings=stack,
                                progress=lambda _: None).ref)
    result = asyncio.run(FidScorer.func_or_class(stack).score("phantom-scoring", images=fake[:8]))  # bare name
    assert not isinstance(result, SynthrayError), result
    ref = reference_statistics(small, split="train", settings=stack)  # eval CLI default: all of train
    expected = fid_to_reference(fake[:8], ref, stack)
    assert result["fid"] == pytest.approx(expected.fid, rel=1e-6)
    assert result["n_real"] == ref.n == expected.n_real and result["n_fake"] == 8
    assert result["reference_key"] == ref.key and result["weights_sha256"] == ref.weights_sha256
    assert result["dataset"] == small and result["dims"] == 2048
    # read against the real-vs-real floor at the same n, cached beside the reference
    from training.evaluate.floor import real_floor

    floor = real_floor(ref, stack)
    assert floor.cached and result["floor"] == pytest.approx(floor.fid) and result["floor_n"] == ref.n
    assert result["floor_method"] == "bootstrap" and "real-vs-real floor" in result["summary"]


@pytest.mark.stack
def test_reference_is_memoized_and_limit_cuts_the_candidates(scorer, dataset, fake, stack, counted_references) -> None:
    from training.evaluate.reference import fid_to_reference, reference_statistics

    first = asyncio.run(scorer.score(DATASET, images=fake))
    assert not isinstance(first, SynthrayError), first
    ref = reference_statistics(dataset, split="train", settings=stack, dims=DIMS)
    assert first["fid"] == pytest.approx(fid_to_reference(fake, ref, stack).fid, rel=1e-6)
    assert (first["reference_key"], first["dims"]) == (ref.key, DIMS)
    # The same version again (by name@version now) does not even look up the S3 cache.
    counted_references.clear()
    again = asyncio.run(scorer.score(dataset, images=list(fake), limit=5))
    assert counted_references == []
    assert again["n_fake"] == 5
    assert again["fid"] == pytest.approx(fid_to_reference(fake[:5], ref, stack).fid, rel=1e-6)


@pytest.mark.stack
def test_class_reference_matches_the_class_selection(scorer, dataset, fake, stack) -> None:
    from training.evaluate.reference import fid_to_reference, reference_statistics

    by_name = asyncio.run(scorer.score(f"{dataset}::KL0", images=fake))
    assert not isinstance(by_name, SynthrayError), by_name
    ref = reference_statistics(dataset, split="train", labels=[0], settings=stack, dims=DIMS)
    assert by_name["reference_key"] == ref.key and by_name["n_real"] == ref.n
    assert by_name["fid"] == pytest.approx(fid_to_reference(fake, ref, stack).fid, rel=1e-6)
    by_index = asyncio.run(scorer.score(f"{DATASET}::0", images=fake))
    assert by_index["reference_key"] == ref.key and by_index["fid"] == pytest.approx(by_name["fid"], rel=1e-9)


@pytest.mark.stack
def test_reference_memo_is_a_small_lru(stack, dataset, fake, counted_references) -> None:
    scorer = FidScorer.func_or_class(stack, max_references=1, dims=DIMS)
    for reference in (dataset, f"{dataset}::KL0", dataset):
        assert not isinstance(asyncio.run(scorer.score(reference, images=fake[:3])), SynthrayError)
    assert len(counted_references) == 3  # the second dataset evicted the first


@pytest.mark.stack
@pytest.mark.parametrize(
    ("reference", "status", "words"),
    [
        ("", 422, "NAME[@VER]"),
        ("a:b:c:d", 422, "NAME[@VER][:SUBSET][:CLASS]"),
        ("Bad Name", 422, "invalid"),
        (f"{DATASET}@not-hex", 422, "invalid"),
        ("no-such-dataset", 404, "'no-such-dataset' does not exist"),
        (f"{DATASET}@{'ab' * 32}", 404, "does not exist"),
        (f"{DATASET}::KL9", 422, "class 'KL9'"),
        (f"{DATASET}::²", 422, "class '²'"),  # "²".isdigit(), yet no index: a 422, not a 500
        (f"{DATASET}:no-such-subset", 422, "no subset 'no-such-subset'"),
    ],
)
def test_bad_references_are_failures_naming_the_field(scorer, dataset, fake, reference, status, words) -> None:
    result = asyncio.run(scorer.score(reference, images=fake))
    assert isinstance(result, SynthrayError), result
    assert (result.http_status, result.field) == (status, "reference")
    assert result.message.startswith("reference: ") and words in result.message, result.message


@pytest.mark.stack
def test_empty_split_is_a_422(scorer, dataset, fake) -> None:
    result = asyncio.run(scorer.score(dataset, images=fake, split="no-such-split"))
    assert isinstance(result, SynthrayError) and (result.http_status, result.field) == (422, "reference")
    assert "split='no-such-split'" in result.message


@pytest.mark.stack
@pytest.mark.parametrize(
    ("kwargs", "field", "words"),
    [
        ({"images": np.zeros((1, 64, 64), np.uint8)}, "images", "at least 2"),
        ({"images": np.zeros((3, 64, 64), np.float32)}, "images", "uint8"),
        ({"images": np.zeros((3, 64), np.uint8)}, "images", "expected (N, H, W)"),
        ({"images": [np.zeros((8, 8), np.uint8), np.zeros((9, 9), np.uint8)]}, "images", "one size"),
        ({}, "images", "exactly one of images or batch_id"),
        ({"images": np.zeros((3, 8, 8), np.uint8), "batch_id": "b1"}, "images", "exactly one"),
        ({"images": np.zeros((3, 8, 8), np.uint8), "limit": 1}, "limit", ">= 2"),
        ({"batch_id": ""}, "batch_id", "non-empty"),
    ],
)
def test_bad_candidates_are_422_naming_the_field(scorer, dataset, kwargs, field, words) -> None:
    result = asyncio.run(scorer.score(dataset, **kwargs))
    assert isinstance(result, SynthrayError), result
    assert (result.http_status, result.field) == (422, field) and words in result.message, result.message


class _NotReady(Conflict):
    """A Conflict of another class than load_images' own: the class decides, not the words."""


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch, fake: np.ndarray) -> list[tuple]:
    """A stand-in ``services.batches.api.load_images`` (the real one is another module's)."""
    import services.batches.api as real

    calls: list[tuple] = []

    def load_images(batch_id: str, settings: Settings, limit: int | None = None) -> np.ndarray:
        calls.append((batch_id, limit))
        if batch_id == "unknown":
            raise real.BatchNotFound("unknown batch 'unknown'")
        if batch_id == "running":  # load_images' own wording
            raise real.BatchNotReady("batch running is running, not succeeded; its images cannot be loaded yet")
        if batch_id == "tampered":
            raise real.BatchCorrupt("s3://b/batches/tampered/shard-0.npz does not match the sha256 in batch "
                                    "tampered's manifest")
        if batch_id == "coded":
            raise _NotReady("batch 'coded' failed")
        return fake[:limit] if limit else fake

    module = types.ModuleType("services.batches.api")
    module.load_images = load_images
    monkeypatch.setitem(sys.modules, "services.batches.api", module)
    return calls


@pytest.mark.stack
def test_batch_images_are_scored_like_direct_ones(scorer, dataset, fake, batches) -> None:
    direct = asyncio.run(scorer.score(dataset, images=fake[:6]))
    from_batch = asyncio.run(scorer.score(dataset, batch_id="b-1", limit=6))
    assert batches == [("b-1", 6)]
    assert from_batch["fid"] == direct["fid"] and from_batch["n_fake"] == 6


@pytest.mark.stack
@pytest.mark.parametrize(("batch_id", "status"), [("unknown", 404), ("running", 409), ("coded", 409), ("tampered", 500)])
def test_unusable_batches_are_404_409_or_500(scorer, dataset, batches, batch_id, status) -> None:
    result = asyncio.run(scorer.score(dataset, batch_id=batch_id))
    assert isinstance(result, SynthrayError) and (result.http_status, result.field) == (status, "batch_id")
    assert batch_id in result.message


# -- classifiers (stack) -------------------------------------------------------------------------
class LocalClassifier(Classifier.func_or_class):
    """The deployment class with ``@serve.multiplexed`` (replica-only) swapped for a dict."""

    async def _classifier(self, uri: str):
        cache = self.__dict__.setdefault("_cache", {})
        if uri not in cache:
            cache[uri] = await asyncio.to_thread(self._load, uri)
        return cache[uri]


def _small_classifier(seed: int):
    import torch

    from training.nets.classifier import ImageClassifier, SmallCNN

    torch.manual_seed(seed)
    return ImageClassifier(SmallCNN(in_channels=1, num_classes=len(CLASSES), channels=(8, 16)), CLASSES, image_size=32)


@pytest.fixture(scope="module")
def classifiers(stack: Settings):
    """(first, second = champion) registered versions of an untrained small classifier."""
    from training.registry.classifiers import log_classifier

    first = log_classifier(_small_classifier(1), CLF, alias="champion", settings=stack)
    second = log_classifier(_small_classifier(2), CLF, alias="champion", settings=stack, tags={"note": "test"})
    return first, second


@pytest.fixture(scope="module")
def classifier(stack: Settings) -> LocalClassifier:
    return LocalClassifier(stack)


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (64, 64), dtype=np.uint8), rng.integers(0, 256, (40, 50, 3), dtype=np.uint8),
            np.full((32, 32), 255, np.uint8)]


@pytest.mark.stack
def test_classify_alias_returns_probabilities_label_and_version(classifier, classifiers, stack) -> None:
    from training.registry.classifiers import load_classifier

    _, champion = classifiers
    images = _images()
    results = asyncio.run(classifier.classify(f"{CLF}@champion", images))
    assert not isinstance(results, SynthrayError), results
    expected = load_classifier(champion.uri, stack).predict_proba(images)
    assert len(results) == len(images)
    for row, want in zip(results, expected):
        assert list(row["probabilities"]) == CLASSES
        probs = np.array(list(row["probabilities"].values()))
        assert probs.sum() == pytest.approx(1.0, abs=1e-9)
        np.testing.assert_allclose(probs, want, rtol=1e-6)
        assert row["label"] == CLASSES[int(probs.argmax())]
        assert (row["model"], row["version"]) == (CLF, champion.version)


@pytest.mark.stack
def test_classify_pinned_version_and_resolved_ref(classifier, classifiers) -> None:
    first, champion = classifiers
    images = _images()
    pinned = asyncio.run(classifier.classify(f"{CLF}/{first.version}", images))
    assert {r["version"] for r in pinned} == {first.version}
    ref = asyncio.run(classifier.resolve(f"models:/{CLF}@champion"))
    assert ref == ClassifierRef(CLF, champion.version, champion.run_id, tuple(CLASSES))
    routed = asyncio.run(classifier.classify(ref, images))
    latest = asyncio.run(classifier.classify(f"{CLF}@champion", images))
    assert routed == latest
    assert [r["probabilities"] for r in routed] != [r["probabilities"] for r in pinned]  # another model answered


@pytest.mark.stack
def test_classifier_registry_tags(classifiers, stack) -> None:
    import json

    from mlflow import MlflowClient

    from training.registry.tags import KIND as KIND_TAG

    _, champion = classifiers
    client = MlflowClient(stack.mlflow_tracking_uri)
    version = client.get_model_version(CLF, champion.version)
    assert version.tags[KIND_TAG] == "classifier" and json.loads(version.tags["classes"]) == CLASSES
    assert version.tags["note"] == "test" and version.tags["image_size"] == "32"
    assert client.get_registered_model(CLF).tags[KIND_TAG] == "classifier"
    assert champion.uri == f"models:/{CLF}/{champion.version}"


@pytest.fixture(scope="module")
def generator(stack: Settings) -> str:
    import torch

    from training.registry.generators import log_generator
    from training.nets.presets import get_preset
    from training.nets.sampler import GeneratorSampler

    torch.manual_seed(0)
    preset = get_preset("wgan-gp-knee-small")
    net, _ = preset.build()
    reg = log_generator(GeneratorSampler(net, preset.latent_dim), "gan-scoring-test", alias="champion", settings=stack)
    return f"{reg.name}@champion"


@pytest.mark.stack
@pytest.mark.parametrize(
    ("model", "status", "words"),
    [
        ("no-such-classifier@champion", 404, "not found"),
        (f"{CLF}@no-such-alias", 404, "not found"),
        (f"{CLF}/999", 404, "not found"),
        ("not a model", 422, "NAME@alias"),
        ("GENERATOR", 422, "is a gan-generator, not a classifier"),
    ],
)
def test_unknown_or_wrong_kind_models_are_failures(classifier, classifiers, generator, model, status, words) -> None:
    model = generator if model == "GENERATOR" else model
    result = asyncio.run(classifier.classify(model, _images()))
    assert isinstance(result, SynthrayError), result
    assert (result.http_status, result.field) == (status, "model") and words in result.message, result.message


@pytest.mark.stack
@pytest.mark.parametrize(
    ("images", "field", "words"),
    [
        ([], "images", "no images"),
        ([np.zeros((8, 8), np.uint8)] * 300, "images", "more than the 256"),
        ([np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.float32)], "images[1]", "uint8"),
        ([np.zeros((8, 8, 2), np.uint8)], "images[0]", "(H, W, 3)"),
        ([np.zeros((0, 8), np.uint8)], "images[0]", "non-empty"),
    ],
)
def test_bad_classify_images_are_422(classifier, images, field, words) -> None:
    result = asyncio.run(classifier.classify(f"{CLF}@champion", images))
    assert isinstance(result, SynthrayError) and (result.http_status, result.field) == (422, field) and words in result.message


def test_multiplexed_loader_needs_a_replica(tmp_path) -> None:
    """Why LocalClassifier exists: outside Serve the multiplexed cache cannot be built."""
    instance = object.__new__(Classifier.func_or_class)
    with pytest.raises(RuntimeError, match="within a deployment"):
        asyncio.run(instance._classifier("models:/x/1"))


@pytest.mark.stack
def test_classifier_deployment_on_real_serve(stack, classifiers, driver_handles) -> None:
    """The real thing once: multiplexed loading in a replica, routing by the concrete uri."""
    from ray import serve

    from infra.ray_runtime import connect

    _, champion = classifiers
    connect(stack)
    serve.start(http_options={"host": "127.0.0.1", "port": stack.serve_port})
    try:
        deployment = Classifier.options(ray_actor_options={"num_cpus": 0.1})
        handle = serve.run(deployment.bind(stack), name="scoring-test", route_prefix=None)
        ref = handle.resolve.remote(f"{CLF}@champion").result(timeout_s=120)
        assert isinstance(ref, ClassifierRef) and ref.version == champion.version
        results = handle.options(multiplexed_model_id=ref.uri).classify.remote(ref, _images()).result(timeout_s=120)
        assert [r["version"] for r in results] == [champion.version] * 3
        missing = handle.classify.remote("no-such-classifier@champion", _images()).result(timeout_s=120)
        assert isinstance(missing, SynthrayError) and missing.http_status == 404
    finally:
        serve.shutdown()  # as services.serving.deploy.down: nothing left running for later tests
