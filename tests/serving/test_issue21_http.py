"""Issue 21 over HTTP on a real stack: seeds above 2**32 (item 2) and hostile names (item 1).

Regression input (item 2): ``POST /v1/synthesize`` with seeds 1, 2**32 + 1 and 2**40 + 1 and
otherwise equal fields returned three byte-identical images.
"""

from __future__ import annotations

import os
import time

import httpx
import numpy as np
import pytest
import torch

from infra.settings import Settings
from services.serving import deploy as serve_ops
from services.serving.packaging import read_images

NAME = "gan-issue21-test-wgan-gp-knee-small"
SEEDS = [1, 2**32 + 1, 2**40 + 1]
ENV = {"SYNTHRAY_BATCH_SHARD_SIZE": "5", "SYNTHRAY_REGISTRY_POLL_S": "1.0"}


@pytest.fixture(scope="module")
def served(stack: Settings):
    from services.serving.auth import client_key
    from training.nets.presets import get_preset
    from training.nets.sampler import GeneratorSampler
    from training.registry.generators import log_generator

    torch.manual_seed(21)
    spec = get_preset("wgan-gp-knee-small")
    generator, _ = spec.build()
    sampler = GeneratorSampler(generator, spec.latent_dim)
    log_generator(sampler, NAME, alias="champion", settings=stack)
    saved = {k: os.environ.get(k) for k in ENV}
    os.environ.update(ENV)
    try:
        url = serve_ops.up(stack, progress=lambda _: None)
        with httpx.Client(base_url=url, timeout=300, headers={"Authorization": f"Bearer {client_key(stack)}"}) as http:
            yield http, sampler
    finally:
        serve_ops.down(stack, progress=lambda _: None)
        from services.batches import api as batch_jobs

        for batch in batch_jobs.active_batches(stack):
            batch_jobs.cancel(batch, stack)
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


@pytest.mark.stack
def test_synthesize_seeds_above_2_32_give_distinct_images(served) -> None:
    http, sampler = served
    got = []
    for seed in SEEDS:
        response = http.post("/v1/synthesize", json={"model": f"{NAME}@champion", "n": 2, "seed": seed})
        assert response.status_code == 200, response.text
        images = read_images(response.content)
        np.testing.assert_array_equal(images, sampler.generate(2, seed=seed))  # the documented contract
        got.append(images.tobytes())
    assert len(set(got)) == 3


@pytest.mark.stack
def test_latent_tools_use_the_full_seed(served) -> None:
    http, _ = served
    sweeps = {http.post("/v1/latent/sweep", json={"model": f"{NAME}@champion", "seed": s, "dim": 0, "steps": 2,
                                                  "format": "npz"}).content for s in SEEDS}
    assert len(sweeps) == 3
    lines = {http.post("/v1/latent/interpolate", json={"model": f"{NAME}@champion", "seed_a": s, "seed_b": 2**50,
                                                       "steps": 2, "format": "npz"}).content for s in SEEDS}
    assert len(lines) == 3


@pytest.mark.stack
def test_batches_record_the_seed_derivation_and_differ(served) -> None:
    http, _ = served
    ids = []
    for seed in SEEDS[:2]:
        response = http.post("/v1/batches", json={"model": f"{NAME}@champion", "n": 3, "seed": seed})
        assert response.status_code == 202, response.text
        ids.append(response.json()["batch_id"])
    assert len(set(ids)) == 2
    shards = []
    for bid in ids:
        deadline = time.monotonic() + 240
        while (state := http.get(f"/v1/batches/{bid}").json())["state"] not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, state
            time.sleep(1)
        assert state["state"] == "succeeded", state
        manifest = httpx.get(state["urls"]["manifest"]).json()
        assert manifest["seed_derivation"] == 2 and manifest["render_layout"] == 2
        shards.append(read_images(httpx.get(state["urls"]["shards"][0]).content).tobytes())
    assert shards[0] != shards[1]


@pytest.mark.stack
@pytest.mark.parametrize("model", ["..@champion", "../x@champion", "a/../../b@champion", "models:/../2"])
def test_hostile_model_names_are_a_422_naming_the_field(served, model: str) -> None:
    http, _ = served
    for path, body in (("/v1/synthesize", {"n": 1, "seed": 0}), ("/v1/batches", {"n": 1, "seed": 0}),
                       ("/v1/latent/sweep", {"seed": 0, "dim": 0})):
        response = http.post(path, json={"model": model, **body})
        assert response.status_code == 422, (path, response.text)
        assert "model" in response.text, response.text
