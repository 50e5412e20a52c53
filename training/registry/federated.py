"""Registering the global generator of a federated run (``synthray train federated``).

The version is made like any generator's (:func:`training.registry.generators.log_generator`,
the same tags and card, the ``challenger`` alias), from what the server already holds: its last
round's checkpoint and the FID that round measured against the pooled reference statistics,
merged from the sites' (n, μ, Σ) (:mod:`training.federated.stats`). Registration runs in the
server process and reads no image: the privacy boundary of the run holds for it too.

What differs from :func:`~training.registry.generators.register_run`:

- **lineage**: ``dataset.sites`` lists every site's selection (``{"split": …, "subset":
  "site-i"}``) in place of ``dataset.selection``; the leakage guard of the augmentation
  experiments unions them (:func:`training.experiments.guard.lineage`).
- **FID** is the last round's, against the pooled statistics (stored at
  ``federated/{run}/pooled-statistics.npz``; ``fid.reference_key``), not recomputed.
- **KID, the memorization audit, the near-copy index and the membership audit are not run**:
  each needs the Inception features of individual training images, and those stay at their
  site. The card and the tags (``kid.skipped``, ``memorization.skipped``, ``mia.skipped``)
  say so; the promotion gates need the memorization tag, so ``registry promote`` refuses a
  federated version until a site-side audit exists.
"""

from __future__ import annotations

from infra.errors import BadInput, NotFound
from infra.progress import Progress
from infra.settings import Settings, get_settings
from training.registry.generators import CHALLENGER, RegisteredGenerator

NOT_AT_SERVER = ("needs the Inception features of individual training images, which never leave their site "
                 "(federated training: only weights and each site's (n, μ, Σ) do)")


def register_federated(run_id: str, *, name: str | None = None, alias: str = CHALLENGER,
                       settings: Settings | None = None, progress: Progress = print) -> RegisteredGenerator:
    """Register the global generator of federated run ``run_id`` (its last finished round).

    Raises:
        NotFound: the run has no finished round.
        BadInput: the run did not average G (``--average d``: no global generator) or its last
            round has no FID (``--fid-every 0``).
    """
    import tempfile
    from dataclasses import replace
    from pathlib import Path

    from infra.names import safe_name
    from infra.object_store import ObjectStore
    from infra.tracking import run_url
    from training.catalog.selection import catalog
    from training.federated.config import FederatedConfig
    from training.federated.server import checkpoint_key, latest_checkpoint
    from training.federated.sites import site_name
    from training.gan.trainer import _git_commit, sampler_from_state
    from training.registry.cards import CARD_FILE, GRID_FILE, CardFacts, render_card
    from training.registry.generators import _client, _sample_grid, _version_tags, log_generator, registered_name
    from training.registry.privacy import privacy_tags

    if name is not None:
        safe_name(name, "--name")
    settings = settings or get_settings()
    last = latest_checkpoint(run_id, settings)
    if last is None:
        raise NotFound(f"federated run {run_id} has no finished round to register")
    rnd, state = last
    cfg = FederatedConfig(**state["federated"])
    if state["generator"] is None:
        raise BadInput(f"run {run_id} averaged --average {cfg.average}: its generators stayed at the sites, there "
                       "is no global generator to register", field="average")
    fid = state.get("fid")
    if fid is None:
        raise BadInput(f"run {run_id} has no FID at its last round {rnd} (--fid-every {cfg.fid_every}); registration "
                       "states the global FID against the pooled site statistics", field="fid_every")
    manifest = catalog(settings).manifest(cfg.gan.dataset)
    sampler = sampler_from_state(state, classes=manifest.classes)
    sites = [{"split": cfg.gan.split, "subset": site_name(i)} for i in range(cfg.sites)]
    client = _client(settings)
    run = client.get_run(run_id)
    preset = cfg.gan.preset()
    facts = CardFacts(
        name="", arch=cfg.gan.arch, image_size=preset.image_size, latent_dim=preset.latent_dim,
        conditional=sampler.conditional, classes=list(manifest.findings or manifest.classes), class_name=None,
        dataset=cfg.gan.dataset, manifest_sha256=manifest.ref.version, selection={"split": cfg.gan.split},
        n_train=int(fid["n_real"]), epoch=rnd, run_id=run_id, run_url=run_url(settings, run.info.experiment_id, run_id),
        git_commit=_git_commit(), checkpoint=ObjectStore(settings).uri(checkpoint_key(run_id, rnd)),
        hyperparameters={**cfg.gan.hyperparameters(), "sites": cfg.sites, "fraction": cfg.fraction,
                         "rounds": rnd, "local_iters": cfg.local_iters, "average": cfg.average},
        fid=fid, kid={"skipped": f"KID {NOT_AT_SERVER}"}, memorization={"skipped": f"the audit {NOT_AT_SERVER}"},
        eval_seed=int(state["eval_seed"]), membership={"skipped": f"the attack {NOT_AT_SERVER}"}, sites=sites,
    )
    name = name or registered_name(facts.dataset, facts.arch)
    facts = replace(facts, name=name)
    tags = _version_tags(facts, sampler) | privacy_tags(facts.membership, None) | {
        "federated.sites": str(cfg.sites), "federated.rounds": str(rnd)}
    card = render_card(facts)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / CARD_FILE).write_text(card)
        (Path(tmp) / GRID_FILE).write_bytes(_sample_grid(sampler, facts.eval_seed))
        reg = log_generator(sampler, name, run_id=run_id, alias=alias, tags=tags, description=card,
                            card_dir=Path(tmp), settings=settings)
    progress(f"register: {name} version {reg.version} (alias {alias}) from round {rnd} of federated run {run_id}, "
             f"FID {fid['fid']:.2f} against the pooled statistics of {fid['n_real']} images at {cfg.sites} sites; "
             "KID and the privacy audits need per-image features and were not run")
    return reg
