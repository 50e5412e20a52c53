"""A federated generator's registry record (issue 27): every site in its lineage, the per-image audits skipped.

The end-to-end registration (and the leakage guard reading this lineage) is in
``tests/federated/test_federated_run.py``; here the tags and card alone, without a stack.
"""

from __future__ import annotations

import json

import torch

from training.nets.presets import get_preset
from training.nets.sampler import GeneratorSampler
from training.registry.cards import CardFacts, render_card
from training.registry.generators import _version_tags

SITES = [{"split": "train", "subset": f"site-{i}"} for i in range(4)]
WHY = "needs per-image features, which never leave their site"


def _facts() -> CardFacts:
    return CardFacts(
        name="gan-x", arch="wgan-gp-knee-small", image_size=64, latent_dim=50, conditional=True, classes=["a", "b"],
        class_name=None, dataset="d@1", manifest_sha256="1", selection={"split": "train"}, n_train=34, epoch=3,
        run_id="r", run_url="u", git_commit="c", checkpoint="s3://b/federated/r/round-0003.pt", hyperparameters={},
        fid={"fid": 10.0, "n_real": 34, "n_fake": 34, "dims": 64, "reference_key": "federated/r/pooled-statistics.npz",
             "weights_sha256": "w"},
        kid={"skipped": f"KID {WHY}"}, memorization={"skipped": f"the audit {WHY}"}, eval_seed=1,
        membership={"skipped": f"the attack {WHY}"}, sites=SITES)


def test_federated_tags_list_every_site_and_no_single_selection() -> None:
    torch.manual_seed(0)
    sampler = GeneratorSampler(get_preset("wgan-gp-knee-small").build(2)[0], 50, num_classes=2)
    tags = _version_tags(_facts(), sampler)
    assert json.loads(tags["dataset.sites"]) == SITES and "dataset.selection" not in tags
    assert tags["kid.skipped"] == f"KID {WHY}" and tags["memorization.skipped"] == f"the audit {WHY}"
    assert not [k for k in tags if k.startswith(("kid.ci", "memorization.fraction"))]
    assert tags["fid"] == "10.000000" and tags["fid.n_real"] == "34"


def test_federated_card_names_the_sites_and_why_audits_did_not_run() -> None:
    card = render_card(_facts())
    assert "| federated sites | split=train, subset=site-0; split=train, subset=site-1; " in card
    assert f"| KID | not computed: KID {WHY} |" in card
    assert f"## Privacy audit (memorization)\nNot run: the audit {WHY}" in card
    assert f"## Privacy audit (membership inference)\nNot run: the attack {WHY}" in card
