"""Federated building blocks without a stack: site assignment, the statistics merge, FedAvg's weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from infra.errors import BadInput
from training.catalog.store import ImageRecord
from training.federated.config import FederatedConfig
from training.federated.sites import assign_sites
from training.federated.stats import GaussianStats, merge
from training.gan.config import GanTrainConfig


def _records(n_patients: int, per_patient, hospital=None) -> list[ImageRecord]:
    rng = np.random.default_rng(1)
    out = []
    for p in range(n_patients):
        for k in range(per_patient(p) if callable(per_patient) else per_patient):
            attrs = {} if hospital is None else {"hospital": hospital(p)}
            out.append(ImageRecord(sha256=f"{p:04d}{k:02d}" + "0" * 58, label=int(rng.integers(3)), label_name="x",
                                   split="train", source_path=f"p{p}/{k}.png", bit_depth=8, width=8, height=8,
                                   patient_id=f"p{p}", attributes=attrs))
    return out


def _site_of(assigned: list[list[str]]) -> dict[str, int]:
    return {sha: i for i, shas in enumerate(assigned) for sha in shas}


@pytest.mark.parametrize("sites", [2, 3, 7])
def test_patient_sites_are_disjoint_cover_everything_and_never_split_a_patient(sites: int) -> None:
    records = _records(40, lambda p: 1 + p % 4)  # 1–4 images per patient
    assigned = assign_sites(records, sites, seed=5)
    site_of = _site_of(assigned)
    assert sum(map(len, assigned)) == len(site_of) == len(records)  # disjoint and complete
    for patient in {r.patient_id for r in records}:
        assert len({site_of[r.sha256] for r in records if r.patient_id == patient}) == 1, patient
    sizes = [len(s) for s in assigned]
    assert max(sizes) - min(sizes) <= 4  # balanced to within one patient's images
    assert assign_sites(records, sites, seed=5) == assigned and assign_sites(records, sites, seed=6) != assigned


def test_attribute_sites_follow_the_hospital() -> None:
    records = _records(30, 2, hospital=lambda p: f"H{p % 3}")
    assigned = assign_sites(records, 3, by="attribute=hospital")
    site_of = _site_of(assigned)
    for i in range(3):
        assert len({r.attributes["hospital"] for r in records if site_of[r.sha256] == i}) == 1
    with pytest.raises(BadInput, match="3 values of 'hospital' cannot fill 4 sites"):
        assign_sites(records, 4, by="attribute=hospital")
    with pytest.raises(BadInput, match="no attribute 'scanner'"):
        assign_sites(records, 2, by="attribute=scanner")
    # one patient seen at two hospitals that end up at two sites: refused, never split
    moved = [*records[:-1], ImageRecord(**{**records[-1].__dict__, "patient_id": "p0"})]
    with pytest.raises(BadInput, match="patient p0 has images at site-"):
        assign_sites(moved, 3, by="attribute=hospital")
    with pytest.raises(BadInput, match="cannot fill 31 sites"):
        assign_sites(records, 31)


def test_merged_statistics_equal_the_pooled_ones() -> None:
    """Chan–Golub–LeVeque merge of unequal sites = np.cov/np.mean of the pooled features, to 1e-10."""
    rng = np.random.default_rng(0)
    feats = np.exp(rng.normal(0, 1, (500, 64))) * rng.uniform(0.1, 5, 64)  # skewed, unequal scales like Inception's
    cuts = [0, 2, 40, 43, 300, 500]  # sites of 2, 38, 3, 257 and 200 images
    parts = [GaussianStats.of(feats[a:b]) for a, b in zip(cuts, cuts[1:])]
    pooled = GaussianStats.of(feats)
    merged = merge(parts)
    assert merged.n == 500
    np.testing.assert_allclose(merged.mu, pooled.mu, rtol=0, atol=1e-10)
    np.testing.assert_allclose(merged.sigma, pooled.sigma, rtol=0, atol=1e-10)
    with pytest.raises(BadInput, match="at least 2 images"):
        GaussianStats(1, np.zeros(3), np.zeros((3, 3)))


def test_fedavg_weights_by_examples_exactly() -> None:
    """Two sites with 1 and 3 examples: Flower's FedAvg (what SiteFedAvg runs) gives ¼·w1 + ¾·w2."""
    from flwr.app import Message, MetricRecord, RecordDict
    from flwr.serverapp.strategy import FedAvg

    from training.federated.client import load_into, pack, unpack

    torch.manual_seed(0)
    gen1, gen2, out = (torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)) for _ in range(3))
    gen2[1].num_batches_tracked += 8
    replies = [Message(RecordDict({"arrays": pack(g, None, ("g",)), "metrics": MetricRecord({"num-examples": n})}),
                       dst_node_id=i + 1, message_type="train") for i, (g, n) in enumerate([(gen1, 1), (gen2, 3)])]
    arrays, _ = FedAvg().aggregate_train(1, replies)
    load_into(out, unpack(arrays, "g"))
    for (name, w1), w2, got in zip(gen1.state_dict().items(), gen2.state_dict().values(), out.state_dict().values()):
        want = 0.25 * w1.double() + 0.75 * w2.double()
        torch.testing.assert_close(got.double(), want.round() if not w1.is_floating_point() else want,
                                   rtol=0, atol=1e-7, msg=name)


def test_config_refuses_what_federation_cannot_run() -> None:
    gan = GanTrainConfig(dataset="x")
    assert FederatedConfig(gan=gan, sites=20, fraction=0.1, rounds=3).sampled_per_round() == 2  # paper: C·K
    assert FederatedConfig(gan=gan, sites=20, fraction=0.1, rounds=3, min_fit_clients=3).sampled_per_round() == 3
    with pytest.raises(ValueError, match="progressive"):
        FederatedConfig(gan=GanTrainConfig(dataset="x", arch="pggan-knee-mri-small"), sites=2, rounds=1)
    with pytest.raises(ValueError, match="ada"):
        FederatedConfig(gan=GanTrainConfig(dataset="x", augment="ada"), sites=2, rounds=1)
    with pytest.raises(ValueError, match="exceeds --sites"):
        FederatedConfig(gan=gan, sites=2, rounds=1, min_fit_clients=3)
