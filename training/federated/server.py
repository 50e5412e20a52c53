"""The federation's server: Flower's FedAvg over the sites, with tracking, checkpoints and pooled FID.

:func:`train_federated` runs one federated GAN training in Flower's simulation runtime
(``flwr.simulation.run_simulation``, in this process), its K sites as Ray actors on the
project's Ray cluster: the driver joins it first (:func:`infra.ray_runtime.connect`), and
Flower's Ray backend uses an initialised Ray as it is (``RayBackend.init_ray``), so sites get
the stack's ``SYNTHRAY_*`` settings through the runtime env. Plain ``flwr``, not
``flwr[simulation]`` (that extra pins ray 2.55.1); see the README's "Federated training".

The strategy is Flower's :class:`flwr.serverapp.strategy.FedAvg` (weighted by
``num-examples``, i.e. each site's image count; sampling ``max(int(K·C), min_fit_clients)``
sites per round). :class:`SiteFedAvg` adds only what the platform needs around it:

- a census before round 1 (a ``query`` message to every site): node → site, image counts,
  class counts and, with FID, each site's Inception (n, μ, Σ), merged exactly into the
  pooled reference (:mod:`.stats`); the server reads no image blob;
- per round: the participants and the dropped sites (a site whose ClientApp fails is dropped
  from the round when ``min_fit_clients`` still holds; otherwise the run stops, resumable),
  logged to the MLflow parent run; the global model's sample grid; the global checkpoint in S3
  (``federated/{run_id}/round-NNNN.pt`` and ``latest.json``); FID every k rounds.

A site whose process dies (crash, OOM kill; the drill SIGKILLs it): Flower 1.32's Ray backend
turns the in-flight ``ray.get``'s ``RayActorError`` (measured: ``ActorUnavailableError``) into an
error reply (dropped as above) and puts the actor back in its pool (``BasicActorPool.add_actor_back_to_pool``) without replacing
it. With Ray's default ``max_restarts=0`` that actor stays dead and every later message it is
given fails too; the actors are therefore created with ``max_restarts=-1`` (passed through
``client_resources``, which Flower hands to ``ClientAppActor.options``), so Ray restarts the
process and the next rounds run on it. Tasks already in flight are not retried
(``max_task_retries=0``): the round loses the site, it does not train it twice. A message given
to an actor while it restarts fails too (``ActorUnavailableError``), so each round first waits
for restarting site actors (:meth:`SiteFedAvg.await_site_actors`, Ray's state API).

MLflow: one parent run (params, per-round metrics, grids, FID) and one child run per site
(its losses and image count, never images).
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from infra.errors import BadInput, NotFound, SynthrayError, Unavailable
from infra.settings import Settings, get_settings
from training.federated.client import DRILL_KEY, PARTS, load_into, make_client_app, pack, unpack
from training.federated.config import FederatedConfig
from training.federated.sites import check_sites, site_name
from training.federated.stats import GaussianStats, merge

EXPERIMENT = "synthray-federated"
KIND = "federated-gan-training"
SITE_TAG = "synthray.federated.site"
CHECKPOINT_PREFIX = "federated/"


def pooled_key(run_id: str) -> str:
    """Object-store key of a run's pooled reference statistics (``np.savez``: n, mu, sigma)."""
    return f"{CHECKPOINT_PREFIX}{run_id}/pooled-statistics.npz"


def checkpoint_key(run_id: str, rnd: int | None = None) -> str:
    """Object-store key of a run's round checkpoint, or of its ``latest.json`` pointer."""
    return f"{CHECKPOINT_PREFIX}{run_id}/" + ("latest.json" if rnd is None else f"round-{rnd:04d}.pt")


@dataclass(frozen=True)
class FederatedResult:
    run_id: str
    site_run_ids: list[str]
    rounds: int  # global rounds finished (including resumed ones)
    checkpoint_key: str
    participants: dict[int, list[str]]  # global round → sites that returned
    dropped: dict[int, list[str]]  # global round → sites that failed
    fid: dict[int, float]
    pooled: GaussianStats | None


class SiteFedAvg:
    """The server side of a run (built inside the ServerApp's thread)."""

    def __init__(self, cfg: FederatedConfig, settings: Settings, run_id: str, site_runs: list[str],
                 num_classes: int, offset: int, progress: Callable[[str], None]) -> None:
        self.cfg, self.settings, self.run_id, self.site_runs = cfg, settings, run_id, site_runs
        self.num_classes, self.offset, self.progress = num_classes, offset, progress
        self.node_site: dict[int, int] = {}
        self.participants: dict[int, list[str]] = {}
        self.dropped: dict[int, list[str]] = {}
        self.fid: dict[int, float] = {}
        self.fid_results: dict[int, dict] = {}  # FidResult.as_dict() of the rounds with FID
        self.pooled: GaussianStats | None = None
        self.reference = None
        from mlflow import MlflowClient

        self.tracker = MlflowClient()

    # -- census ---------------------------------------------------------------------------
    def census(self, grid) -> None:
        """Ask every site for its counts (and statistics); map Flower node ids to sites."""
        from flwr.app import Message, MessageType, RecordDict

        deadline = time.monotonic() + 120
        while len(nodes := list(grid.get_node_ids())) < self.cfg.sites:
            if time.monotonic() > deadline:
                raise Unavailable(f"only {len(nodes)} of {self.cfg.sites} sites connected")
            time.sleep(0.2)
        replies = list(grid.send_and_receive(
            [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes], timeout=3600))
        failed = [m for m in replies if m.has_error()]
        if failed:
            raise Unavailable(f"{len(failed)} site(s) failed the census: {failed[0].error.reason}")
        stats, counts, size = [], np.zeros(self.num_classes, np.int64), None
        for m in sorted(replies, key=lambda m: int(m.content["census"]["site"])):
            c = m.content["census"]
            site = int(c["site"])
            self.node_site[m.metadata.src_node_id] = site
            counts += [int(c[f"class-{k}"]) for k in range(self.num_classes)]
            self.tracker.log_metric(self.site_runs[site], "n_images", float(c["num-examples"]))
            if "stats" in m.content:
                s = m.content["stats"]
                stats.append(GaussianStats(int(c["num-examples"]), s["mu"].numpy(), s["sigma"].numpy()))
                size = size or (int(c["height"]), int(c["width"]))
        self.progress(f"federated: census of {len(replies)} sites, {int(counts.sum())} images "
                      f"({', '.join(str(int(m.content['census']['num-examples'])) for m in replies)})")
        if stats:
            self.pooled = merge(stats)
            self.reference = self._reference(size, counts)
            self._store_pooled()

    def _reference(self, size, counts):
        from training.evaluate.fid import RESIZE_RULE, fid_weights
        from training.evaluate.reference import ReferenceStats

        p = self.pooled
        return ReferenceStats(
            mu=p.mu, sigma=p.sigma, n=p.n, key=pooled_key(self.run_id),
            weights_sha256=fid_weights(self.settings).sha256, resize_rule=RESIZE_RULE, image_size=size,
            cached=False, dims=self.cfg.fid_dims, dataset=self.cfg.gan.dataset,
            labels=np.repeat(np.arange(self.num_classes), counts))

    def _store_pooled(self) -> None:
        """The merged (n, μ, Σ) beside the checkpoints: the FID reference the registration names."""
        from infra.object_store import ObjectStore

        buf = io.BytesIO()
        np.savez(buf, n=self.pooled.n, mu=self.pooled.mu, sigma=self.pooled.sigma)
        ObjectStore(self.settings).put_bytes(pooled_key(self.run_id), buf.getvalue())

    # -- Flower strategy ------------------------------------------------------------------
    def strategy(self):
        from flwr.serverapp.strategy import FedAvg

        server = self

        class _Strategy(FedAvg):
            def configure_train(self, server_round, arrays, config, grid):
                config["round"] = server.offset + server_round
                server.await_site_actors()
                messages = list(super().configure_train(server_round, arrays, config, grid))
                # the messages share this config record: the drill's victim is set once, after sampling
                config[DRILL_KEY] = server.drill_victim(server.offset + server_round,
                                                        [m.metadata.dst_node_id for m in messages])
                return messages

            def aggregate_train(self, server_round, replies):
                return super().aggregate_train(server_round, server.admit(server.offset + server_round, replies))

        return _Strategy(fraction_train=self.cfg.fraction, fraction_evaluate=0.0,
                         min_train_nodes=self.cfg.min_fit_clients, min_available_nodes=self.cfg.sites)

    def await_site_actors(self, timeout: float = 120.0) -> None:
        """Wait (at most ``timeout`` s) while Ray restarts a site actor whose process died.

        A message handed to an actor that is restarting fails at once (``ActorUnavailableError``:
        Flower's actor tasks are at-most-once), so without this wait a site could be dropped from
        the next round because another site's process died in this one (measured: it was).
        """
        import ray
        from ray.util.state import list_actors

        job = ray.get_runtime_context().get_job_id()
        filters = [("class_name", "=", "ClientAppActor"), ("job_id", "=", job), ("state", "=", "RESTARTING")]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not list_actors(address=self.settings.ray_address, filters=filters, raise_on_missing_output=False):
                    return
            except Exception as exc:  # noqa: BLE001 - no state API (no dashboard): the round goes on unwaited
                self.progress(f"federated: cannot list the site actors ({str(exc).splitlines()[0]}); not waiting")
                return
            time.sleep(0.5)

    def drill_victim(self, rnd: int, sampled: list[int]) -> int:
        """The site the failure drill kills in round ``rnd`` (-1: none): the named site when it was
        sampled, or with ``any@ROUND`` the lowest-numbered sampled site (Flower samples at random)."""
        drill = self.cfg.drill()
        if drill is None or drill[1] != rnd:
            return -1
        sites = sorted(self.node_site[n] for n in sampled)
        victim = sites[0] if drill[0] is None else drill[0]
        return victim if victim in sites else -1

    def admit(self, rnd: int, replies) -> list:
        """The round's successful replies; failures are logged and dropped while min_fit_clients holds."""
        replies = list(replies)
        ok = [m for m in replies if not m.has_error()]
        site = lambda m: site_name(self.node_site[m.metadata.src_node_id])  # noqa: E731
        self.participants[rnd] = sorted(site(m) for m in ok)
        self.dropped[rnd] = sorted(site(m) for m in replies if m.has_error())
        self.tracker.log_batch(self.run_id, metrics=_metrics(rnd, {
            "round/sampled": len(replies), "round/participants": len(ok), "round/dropped": len(self.dropped[rnd])}))
        self.tracker.log_dict(self.run_id, {"round": rnd, "participants": self.participants[rnd],
                                            "dropped": self.dropped[rnd],
                                            "errors": [m.error.reason for m in replies if m.has_error()]},
                              f"rounds/round-{rnd:04d}.json")
        note = f"; dropped {', '.join(self.dropped[rnd])}" if self.dropped[rnd] else ""
        self.progress(f"federated: round {rnd}/{self.cfg.rounds}: {', '.join(self.participants[rnd])} trained{note}")
        if len(ok) < self.cfg.min_fit_clients:
            raise Unavailable(f"round {rnd}: {len(ok)} of {len(replies)} sampled sites returned, fewer than "
                              f"--min-fit-clients {self.cfg.min_fit_clients}; resume with --resume {self.run_id}")
        return ok

    # -- after each round -----------------------------------------------------------------
    def networks(self, arrays) -> tuple[torch.nn.Module, torch.nn.Module]:
        torch.manual_seed(self.cfg.gan.seed)  # the sites' starting weights for a net that is not averaged
        gen, critic = self.cfg.gan.preset().build(self.num_classes)
        for part, net in (("g", gen), ("d", critic)):
            if part in PARTS[self.cfg.average]:
                load_into(net, unpack(arrays, part))
        return gen, critic

    def after_round(self, server_round: int, arrays):
        """Flower's ``evaluate_fn``: grid, checkpoint and (every k rounds) FID of the global model."""
        from flwr.app import MetricRecord

        if server_round == 0:
            return None
        rnd = self.offset + server_round
        gen, critic = self.networks(arrays)
        metrics: dict[str, float] = {}
        if "g" in PARTS[self.cfg.average]:
            self._grid(gen, rnd)
            last = rnd == self.cfg.rounds
            if self.reference is not None and (rnd % self.cfg.fid_every == 0 or last):
                self.fid_results[rnd] = self._fid(gen)
                metrics["fid"] = self.fid[rnd] = self.fid_results[rnd]["fid"]
                self.progress(f"federated: round {rnd}: FID {metrics['fid']:.2f} against the pooled statistics "
                              f"of {self.reference.n} images")
        self._checkpoint(rnd, gen, critic)
        if metrics:
            self.tracker.log_batch(self.run_id, metrics=_metrics(rnd, metrics))
        return MetricRecord(metrics) if metrics else None

    def _grid(self, gen, rnd: int) -> None:
        from training.gan.loop import grid_conditions, sample_grid

        g = torch.Generator().manual_seed(self.cfg.gan.seed)
        z = torch.randn(self.cfg.gan.grid_size, self.cfg.gan.preset().latent_dim, generator=g)
        y = grid_conditions(self.cfg.gan.grid_size, self.num_classes) if self.cfg.gan.preset().conditional else None
        self.tracker.log_image(self.run_id, sample_grid(gen, z, y), key="global_samples", step=rnd)

    def _fid(self, gen) -> dict:
        from training.evaluate import fid_to_reference
        from training.evaluate.generator import fakes_like
        from training.nets.sampler import GeneratorSampler

        preset = self.cfg.gan.preset()
        sampler = GeneratorSampler(gen, preset.latent_dim,
                                   num_classes=self.num_classes if preset.conditional else None)
        fake, _ = fakes_like(sampler, self.reference, seed=self.cfg.gan.seed + 1, settings=self.settings)
        return fid_to_reference(fake, self.reference, self.settings).as_dict()

    def _checkpoint(self, rnd: int, gen, critic) -> None:
        from infra.object_store import ObjectStore

        parts = PARTS[self.cfg.average]
        state = {"generator": gen.state_dict() if "g" in parts else None,
                 "critic": critic.state_dict() if "d" in parts else None,
                 "round": rnd, "epoch": rnd, "config": self.cfg.gan.model_dump(), "federated": self.cfg.model_dump(),
                 "num_classes": self.num_classes, "multilabel": False, "run_id": self.run_id,
                 "participants": self.participants, "dropped": self.dropped, "fid": self.fid_results.get(rnd),
                 "eval_seed": self.cfg.gan.seed + 1}
        buf = io.BytesIO()
        torch.save(state, buf)
        store = ObjectStore(self.settings)
        store.put_bytes(checkpoint_key(self.run_id, rnd), buf.getvalue())
        # the pointer moves only after the round's checkpoint is stored: resume never sees half a round
        store.put_bytes(checkpoint_key(self.run_id), json.dumps({"round": rnd, "key": checkpoint_key(self.run_id, rnd)}
                                                                ).encode(), content_type="application/json")
        self.tracker.set_tag(self.run_id, "synthray.checkpoint.latest", store.uri(checkpoint_key(self.run_id, rnd)))


def _metrics(step: int, values: dict[str, float]) -> list:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in values.items()]


def latest_checkpoint(run_id: str, settings: Settings | None = None) -> tuple[int, dict] | None:
    """(round, state) of a run's last finished round, or None when it has none."""
    from infra.object_store import ObjectStore

    store = ObjectStore(settings or get_settings())
    if not store.exists(checkpoint_key(run_id)):
        return None
    pointer = json.loads(store.get_bytes(checkpoint_key(run_id)))
    state = torch.load(io.BytesIO(store.get_bytes(pointer["key"])), map_location="cpu", weights_only=False)
    return int(pointer["round"]), state


def _site_runs(client, experiment_id: str, run_id: str, sites: int, resuming: bool) -> list[str]:
    if resuming:
        found = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{run_id}'", max_results=10_000)
        by_site = {r.data.tags.get(SITE_TAG): r.info.run_id for r in found}
        if all(site_name(i) in by_site for i in range(sites)):
            return [by_site[site_name(i)] for i in range(sites)]
    return [client.create_run(experiment_id, run_name=site_name(i),
                              tags={"mlflow.parentRunId": run_id, SITE_TAG: site_name(i)}).info.run_id
            for i in range(sites)]


def train_federated(cfg: FederatedConfig, settings: Settings | None = None, resume: str | None = None,
                    progress: Callable[[str], None] = print) -> FederatedResult:
    """Run (or resume) a federated GAN training; returns its run ids, rounds, participants and FIDs.

    Args:
        cfg: the run; ``cfg.gan.dataset`` must have ``site-0`` … ``site-{K-1}`` subsets
            (``synthray catalog split REF --sites K``) with K = ``cfg.sites``.
        settings: the stack (object store, MLflow, Ray).
        resume: parent run id of an earlier run: continue after its last finished round, with
            its dataset version; ``cfg.rounds`` is the total.
        progress: receives one line per round.

    Raises:
        BadInput: the dataset has no (or another number of) sites, or a resumed run differs.
        Unavailable: fewer than ``min_fit_clients`` sites returned in a round.
    """
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # before flwr is imported: no phone-home
    from training.catalog.selection import catalog
    from infra.ray_runtime import connect
    from infra.tracking import configure
    from training.registry import tags as tag

    settings = settings or get_settings()
    manifest = catalog(settings).manifest(cfg.gan.dataset)
    found = check_sites(manifest, cfg.sites)
    offset, initial = 0, None
    if resume:
        last = latest_checkpoint(resume, settings)
        if last is None:
            raise NotFound(f"run {resume} has no finished federated round to resume from")
        offset, initial = last
        before = FederatedConfig(**initial["federated"])
        if (before.gan.arch, before.sites, before.average) != (cfg.gan.arch, cfg.sites, cfg.average):
            raise BadInput(f"run {resume} trained {before.gan.arch} on {before.sites} sites averaging "
                           f"{before.average}; resume it with the same --arch, --sites and --average")
        cfg = cfg.model_copy(update={"gan": cfg.gan.model_copy(update={"dataset": before.gan.dataset})})
        if offset >= cfg.rounds:
            raise BadInput(f"run {resume} already finished {offset} rounds (--rounds {cfg.rounds})", field="rounds")
    else:
        cfg = cfg.model_copy(update={"gan": cfg.gan.model_copy(update={"dataset": str(manifest.ref)})})
    num_classes = len(manifest.classes)

    mlflow = configure(settings)
    from mlflow import MlflowClient

    client = MlflowClient()
    experiment = mlflow.set_experiment(EXPERIMENT)
    if resume:
        run_id = resume
        client.set_terminated(run_id, "RUNNING")
    else:
        hp = cfg.gan.hyperparameters()
        run_id = client.create_run(experiment.experiment_id, run_name=f"federated-{cfg.gan.arch}-{cfg.sites}sites",
                                   tags={tag.KIND: KIND, tag.DATASET: cfg.gan.dataset}).info.run_id
        params = {"dataset": cfg.gan.dataset, "arch": cfg.gan.arch, "sites": cfg.sites, "fraction": cfg.fraction,
                  "rounds": cfg.rounds, "local_iters": cfg.local_iters, "average": cfg.average,
                  "min_fit_clients": cfg.min_fit_clients, "sampled_per_round": cfg.sampled_per_round(),
                  "fid_every": cfg.fid_every, "fid_dims": cfg.fid_dims, "seed": cfg.gan.seed,
                  **{k: hp[k] for k in ("batch_size", "critic_steps", "gp_lambda", "lr", "latent_dim", "augment")}}
        for key, value in params.items():
            client.log_param(run_id, key, value)
    site_runs = _site_runs(client, experiment.experiment_id, run_id, cfg.sites, bool(resume))
    progress(f"federated: MLflow run {run_id}, {cfg.sites} sites, {cfg.sampled_per_round()} per round, "
             f"rounds {offset + 1}..{cfg.rounds}")

    server = SiteFedAvg(cfg, settings, run_id, site_runs, num_classes, offset, progress)

    def main(grid, context) -> None:
        from flwr.app import ConfigRecord

        server.census(grid)
        if initial is None:
            torch.manual_seed(cfg.gan.seed)
            gen, critic = cfg.gan.preset().build(num_classes)
        else:
            gen, critic = server.networks(pack_state(initial, cfg.average))
        server.strategy().start(
            grid, pack(gen, critic, PARTS[cfg.average]), num_rounds=cfg.rounds - offset,
            train_config=ConfigRecord({"num-classes": num_classes, "child-runs": site_runs}),
            evaluate_fn=server.after_round)

    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    app = ServerApp()
    app.main()(main)
    connect(settings)  # Flower's Ray backend keeps an initialised Ray: the sites run on the stack's cluster
    status = "FAILED"
    try:
        with _quiet_flower():
            run_simulation(server_app=app, client_app=make_client_app(cfg), num_supernodes=cfg.sites,
                           backend_config={"client_resources": {"num_cpus": cfg.client_cpus, "num_gpus": 0.0,
                                                                "max_restarts": -1}})
        status = "FINISHED"
    except Exception as failure:  # noqa: BLE001 - re-raised below without Flower's frames
        raise _detached(failure, run_id) from None
    finally:
        for rid in [*site_runs, run_id]:
            client.set_terminated(rid, status)
    done = max(server.participants, default=offset)
    return FederatedResult(run_id, site_runs, done, checkpoint_key(run_id, done), server.participants,
                           server.dropped, server.fid, server.pooled)


def _detached(failure: Exception, run_id: str) -> Exception:
    """``failure`` without its traceback: the error a caller may keep (pytest does) holds no frame.

    Flower's simulation ends with ``ray.shutdown()`` in this process; the frames of a failed run
    still reference its site actors' handles, and Ray handles outliving their session can crash
    the interpreter when garbage-collected much later. A SynthrayError (the server's own refusal,
    e.g. too few returns) keeps its type and message; anything else becomes Unavailable with the
    cause's last lines.
    """
    import traceback

    if isinstance(failure, SynthrayError):
        failure.__traceback__ = failure.__cause__ = failure.__context__ = None
        return failure
    cause = "".join(traceback.format_exception(failure))[-2000:]
    return Unavailable(f"federated run {run_id} stopped: {type(failure).__name__}: {failure}\n{cause}")


def pack_state(state: dict, average: str):
    """The averaged networks of a stored checkpoint as an ArrayRecord (resume)."""
    from flwr.app import ArrayRecord

    nets = {"g": state["generator"], "d": state["critic"]}
    return ArrayRecord({f"{p}.{k}": v for p in PARTS[average] for k, v in nets[p].items()})


class _quiet_flower:
    """Flower logs every message at INFO to the console; keep its WARNING+ only (progress is ours)."""

    def __enter__(self):
        import logging

        self.logger = logging.getLogger("flwr")
        self.level = self.logger.level
        self.logger.setLevel(logging.WARNING)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.setLevel(self.level)
