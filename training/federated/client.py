"""A site of the federation: Flower ClientApp that trains the project's GAN step on its own images.

Every message carries the global arrays of the averaged networks (``g.*`` / ``d.*``, see
:func:`pack`). The site

- **census** (``query``): reports its image count, image size and class counts, and, when the
  run has FID, the Inception statistics (n, μ, Σ) of its own images (:mod:`.stats`). This is
  the only evaluation data that leaves a site; no image does.
- **train**: loads the global networks, runs ``local_iters`` generator updates of
  :func:`training.gan.loop.train_step` (the preset's loss, critic steps, gradient penalty and
  DiffAugment when enabled) on batches of its own catalog subset ``site-i``, logs the losses
  to its MLflow child run, and replies with the updated arrays and ``num-examples`` = its image
  count, FedAvg's weight (McMahan et al. 2017, eq. in Algorithm 1: n_k / n).

The failure drill (``drill_fail``): the server names the round's victim in the train config
(``drill-site``); that site SIGKILLs its own Ray actor process halfway through its local
iterations, so the round loses it exactly as it would lose a crashed hospital node.

A network that is not averaged (``--average g`` or ``d``) stays at the site between rounds, in
the node's Flower state. Adam starts fresh at every site each round (the paper is silent;
moments of another site's optimizer mean nothing to this one); the LR schedule continues from
the updates the round's site would have made had it trained every round.
"""

from __future__ import annotations

import os
import signal
import time
from functools import lru_cache

import numpy as np
import torch

from training.federated.config import FederatedConfig
from training.federated.sites import site_name

PARTS = {"g": ("g",), "d": ("d",), "g+d": ("g", "d")}
DRILL_KEY = "drill-site"  # train config: the site the server's failure drill kills this round (-1: none)


def pack(gen: torch.nn.Module | None, critic: torch.nn.Module | None, parts: tuple[str, ...]):
    """ArrayRecord ``{g.NAME: …, d.NAME: …}`` of the ``parts`` networks' state dicts."""
    from flwr.app import ArrayRecord

    nets = {"g": gen, "d": critic}
    return ArrayRecord({f"{p}.{k}": v.detach().cpu() for p in parts for k, v in nets[p].state_dict().items()})


def unpack(arrays, part: str) -> dict[str, torch.Tensor]:
    """State dict of one network (``g`` or ``d``) from an ArrayRecord made by :func:`pack`."""
    state = arrays.to_torch_state_dict()
    return {k[len(part) + 1:]: v for k, v in state.items() if k.startswith(f"{part}.")}


def load_into(net: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load averaged arrays; integer buffers (BatchNorm's step count) come back as floats and are rounded."""
    own = net.state_dict()
    net.load_state_dict({k: v.round().to(own[k].dtype) if not own[k].is_floating_point() else v.to(own[k].dtype)
                         for k, v in state.items()})


@lru_cache(maxsize=4)
def _site_tensors(dataset: str, split: str | None, site: int, image_size: int):
    """The site's images (only its own blobs are read), cached in the actor between rounds."""
    from training.catalog.selection import load_tensors

    return load_tensors(dataset, split=split, subset=site_name(site), image_size=image_size)


def census(cfg: FederatedConfig, site: int):
    """RecordDict of the site's census: counts, image size and (with FID) its Inception statistics."""
    from flwr.app import ArrayRecord, MetricRecord, RecordDict

    from training.catalog.selection import catalog

    gan = cfg.gan
    manifest = catalog().manifest(gan.dataset)
    records = manifest.select(split=gan.split, subset=site_name(site))
    counts = np.bincount([r.label for r in records], minlength=len(manifest.classes))
    metrics = {"num-examples": len(records), "site": site, **{f"class-{k}": int(c) for k, c in enumerate(counts)}}
    content = {"census": MetricRecord(metrics)}
    if cfg.fid_every:
        from training.evaluate.reference import reference_statistics

        ref = reference_statistics(gan.dataset, split=gan.split, subset=site_name(site), dims=cfg.fid_dims)
        content["census"]["height"], content["census"]["width"] = ref.image_size
        content["stats"] = ArrayRecord({"mu": torch.from_numpy(ref.mu), "sigma": torch.from_numpy(ref.sigma)})
    return RecordDict(content)


def train_site(cfg: FederatedConfig, site: int, arrays, config, state) -> tuple:
    """One round at one site: (ArrayRecord of the averaged nets, MetricRecord, updated local state)."""
    from flwr.app import ArrayRecord, MetricRecord
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from infra.settings import get_settings
    from infra.tracking import configure
    from training.gan.loop import build_pair, epoch_seed, lr_lambda, make_augment, train_step
    from training.gan.losses import make_loss

    gan, hp = cfg.gan, cfg.gan.hyperparameters()
    rnd, num_classes = int(config["round"]), int(config["num-classes"])
    parts = PARTS[cfg.average]
    torch.manual_seed(gan.seed)  # every site's non-averaged net starts from the same weights
    pair = build_pair(gan.preset(), hp, num_classes)
    for part, net in (("g", pair.gen), ("d", pair.critic)):
        if part in parts:
            load_into(net, unpack(arrays, part))
        elif "local" in state:
            load_into(net, unpack(state["local"], part))
    # The LR schedule continues where this site's updates would be had it trained every round.
    done = (rnd - 1) * cfg.local_iters
    schedule = lr_lambda(hp["decay_form"], hp["lr_decay"])
    pair.sched_g = torch.optim.lr_scheduler.LambdaLR(pair.opt_g, lambda t: schedule(t + done))
    pair.sched_d = torch.optim.lr_scheduler.LambdaLR(pair.opt_d, lambda t: schedule(t + done * hp["critic_steps"]))
    augment, _ = make_augment(hp)
    loss = make_loss(hp["loss"], hp["gp_lambda"])

    data = _site_tensors(gan.dataset, gan.split, site, hp["image_size"])
    n = len(data.images)
    batch = min(hp["batch_size"], n)
    torch.manual_seed(epoch_seed(gan.seed, site, rnd))
    drilled = int(config.get(DRILL_KEY, -1)) == site
    history: dict[str, list[float]] = {}
    order = torch.cat([torch.randperm(n) for _ in range(-(-cfg.local_iters * batch // n))])
    started = time.perf_counter()
    for i in range(cfg.local_iters):
        if drilled and i == cfg.local_iters // 2:
            _die(f"drill: {site_name(site)} killed mid-round {rnd}")
        idx = order[i * batch:(i + 1) * batch]
        scalars = train_step(pair, loss, data.images[idx], data.labels[idx], hp, augment=augment)
        for key, value in scalars.items():
            history.setdefault(key, []).append(float(value.detach()))
    elapsed = time.perf_counter() - started

    configure(get_settings())
    run_id = str(config["child-runs"][site])
    now = int(time.time() * 1000)
    rows = [Metric(f"step/{k}", v, now, done + i + 1) for k, values in history.items() for i, v in enumerate(values)]
    means = {k: float(np.mean(v)) for k, v in history.items()}
    rows += [Metric(k, v, now, rnd) for k, v in means.items()]
    rows += [Metric("n_images", float(n), now, rnd), Metric("images_per_s", cfg.local_iters * batch / elapsed, now, rnd)]
    MlflowClient().log_batch(run_id, metrics=rows)

    local = [p for p in ("g", "d") if p not in parts]
    if local:
        state["local"] = pack(pair.gen, pair.critic, tuple(local))
    metrics = MetricRecord({"num-examples": n, "site": site, "loss_d": means["loss_d"], "loss_g": means["loss_g"]})
    return pack(pair.gen, pair.critic, parts), metrics, state


def _die(reason: str) -> None:
    """The failure drill: this site's process dies at once (SIGKILL, no cleanup, nothing sent).

    Only inside a Ray actor (a simulated site); called anywhere else (a test running
    :func:`train_site` in its own process) it raises instead of killing that process.
    """
    import ray

    if not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
        raise RuntimeError(f"{reason} (not in a site actor: raised instead of killing this process)")
    print(reason, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def make_client_app(cfg: FederatedConfig):
    """The ClientApp of every simulated site; the site is the node's ``partition-id``."""
    from flwr.app import Message, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.query()
    def _census(msg: Message, context) -> Message:
        return Message(census(cfg, int(context.node_config["partition-id"])), reply_to=msg)

    @app.train()
    def _train(msg: Message, context) -> Message:
        site = int(context.node_config["partition-id"])
        arrays, metrics, _ = train_site(cfg, site, msg.content["arrays"], msg.content["config"], context.state)
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)

    return app
