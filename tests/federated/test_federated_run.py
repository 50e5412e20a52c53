"""A federated GAN run on the real stack: 4 phantom sites, Flower FedAvg of G and D, a site killed.

Issue 27's make-test run, shared by the tests: 4 sites, fraction 0.5, 3 rounds, the small preset
(2 local iterations, batch 8, min_fit_clients 1). Rounds 1-2 run in one simulation without FID;
in round 1 the drill SIGKILLs the process of the lowest-numbered sampled site (``any@1``: Flower
samples at random) and round 2 runs on the restarted actor. Round 3 is a CLI ``--resume``: its
census collects the sites' Inception statistics, it scores FID against their merge and registers
the global generator (the default). Two simulations, not three, and Inception once per site and
once at the server: every simulation starts its Ray actors afresh (most of the runtime).
"""

from __future__ import annotations

import io
import json
import math
import re
import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from infra.object_store import ObjectStore
from infra.settings import Settings
from training.catalog.phantom import PhantomSpec
from training.catalog.selection import catalog, publish_phantom
from training.federated.config import FederatedConfig
from training.federated.server import (
    SITE_TAG,
    FederatedResult,
    checkpoint_key,
    latest_checkpoint,
    pooled_key,
    train_federated,
)
from training.federated.sites import site_subsets
from training.federated.stats import GaussianStats
from training.gan.config import GanTrainConfig

pytestmark = pytest.mark.stack
SITES, ROUNDS, FIRST, KILL_ROUND, DIMS, ITERS = 4, 3, 2, 1, 64, 2  # FIRST: rounds before the resume


@pytest.fixture(scope="module")
def sited(stack: Settings) -> str:
    """A phantom version with site-0 … site-3, declared through the CLI."""
    from services.cli.main import main

    manifest = publish_phantom(40, PhantomSpec(size=64, seed=11), name="phantom-fed-test", settings=stack,
                               progress=lambda _: None)
    out = CliRunner().invoke(main, ["catalog", "split", str(manifest.ref), "--sites", str(SITES)])
    assert out.exit_code == 0, out.output
    return out.output.strip().splitlines()[-1]


def _cfg(dataset: str, **kw) -> FederatedConfig:
    gan = GanTrainConfig(dataset=dataset, arch="wgan-gp-knee-small", batch_size=8, grid_size=4, fid_every=0)
    return FederatedConfig(**{"gan": gan, "sites": SITES, "fraction": 0.5, "rounds": ROUNDS, "local_iters": ITERS,
                              "min_fit_clients": 1, "fid_every": ROUNDS, "fid_dims": DIMS, **kw})


def _resume_args(dataset: str, run_id: str, *extra: str) -> list[str]:
    return ["train", "federated", "--dataset", dataset, "--sites", str(SITES), "--fraction", "0.5", "--rounds",
            str(ROUNDS), "--local-iters", str(ITERS), "--batch-size", "8", "--fid-every", str(ROUNDS),
            "--fid-dims", str(DIMS), *extra, "--resume", run_id]


@dataclass(frozen=True)
class Run:
    first: FederatedResult  # rounds 1..FIRST (the kill in round KILL_ROUND)
    lines: list[str]  # progress of both parts
    reads: list[str]  # every object-store key this process (the server) read, both parts
    model: str  # models:/NAME/VERSION registered by the resume
    earlier_actors: frozenset[str]  # site actors of other tests' simulations on the session's cluster

    @property
    def run_id(self) -> str:
        return self.first.run_id


@pytest.fixture(scope="module")
def run(stack: Settings, sited: str, free_cpus) -> Run:
    from services.cli.main import main

    free_cpus(stack.ray_num_cpus)  # Flower sizes its actor pool from the cluster: earlier actors must be gone
    earlier = frozenset(a.actor_id for a in _site_actors(stack))

    lines: list[str] = []
    t0 = time.monotonic()
    # Instrument (not mock) this process's object-store reads: the server runs here, the sites in Ray actors.
    reads: list[str] = []
    get_bytes = ObjectStore.get_bytes

    def recorded(self, key: str) -> bytes:
        reads.append(key)
        return get_bytes(self, key)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ObjectStore, "get_bytes", recorded)
        first = train_federated(_cfg(sited, rounds=FIRST, fid_every=0, drill_fail=f"any@{KILL_ROUND}"), settings=stack,
                                progress=lambda line: lines.append(f"{time.monotonic() - t0:5.1f}s {line}"))
        out = CliRunner().invoke(main, _resume_args(sited, first.run_id))  # round 3, FID, registration
    lines += [f"{time.monotonic() - t0:5.1f}s (resume) {line}" for line in out.output.splitlines()]
    print("\n".join(lines))
    assert out.exit_code == 0, out.output
    return Run(first, lines, reads, re.search(r"^model: (models:/\S+)", out.output, re.M).group(1), earlier)


def _site_actors(stack: Settings) -> list:
    """Every Flower site actor the stack's Ray cluster has seen (alive or dead)."""
    from ray.util.state import list_actors

    return list_actors(address=stack.ray_address, filters=[("class_name", "=", "ClientAppActor")], limit=1000,
                       detail=True, raise_on_missing_output=False)


def _pooled(stack: Settings, run_id: str) -> GaussianStats:
    """The pooled statistics the server merged from the sites' (n, μ, Σ) and stored for the registration."""
    stored = np.load(io.BytesIO(ObjectStore(stack).get_bytes(pooled_key(run_id))))
    return GaussianStats(int(stored["n"]), stored["mu"], stored["sigma"])


def _rounds(client, run_id: str, tmp_path) -> dict[int, dict]:
    """The per-round records the server logged: participants, dropped sites, errors."""
    return {rnd: json.loads(open(client.download_artifacts(run_id, f"rounds/round-{rnd:04d}.json",
                                                           str(tmp_path))).read()) for rnd in range(1, ROUNDS + 1)}


@pytest.fixture(scope="module")
def client(stack: Settings):
    from mlflow import MlflowClient

    return MlflowClient(stack.mlflow_tracking_uri)


def test_sites_split_by_patient_through_the_cli(stack: Settings, sited: str) -> None:
    manifest = catalog(stack).manifest(sited)
    assert site_subsets(manifest) == [f"site-{i}" for i in range(SITES)]
    members = [set(manifest.subset(s)) for s in site_subsets(manifest)]
    train = {r.sha256 for r in manifest.records if r.split == "train"}
    assert set().union(*members) == train and sum(map(len, members)) == len(train)
    patients = [{r.patient_id for r in manifest.records if r.sha256 in m} for m in members]
    assert all(patients) and sum(map(len, patients)) == len(set().union(*patients))  # pairwise disjoint


def test_a_killed_site_is_dropped_and_the_run_finishes(run, client, tmp_path) -> None:
    """The drill SIGKILLs the lowest-numbered site sampled in round 1; the round's other site trains, and
    round 2 (same simulation, on the restarted actor) trains both of its sampled sites again."""
    first = run.first
    assert first.rounds == FIRST and client.get_run(run.run_id).info.status == "FINISHED"
    rounds = _rounds(client, run.run_id, tmp_path)
    for rnd, logged in rounds.items():  # int(4 · 0.5) = 2 sites sampled per round
        assert len(logged["participants"]) + len(logged["dropped"]) == 2, (rnd, logged)
    logged = rounds[KILL_ROUND]
    sampled = sorted(logged["participants"] + logged["dropped"], key=lambda s: int(s.removeprefix("site-")))
    killed = sampled[0]
    assert logged["participants"] == sampled[1:] and logged["dropped"] == [killed]
    # the process died (Ray reports its actor unavailable); it raised no exception of its own
    assert "ray.exceptions.Actor" in logged["errors"][0] and "drill:" not in logged["errors"][0], logged["errors"]
    assert {rnd: r["dropped"] for rnd, r in rounds.items()} == {1: [killed], 2: [], 3: []}
    assert first.participants[KILL_ROUND] == logged["participants"] and first.dropped[KILL_ROUND] == [killed]
    history = {m.step: m.value for m in client.get_metric_history(run.run_id, "round/participants")}
    assert history == {1: 1.0, 2: 2.0, 3: 2.0}
    assert any(f"dropped {killed}" in line for line in run.lines)


def test_the_server_process_reads_no_image_blob(run) -> None:
    """The server (this process: two simulations and the registration) read manifests, checkpoints and
    model files only; every image read happened at a site (Ray actor)."""
    assert any("/versions/" in key for key in run.reads), run.reads  # the instrument sees the manifest reads
    assert checkpoint_key(run.run_id) in run.reads  # … the resume's and the registration's checkpoint reads
    assert not [key for key in run.reads if "/blobs/" in key], run.reads


def test_a_site_reads_only_its_own_blobs(run, stack: Settings, client, sited: str) -> None:
    """The ClientApp's census and train step (the functions the actors run), run here with the object
    store's reads instrumented: every image blob read is one of the site's own."""
    from flwr.app import ConfigRecord, RecordDict

    from training.catalog.store import Catalog
    from training.federated.client import PARTS, _site_tensors, census, pack, train_site

    cfg = _cfg(sited)
    manifest = catalog(stack).manifest(sited)
    own = {Catalog.blob_key(sha) for sha in manifest.subset("site-1")}
    torch.manual_seed(0)
    gen, critic = cfg.gan.preset().build(len(manifest.classes))
    run_id = client.create_run(client.create_experiment("federated-boundary-test")).info.run_id
    reads: list[str] = []
    get_bytes = ObjectStore.get_bytes

    def recorded(self, key: str) -> bytes:
        reads.append(key)
        return get_bytes(self, key)

    _site_tensors.cache_clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ObjectStore, "get_bytes", recorded)
        census(cfg, 1)
        train_site(cfg.model_copy(update={"local_iters": 1}), 1, pack(gen, critic, PARTS["g+d"]),
                   ConfigRecord({"round": 1, "num-classes": len(manifest.classes), "child-runs": ["-", run_id]}),
                   RecordDict())
    blobs = {key for key in reads if "/blobs/" in key}
    assert blobs == own  # all of its images (training) and nothing else


def test_sites_ran_as_actors_on_the_stacks_ray_cluster(run, stack: Settings) -> None:
    """Flower kept the driver's Ray connection (infra.ray_runtime.connect): its site actors are the stack's,
    and the killed site's actor process was restarted by Ray (``max_restarts=-1``) for the next round."""
    from infra.ray_runtime import connect

    connect(stack)  # Flower's backend shut this process's Ray connection down at the run's end
    actors = [a for a in _site_actors(stack) if a.actor_id not in run.earlier_actors]
    assert 2 <= len(actors) <= 2 * stack.ray_num_cpus  # two simulations, one actor per client_cpus=1 CPU each
    assert sum(int(a.num_restarts) for a in actors) == 1  # exactly one site process died (the drill)


def test_parent_and_site_child_runs(run, client, sited: str, tmp_path) -> None:
    parent = client.get_run(run.run_id)
    assert parent.data.params["dataset"] == sited and parent.data.params["average"] == "g+d"
    assert parent.data.params["sampled_per_round"] == "2"
    manifest = catalog().manifest(sited)
    sizes = {s: len(manifest.select(split="train", subset=s)) for s in site_subsets(manifest)}
    rounds = _rounds(client, run.run_id, tmp_path)
    assert len(run.first.site_run_ids) == SITES
    for i, run_id in enumerate(run.first.site_run_ids):
        child = client.get_run(run_id)
        assert child.data.tags["mlflow.parentRunId"] == run.run_id and child.data.tags[SITE_TAG] == f"site-{i}"
        assert child.data.metrics["n_images"] == sizes[f"site-{i}"]
        steps = {m.step for m in client.get_metric_history(run_id, "step/loss_d")}
        trained = [rnd for rnd, logged in rounds.items() if f"site-{i}" in logged["participants"]]
        # the site's steps are its rounds' local iterations (the resume kept the same child run);
        # the killed site logged nothing in its round
        assert steps == {(rnd - 1) * ITERS + k for rnd in trained for k in range(1, ITERS + 1)}
        assert client.list_artifacts(run_id) == []  # never images
    grids = sorted(f.path for f in client.list_artifacts(run.run_id, "images")
                   if "global_samples" in f.path and f.path.endswith(".png"))
    assert len(grids) == ROUNDS
    from PIL import Image

    last = np.asarray(Image.open(client.download_artifacts(run.run_id, grids[-1], str(tmp_path))))
    assert last.std() > 5  # a grid of samples, not a blank image (kept under pytest's tmp dir to look at)


def test_global_checkpoint_every_round_and_fid_on_pooled_statistics(run, stack: Settings, client) -> None:
    store = ObjectStore(stack)
    for rnd in range(1, ROUNDS + 1):
        assert store.exists(checkpoint_key(run.run_id, rnd))
    rnd, state = latest_checkpoint(run.run_id, stack)
    fid = {m.step: m.value for m in client.get_metric_history(run.run_id, "fid")}
    assert rnd == ROUNDS and set(fid) == {ROUNDS} and math.isfinite(fid[ROUNDS]) and fid[ROUNDS] > 0
    assert state["fid"]["fid"] == pytest.approx(fid[ROUNDS]) and state["fid"]["n_real"] == _pooled(stack, run.run_id).n
    assert run.first.fid == {} and run.first.pooled is None  # the first part ran without FID


def test_global_generator_registered_with_every_site_in_its_lineage(run, stack: Settings, client,
                                                                     sited: str) -> None:
    """Registered like any GAN (kind, FID, card, challenger alias); its lineage is the four sites'
    selections, which the augmentation experiments' leakage guard reads as their union."""
    from training.experiments.guard import LeakageError, check_disjoint, lineage
    from training.registry.generators import CHALLENGER, load_generator, resolve_version

    version = resolve_version(client, run.model.removeprefix("models:/"))
    tags = version.tags
    assert tags["synthray.kind"] == "gan-generator" and version.run_id == run.run_id
    assert client.get_model_version_by_alias(version.name, CHALLENGER).version == version.version
    assert json.loads(tags["dataset.sites"]) == [{"split": "train", "subset": f"site-{i}"} for i in range(SITES)]
    assert "dataset.selection" not in tags  # one lineage, never two that could disagree
    manifest = catalog(stack).manifest(sited)
    fid = client.get_metric_history(run.run_id, "fid")[-1].value
    assert float(tags["fid"]) == pytest.approx(fid, abs=1e-6) and tags["epoch"] == str(ROUNDS)
    assert int(tags["fid.n_real"]) == _pooled(stack, run.run_id).n == sum(len(manifest.subset(s)) for s in
                                                                          site_subsets(manifest))
    assert tags["fid.reference_key"] == pooled_key(run.run_id)
    assert "never leave their site" in tags["kid.skipped"] and "memorization.skipped" in tags
    assert "federated sites" in version.description and "site-3" in version.description

    trained = lineage(version, catalog(stack))
    assert {r.sha256 for r in trained.records} == {sha for s in site_subsets(manifest) for sha in manifest.subset(s)}
    test = [r for r in manifest.records if r.split == "test"]
    assert "disjoint from test" in check_disjoint([trained], {"test": test})[0]
    site3 = manifest.select(split="train", subset=f"site-{SITES - 1}")  # the last site's images are in it
    with pytest.raises(LeakageError, match="shares data"):
        check_disjoint([trained], {"test": site3[:1]})
    images = load_generator(run.model, stack).generate(2, seed=5)
    assert images.shape == (2, 64, 64) and images.dtype == np.uint8


def test_pooled_statistics_merged_from_sites_equal_the_pooled_computation(run, stack: Settings, sited: str) -> None:
    """The server's reference (stored beside the checkpoints), merged from the sites' (n, μ, Σ), equals μ and Σ
    computed on the pooled
    images' features to 1e-10. The features are the ones each site extracted (read back from its cached
    statistics here, in the test, not by the server): Inception run again on the pooled images in other
    batches moves each feature by float32 round-off (~6e-8 measured), which is Inception's, not the merge's."""
    from training.evaluate.reference import reference_statistics

    sites = [reference_statistics(sited, split="train", subset=f"site-{i}", dims=DIMS, settings=stack)
             for i in range(SITES)]
    assert all(s.cached for s in sites)  # the sites' own census computed and stored them
    pooled = GaussianStats.of(np.concatenate([s.features.astype(np.float64) for s in sites]))
    merged = _pooled(stack, run.run_id)
    assert merged.n == pooled.n == sum(s.n for s in sites)
    np.testing.assert_allclose(merged.mu, pooled.mu, rtol=0, atol=1e-10)
    np.testing.assert_allclose(merged.sigma, pooled.sigma, rtol=0, atol=1e-10)


def test_resume_continues_after_the_last_finished_round(run, stack: Settings, client, sited: str) -> None:
    """The CLI resume trained round 3 only, from round 2's global weights; registering with no FID is refused."""
    from services.cli.main import main

    store = ObjectStore(stack)
    before = torch.load(io.BytesIO(store.get_bytes(checkpoint_key(run.run_id, FIRST))), weights_only=False)
    before = before["generator"]
    rnd, state = latest_checkpoint(run.run_id, stack)
    assert rnd == ROUNDS and list(state["participants"]) == [ROUNDS]  # the resumed part's rounds only
    assert len(state["participants"][ROUNDS]) == 2
    assert any(not torch.equal(before[k], state["generator"][k]) for k in before if before[k].is_floating_point())
    history = {m.step for m in client.get_metric_history(run.run_id, "round/participants")}
    assert history == set(range(1, ROUNDS + 1))
    args = _resume_args(sited, run.run_id)
    args[args.index("--fid-every") + 1] = "0"
    refused = CliRunner().invoke(main, args)  # before any work: the version states the global FID
    assert refused.exit_code == 1 and "--fid-every >= 1 or --no-register" in refused.output


def test_fewer_returns_than_min_fit_clients_stop_the_run(stack: Settings, client, sited: str) -> None:
    """A round where fewer than min_fit_clients sites return raises Unavailable (the run is resumable)."""
    from flwr.app import Error, Message, MetricRecord, RecordDict

    from infra.errors import Unavailable
    from training.federated.server import SiteFedAvg

    run_id = client.create_run(client.create_experiment("federated-admit-test")).info.run_id
    server = SiteFedAvg(_cfg(sited).model_copy(update={"min_fit_clients": 2}), stack, run_id, [], 5, 0, lambda _: None)
    server.node_site = {7: 0, 9: 1}
    sent = [Message(RecordDict(), dst_node_id=n, message_type="train") for n in (7, 9)]
    ok = Message(RecordDict({"metrics": MetricRecord({"num-examples": 3})}), reply_to=sent[0])
    failed = Message(Error(code=0, reason="site lost"), reply_to=sent[1])
    with pytest.raises(Unavailable, match="1 of 2 sampled sites returned, fewer than --min-fit-clients 2"):
        server.admit(4, [ok, failed])
    assert server.participants[4] == ["site-0"] and server.dropped[4] == ["site-1"]
