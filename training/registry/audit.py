"""On-demand membership audit of a registered generator: ``synthray eval membership --model URI``.

Separate from :mod:`training.registry.privacy` (which registration uses) because it reads the
registry through :mod:`training.registry.generators`, which imports that module.
"""

from __future__ import annotations

import json

from infra.errors import BadInput
from infra.settings import Settings
from training.registry.privacy import critic_from_state, membership_metrics, training_selection

__all__ = ["AUDIT_EXPERIMENT", "audit_version"]

AUDIT_EXPERIMENT = "membership-audit"


def audit_version(spec: str, *, critic: bool = True, bootstrap: int = 1000, settings: Settings | None = None,
                  progress=print) -> dict:
    """Membership audit of a registered generator (``NAME@alias`` / ``NAME/VERSION``), on demand.

    Rebuilds the registration's evaluation (same reference, seed and samples, from the version's
    tags), reruns the attacks, and logs the result as an MLflow run in the ``membership-audit``
    experiment (metrics ``mia_*``; tags naming the model version). ``critic``: also the LOGAN
    attack when the version's ``checkpoint`` still resolves.
    """
    from infra.settings import get_settings
    from infra.tracking import configure
    from training.evaluate.generator import fakes_like
    from training.evaluate.membership import membership_audit
    from training.evaluate.reference import fake_features, reference_statistics
    from training.registry.generators import load_generator, resolve_version
    from training.registry.refs import version_uri

    settings = settings or get_settings()
    mlflow = configure(settings)
    version = resolve_version(mlflow.MlflowClient(), spec)
    tags = version.tags or {}
    missing = [k for k in ("dataset", "dataset.selection", "fid.n_real", "fid.reference_key", "eval_seed") if k not in tags]
    if missing:
        raise BadInput(f"{version.name} v{version.version} lacks tags {missing}: only generators registered from a "
                       "training run can be audited (their training selection is recorded)", field="model")
    selection = json.loads(tags["dataset.selection"])
    eval_ref = reference_statistics(tags["dataset"], split=selection.get("split"), subset=selection.get("subset"),
                                    labels=selection.get("labels"), n=int(tags["fid.n_real"]), settings=settings)
    if eval_ref.key != tags["fid.reference_key"]:
        raise BadInput(f"the registration reference {tags['fid.reference_key']} no longer matches the catalog "
                       f"({eval_ref.key})", field="model")
    train = training_selection(eval_ref, selection, settings)
    sampler = load_generator(version_uri(version.name, version.version), settings)
    progress(f"membership: {train.rows.size} members of {tags['dataset']}, {eval_ref.n} samples (seed {tags['eval_seed']})")
    fake, _ = fakes_like(sampler, eval_ref, int(tags["eval_seed"]))
    feats = fake_features(fake, eval_ref, settings)
    critic_net = None
    if critic and tags.get("checkpoint"):
        try:
            from training.gan.loop import checkpoint_state

            critic_net = critic_from_state(checkpoint_state(tags["checkpoint"]))
        except Exception as exc:  # noqa: BLE001 - a deleted checkpoint only drops the white-box attack
            progress(f"membership: critic unavailable ({str(exc).splitlines()[0]}); DCR attack only")
    summary = membership_audit(feats, eval_ref, member_rows=train.rows, critic=critic_net, settings=settings,
                               bootstrap=bootstrap, seed=int(tags["eval_seed"]))  # registration's resampling seed
    # The client API, not mlflow.start_run: the fluent run prints "View run …" to stdout on exit,
    # which would corrupt `eval membership --json`.
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(AUDIT_EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(AUDIT_EXPERIMENT)
    run = client.create_run(experiment_id, run_name=f"{version.name}-v{version.version}", tags={
        "model.name": version.name, "model.version": str(version.version), "model.run_id": version.run_id or "",
        "mia.summary": summary["artifact"]})
    for key, value in membership_metrics(summary).items():
        client.log_metric(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id)
    return summary | {"model": version.name, "version": str(version.version)}
