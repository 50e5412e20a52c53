"""User seeds → random generators, using every bit of the seed.

The determinism contract is "same seed, same bytes; another seed, other bytes". Generators
whose seeding keeps only part of an integer break the second half: torch's CPU generator
(mt19937) keeps the low 32 bits, so seeds 1, 2**32 + 1 and 2**40 + 1 gave byte-identical
images, and ``numpy.random.RandomState`` (what scikit-learn and Ray Tune seed) refuses
anything above 2**32 - 1. Every user seed therefore goes through numpy's ``SeedSequence``,
which hashes an arbitrarily large integer (plus optional stream keys) into the generator's
whole state:

- :func:`numpy_rng`: a ``numpy.random.Generator`` (PCG64, 128-bit state) — latents, splits;
- :func:`random_state`: a legacy ``RandomState`` (MT19937) for libraries that want one;
- :func:`torch_seed`: a 63-bit integer for ``torch.manual_seed`` where torch must draw.

``SEED_DERIVATION`` versions this rule; anything that promises reproducible bytes (batch
ids, batch manifests, the synthesize response) records it next to the render layout.

1: ``torch.Generator().manual_seed(seed)`` (low 32 bits only). 2: ``SeedSequence(seed)``
into a PCG64 ``Generator`` (latents are ``standard_normal(float32)`` draws).
"""

from __future__ import annotations

import numpy as np

from infra.errors import BadInput

SEED_DERIVATION = 2
MAX_SEED = 2**63 - 1  # the HTTP API's range; also what JSON clients carry without loss
#: Training seeds (``train gan|classifier``, sweeps, experiments) seed torch's global generator
#: directly (``torch.manual_seed``), which keeps 32 bits: the API accepts no more than that.
TRAIN_MAX_SEED = 2**32 - 1


def check_seed(seed: object, field: str = "seed", maximum: int = MAX_SEED) -> int:
    """``seed`` when it is an integer in ``0..maximum``; :class:`BadInput` naming ``field`` otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) <= maximum:
        raise BadInput(f"{field} must be an integer in 0..{maximum}, got {seed!r}", field=field)
    return int(seed)


def seed_sequence(seed: int, *key: int) -> np.random.SeedSequence:
    """``SeedSequence`` of ``seed`` (any non-negative size) with optional stream ``key`` words."""
    seed = check_seed(seed, maximum=2**256 - 1)
    return np.random.SeedSequence([seed, *key]) if key else np.random.SeedSequence(seed)


def numpy_rng(seed: int, *key: int) -> np.random.Generator:
    """A PCG64 ``Generator`` whose whole state derives from ``seed`` (and ``key``)."""
    return np.random.Generator(np.random.PCG64(seed_sequence(seed, *key)))


def random_state(seed: int, *key: int) -> np.random.RandomState:
    """A legacy ``RandomState`` (MT19937) seeded from all of ``seed`` (scikit-learn, Ray Tune)."""
    return np.random.RandomState(np.random.MT19937(seed_sequence(seed, *key)))


def torch_seed(seed: int, *key: int) -> int:
    """A 63-bit integer for ``torch.manual_seed``, hashed from all of ``seed`` (and ``key``)."""
    return int(seed_sequence(seed, *key).generate_state(1, np.uint64)[0]) & MAX_SEED


__all__ = ["MAX_SEED", "SEED_DERIVATION", "TRAIN_MAX_SEED", "check_seed", "numpy_rng", "random_state", "seed_sequence", "torch_seed"]
