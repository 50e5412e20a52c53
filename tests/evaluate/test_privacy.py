"""Near-copy filter and membership-inference audit on a real stack, against generators of known leakage.

Known answers (:class:`training.nets.bank.BankGenerator`): a *planted* generator replays the
training images (every sample a copy, or half of them), a *fresh* one replays new phantom images
from the same distribution (another phantom seed: no training image among them). Features are
pytorch-fid's 64-d block (``dims=64``) to keep Inception cheap; the rules do not depend on dims.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

from infra.settings import Settings
from training.evaluate.membership import attack_metrics, dcr_scores
from training.evaluate.nearcopy import NearCopyIndex, embedder, filtered_generate
from training.nets.bank import BankGenerator
from training.nets.sampler import GeneratorSampler
from training.registry.promotion import PromotionGates, _membership_gate

DATASET = "phantom-privacy-test"
DIMS, LATENT = 64, 8
N_PLANTED, N_FRESH = 64, 32  # samples the attack sees: drawn with replacement from 32 members, ~86 % appear


# -- no stack ------------------------------------------------------------------------------------
def test_attack_metrics_match_sklearn_and_separate_known_scores() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    member, nonmember = rng.normal(1.0, 1.0, 60), rng.normal(0.0, 1.0, 40)
    out = attack_metrics(member, nonmember, bootstrap=500)
    assert out["auc"] == pytest.approx(roc_auc_score(np.r_[np.ones(60), np.zeros(40)], np.r_[member, nonmember]))
    # two unit normals one sd apart: AUC = Phi(1 / sqrt 2) = 0.760; 100 scores, so within 0.1
    assert abs(out["auc"] - 0.760) < 0.1 and out["auc_ci"][0] < out["auc"] < out["auc_ci"][1]
    assert out["auc_ci"][1] - out["auc_ci"][0] < 0.25
    # 40 non-members: TPR at FPR <= 1 % is the share of members above every non-member
    assert out["tpr_at_1pct_fpr"] == pytest.approx(np.mean(member > nonmember.max()))
    perfect = attack_metrics(np.arange(10.0) + 100, np.arange(10.0), bootstrap=200)
    assert perfect["auc"] == perfect["tpr_at_1pct_fpr"] == 1.0 and perfect["auc_ci"] == [1.0, 1.0]
    with pytest.raises(ValueError, match=">= 2 members"):
        attack_metrics(np.ones(1), np.ones(5))


def test_dcr_scores_are_minus_the_nearest_synthetic_distance() -> None:
    synthetic = np.array([[0.0, 0.0], [10.0, 0.0]])
    assert dcr_scores(np.array([[0.0, 3.0], [9.0, 0.0]]), synthetic) == pytest.approx([-3.0, -1.0])


def test_membership_gate_needs_auc_above_bar_and_ci_above_chance() -> None:
    def version(**tags):
        return ModelVersion("gan-x", "1", 0, tags=[ModelVersionTag(k, str(v)) for k, v in tags.items()])

    common = {"mia.attack": "dcr", "mia.tpr_at_1pct_fpr": 0.5}
    leak = version(**{"mia.auc": 0.93, "mia.auc_ci_low": 0.88, "mia.auc_ci_high": 0.97}, **common)
    noise = version(**{"mia.auc": 0.64, "mia.auc_ci_low": 0.47, "mia.auc_ci_high": 0.8}, **common)
    chance = version(**{"mia.auc": 0.52, "mia.auc_ci_low": 0.4, "mia.auc_ci_high": 0.64}, **common)
    gates = PromotionGates()
    assert gates.max_mia_auc == 0.6
    assert not _membership_gate(leak, gates).passed and _membership_gate(leak, PromotionGates(max_mia_auc=0.95)).passed
    assert _membership_gate(noise, gates).passed and _membership_gate(chance, gates).passed
    missing = _membership_gate(version(**{"mia.skipped": "no held-out patients"}), gates)
    assert not missing.passed and "no held-out patients" in missing.detail


def test_bad_percentile_names_the_field() -> None:
    index = NearCopyIndex.from_features(np.eye(4, 3), 3, "w", "k")
    for bad in (0, -1, 51, float("nan")):
        with pytest.raises(ValueError, match="filter_percentile") as err:
            index.threshold(bad)
        assert err.value.field == "filter_percentile"


# -- on the stack -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def members(stack: Settings):
    """The train split of a 40-image phantom (32 members; 8 held-out patients' images)."""
    from training.catalog.phantom import PhantomSpec
    from training.catalog.selection import publish_phantom
    from training.evaluate import reference_statistics

    manifest = publish_phantom(40, PhantomSpec(size=64, seed=29), name=DATASET, settings=stack, progress=lambda _: None)
    return reference_statistics(str(manifest.ref), split="train", settings=stack, dims=DIMS)


def _sampler(bank: np.ndarray, copy_fraction: float) -> GeneratorSampler:
    return GeneratorSampler(BankGenerator(bank, copy_fraction), LATENT)


@pytest.fixture(scope="module")
def generators(members, stack: Settings) -> dict[str, GeneratorSampler]:
    from training.catalog.phantom import PhantomSpec, make_phantom
    from training.evaluate import reference_images

    train = reference_images(members, settings=stack)
    fresh = np.stack([p.pixels for p in make_phantom(32, PhantomSpec(size=64, seed=4242))])
    return {"planted": _sampler(train, 1.0), "half": _sampler(train, 0.5), "fresh": _sampler(fresh, 1.0)}


@pytest.fixture(scope="module")
def index(members) -> NearCopyIndex:
    return NearCopyIndex.from_reference(members)


@pytest.fixture(scope="module")
def audits(members, generators, stack: Settings) -> dict[str, dict]:
    from training.evaluate import fake_features
    from training.evaluate.membership import membership_audit

    out = {}
    for name, n in (("planted", N_PLANTED), ("fresh", N_FRESH)):
        feats = fake_features(generators[name].generate(n, seed=1), members, stack)
        out[name] = membership_audit(feats, members, settings=stack, bootstrap=1000)
    return out


@pytest.mark.stack
def test_index_threshold_is_the_memorization_audits(members, index, stack: Settings) -> None:
    """Same features, same rule: the index's threshold is the audit's real→real 1st percentile."""
    from training.evaluate.memorization import nearest_neighbours

    _, _, real_nn = nearest_neighbours(members.features.astype(np.float64), members.features[:1].astype(np.float64))
    assert index.threshold() == pytest.approx(np.percentile(real_nn, 1), rel=1e-6)
    assert index.n == members.n == 32 and index.reference_key == members.key
    again = NearCopyIndex.from_bytes(index.to_bytes())
    assert again.threshold() == index.threshold() and np.array_equal(again.features, index.features)


@pytest.mark.stack
def test_filter_rejects_every_planted_copy_and_replays_identically(generators, members, index, stack) -> None:
    from training.evaluate import reference_images

    train = reference_images(members, settings=stack)
    embed = embedder(index, stack)
    sampler, n, seed = generators["half"], 12, 5
    raw = sampler.generate(n, seed)
    copies = {i for i, img in enumerate(raw) if any(np.array_equal(img, t) for t in train)}
    assert 2 <= len(copies) <= 10  # about half the rows replay a training image
    images, report = filtered_generate(sampler, n, seed, index, embed)
    assert set(report.rejected_rows) == copies  # every copy, and nothing else, was rejected
    assert not any(np.array_equal(img, t) for img in images for t in train)
    assert not index.near_copies(embed(images)).any()
    keep = [i for i in range(n) if i not in copies]
    assert np.array_equal(images[keep], raw[keep])  # the others are exactly generate(n, seed)'s rows
    assert report.rejected == len(copies) + len(report.rejected_draws)
    assert report.replacement_draws == len(copies) + len(report.rejected_draws)
    again, report2 = filtered_generate(sampler, n, seed, index, embed)
    assert again.tobytes() == images.tobytes() and report2.as_dict() == report.as_dict()


@pytest.mark.stack
def test_filter_keeps_every_image_of_a_fresh_generator(generators, index, stack) -> None:
    sampler = generators["fresh"]
    images, report = filtered_generate(sampler, 12, 5, index, embedder(index, stack))
    assert report.rejected == 0 and images.tobytes() == sampler.generate(12, 5).tobytes()


@pytest.mark.stack
def test_filter_gives_up_on_a_generator_that_only_copies(generators, index, stack) -> None:
    from infra.errors import Conflict

    with pytest.raises(Conflict, match="memorises"):
        filtered_generate(generators["planted"], 1, 0, index, embedder(index, stack))


@pytest.mark.stack
def test_membership_audit_catches_the_planted_copier_and_not_the_fresh_one(audits) -> None:
    planted, fresh = audits["planted"]["attacks"]["dcr"], audits["fresh"]["attacks"]["dcr"]
    assert planted["n_members"] == 32 and planted["n_nonmembers"] == 8
    # planted: ~86 % of members sit at distance 0 from a sample; no held-out image does
    assert planted["auc"] > 0.8 and planted["auc_ci"][0] > 0.6 and planted["tpr_at_1pct_fpr"] > 0.5
    # fresh: members and held-out patients are equally far from new phantoms (8 held out: a wide CI)
    assert 0.25 < fresh["auc"] < 0.75 and fresh["auc_ci"][0] < 0.5 < fresh["auc_ci"][1]
    assert audits["planted"]["artifact"].endswith("/summary.json")


@pytest.mark.stack
def test_promotion_blocks_the_copier_and_passes_the_fresh_generator(generators, audits, index, members, stack) -> None:
    """End to end through the registry: tags written as registration writes them, gates as promote reads them."""
    from training.registry.generators import log_generator
    from training.registry.privacy import privacy_tags
    from training.registry.promotion import promote

    verdicts = {}
    for name in ("planted", "fresh"):
        tags = privacy_tags(audits[name], index) | {
            "fid": "1.0", "fid.reference_key": members.key, "fid.n_real": str(members.n),
            "memorization.fraction_below_real_p1": "0", "memorization.n_below_real_p1": "0",
            "memorization.n_fake": "32"}
        reg = log_generator(generators[name], f"gan-privacy-{name}", tags=tags, settings=stack)
        # FID and memorization are not under test here: their gates are opened explicitly
        verdicts[name] = promote(reg.name, version=reg.version, settings=stack,
                                 gates=PromotionGates(max_fid=1e9, max_memorized_fraction=1.0))
    assert not verdicts["planted"].promoted and verdicts["planted"].failures == ["membership"]
    assert verdicts["fresh"].promoted, verdicts["fresh"].lines()


def test_card_shows_the_membership_audit_and_the_filter() -> None:
    from training.registry.cards import CardFacts, render_card

    dcr = attack_metrics(np.arange(30.0) + 20, np.arange(30.0), bootstrap=200)  # members score higher: a leak
    membership = {"attacks": {"dcr": dcr}, "worst_attack": "dcr", "auc": dcr["auc"], "auc_ci": dcr["auc_ci"],
                  "n_members": 30, "n_nonmembers": 30, "nonmember_keys": ["fid/reference/abc.npz"],
                  "n_synthetic": 48, "artifact": "s3://b/eval/membership/x/summary.json"}
    facts = CardFacts(
        name="gan-x", arch="wgan-gp-knee-small", image_size=64, latent_dim=128, conditional=False, classes=["a"],
        class_name=None, dataset="d@1", manifest_sha256="1", selection={"split": "train"}, n_train=96, epoch=20,
        run_id="r", run_url="u", git_commit="c", checkpoint="s3://b/c", hyperparameters={},
        fid={"fid": 10.0, "n_real": 48, "n_fake": 48, "dims": 2048, "reference_key": "k", "weights_sha256": "w"},
        kid={"kid": 0.01}, memorization={"n_fake": 48, "n_below_real_p1": 0, "fraction_below_real_p1": 0.0,
                                         "min_distance": 3.0, "real_nn_p1": 2.0},
        eval_seed=1, membership=membership, near_copy={"threshold": 2.0, "n_indexed": 48, "filter_default": "near-copy"})
    card = render_card(facts)
    assert "## Privacy audit (membership inference)" in card and "## Near-copy filter" in card
    assert f"GAN-Leaks): AUC | {dcr['auc']:.3f}, 95 % CI [{dcr['auc_ci'][0]:.3f}, {dcr['auc_ci'][1]:.3f}]" in card
    assert "| default for requests | `near-copy`" in card and "| threshold | 2.000" in card
    assert "membership-inference attack (dcr) beats chance" in card  # a known limit, from the CI
    assert "indexes 48 of the 96 training images" in card
    skipped = render_card(CardFacts(**{**facts.__dict__, "membership": {"skipped": "no held-out patients"}}))
    assert "Not run: no held-out patients" in skipped


@pytest.mark.stack
def test_registration_packs_the_index_and_the_audit(members, stack: Settings, tmp_path) -> None:
    """``register_run`` end to end on a hand-made checkpoint (an untrained small WGAN-GP, fid_n = 8):
    tags, MLflow metrics, the packed index, the card, and ``eval membership`` reproducing it."""
    from click.testing import CliRunner

    from infra.tracking import configure
    from services.cli.main import main
    from training.gan.config import GanTrainConfig
    from training.gan.loop import CHECKPOINT_FILE
    from training.registry.generators import model_card, register_run
    from training.registry.privacy import load_index

    cfg = GanTrainConfig(dataset=members.dataset, arch="wgan-gp-knee-small", fid_n=8, epochs=1, workers=1)
    torch.manual_seed(0)
    gen, critic = cfg.preset().build()
    torch.save({"generator": gen.state_dict(), "generator_ema": gen.state_dict(), "critic": critic.state_dict(),
                "epoch": 1, "num_classes": None, "config": cfg.model_dump(), "hyperparameters": cfg.hyperparameters()},
               tmp_path / CHECKPOINT_FILE)
    mlflow = configure(stack)
    with mlflow.start_run() as run:
        pass
    reg = register_run(run.info.run_id, name="gan-privacy-registered", checkpoint=str(tmp_path),
                       filter_default="near-copy", settings=stack, progress=lambda _: None)
    tags = reg.tags
    # members: the 8 reference images (all trained on); non-members: the 8 held-out patients' images
    assert tags["mia.n_members"] == "8" and tags["mia.n_nonmembers"] == "8"
    assert float(tags["mia.auc"]) == max(float(tags["mia.dcr.auc"]), float(tags["mia.critic.auc"]))
    assert float(tags["mia.auc_ci_low"]) <= float(tags["mia.auc"]) <= float(tags["mia.auc_ci_high"])
    metrics = mlflow.MlflowClient().get_run(run.info.run_id).data.metrics
    assert metrics["mia_critic_auc"] == pytest.approx(float(tags["mia.critic.auc"]), abs=1e-6)
    # the index is the memorization audit's reference and threshold, packed with the model
    assert float(tags["near_copy.threshold"]) == pytest.approx(float(tags["memorization.real_nn_p1"]), abs=1e-5)
    index = load_index(reg.version_uri, stack)
    assert index.n == 8 and index.dims == 2048 and tags["filter.default"] == "near-copy"
    card = model_card(f"{reg.name}/{reg.version}", stack)
    for text in ("## Privacy audit (membership inference)", "discriminator score (LOGAN): AUC",
                 "| default for requests | `near-copy`", f"| threshold | {float(tags['near_copy.threshold']):.3f}"):
        assert text in card, text
    # on demand: the same samples, the same attacks, the same numbers
    out = CliRunner().invoke(main, ["eval", "membership", "--model", f"{reg.name}/{reg.version}", "--json",
                                    "--bootstrap", "1000"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    again = json.loads(out.stdout)
    for attack in ("dcr", "critic"):
        assert again["attacks"][attack]["auc"] == pytest.approx(float(tags[f"mia.{attack}.auc"]), abs=1e-6)
    assert again["auc_ci"][0] == pytest.approx(float(tags["mia.auc_ci_low"]), abs=1e-6)
