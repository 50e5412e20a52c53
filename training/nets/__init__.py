"""GAN and classifier architectures (torch, imported from their modules) and the render-layout version.

This package root is torch-free on purpose: the HTTP ingress reads ``RENDER_LAYOUT`` from it.

``RENDER_LAYOUT``: Which activation layout ``GeneratorSampler.render`` uses, as a version number.

It is part of the determinism contract (same request, same bytes): another layout runs other
CPU kernels, which may flip a rounded pixel. Batch ids and manifests carry it, so a batch
started under one layout is never resumed under another. Torch-free on purpose: the HTTP
ingress computes batch ids without importing torch.

1: NCHW. 2: channels_last, 1.9x the img/s of NCHW for the knee generator at batch 64 on CPU
(docs/benchmarks.md).
"""

RENDER_LAYOUT = 2

#: How a user seed becomes latents (:mod:`infra.seeds`): 1 = ``torch.manual_seed(seed)``, which
#: kept the low 32 bits; 2 = ``SeedSequence(seed)`` → PCG64 ``standard_normal`` float32. Part of
#: the determinism contract like ``RENDER_LAYOUT``: batch ids and manifests carry both.
from infra.seeds import SEED_DERIVATION  # noqa: E402  (torch-free)

__all__ = ["RENDER_LAYOUT", "SEED_DERIVATION"]
