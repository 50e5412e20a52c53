"""Shared pieces of the reader-study tests: a tiny registered generator with lineage, a phantom."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from infra.settings import Settings

STUDY_DATASET = "phantom-study"  # its own dataset: the lineage tags point at its train split
GENERATOR = "gan-study-test-wgan-gp-knee-small"


@pytest.fixture(scope="session")
def study_dataset(stack: Settings):
    from training.catalog.phantom import PhantomSpec
    from training.catalog.selection import publish_phantom

    return publish_phantom(60, PhantomSpec(size=64, seed=11), name=STUDY_DATASET, settings=stack,
                           progress=lambda _: None)


@pytest.fixture(scope="session")
def study_generator(stack: Settings, study_dataset):
    """A knee-small generator registered with the lineage tags (dataset, selection) and a card."""
    import torch

    from training.nets.presets import get_preset
    from training.nets.sampler import GeneratorSampler
    from training.registry.generators import log_generator

    torch.manual_seed(7)
    spec = get_preset("wgan-gp-knee-small")
    generator, _ = spec.build()
    sampler = GeneratorSampler(generator, spec.latent_dim)
    selection = {"split": "train", "labels": None, "limit": None, "subset": None, "balance": "none", "seed": 0}
    tags = {"dataset": str(study_dataset.ref), "dataset.selection": json.dumps(selection, sort_keys=True),
            "classes": json.dumps(list(study_dataset.classes))}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "model_card.md").write_text(f"# {GENERATOR}\n\nA test generator (untrained).\n")
        return log_generator(sampler, GENERATOR, alias="champion", tags=tags, card_dir=Path(tmp), settings=stack)
