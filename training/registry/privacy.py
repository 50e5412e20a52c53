"""Privacy facts of a registered generator: its near-copy index and its membership-inference audit.

At registration (:func:`training.registry.generators.register_run`) and on demand
(``synthray eval membership --model URI``, :func:`training.registry.audit.audit_version`):

* the **near-copy index** (:class:`~training.evaluate.nearcopy.NearCopyIndex`) is built over the
  registration reference's features, the very images, features and real→real threshold of the
  memorization audit (so ``near_copy.threshold`` equals ``memorization.real_nn_p1``), and packed
  with the model as ``extra_files/near_copy_index.npz``. The reference is the whole training
  selection by default; a run with ``fid_n`` below its training-set size indexes only those
  ``fid_n`` images (the card says so), which costs no extra Inception pass at registration;
* the **members** of the membership audit are the reference rows the run trained on (its
  ``limit`` and balancing re-applied, :func:`training_selection`);
* the **membership audit** (:mod:`training.evaluate.membership`) attacks the generator with its
  evaluation samples (DCR) and, where the checkpoint has it, its critic (LOGAN).

Version tags (``mia.*``, ``near_copy.*``, ``filter.default``) carry the numbers the promotion gate
and the Serve API read; the model card shows them.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from infra.errors import BadInput

if TYPE_CHECKING:
    from infra.settings import Settings
    from training.evaluate.nearcopy import NearCopyIndex
    from training.evaluate.reference import ReferenceStats

__all__ = ["FILTER_DEFAULT_TAG", "TrainingSelection", "critic_from_state", "load_index", "membership_metrics",
           "privacy_tags", "training_selection"]

FILTER_DEFAULT_TAG = "filter.default"


@dataclass(frozen=True)
class TrainingSelection:
    """The registration reference and which of its rows the run trained on."""

    reference: ReferenceStats  # the registration (FID / memorization) reference, features cached
    rows: np.ndarray  # int64 rows of ``reference`` that are training images (members)


def training_selection(ref: ReferenceStats, selection: dict, settings: Settings | None = None) -> TrainingSelection:
    """Mark the rows of ``ref`` that the run trained on (``selection`` = ``GanTrainConfig.selection()``).

    The registration reference is the first n images (hash order) of the run's split/subset/class
    selection, n = the training-set size unless ``fid_n`` caps it; a ``limit`` or balanced run
    trains on fewer images than the split holds, so some rows may be unused train-split images:
    they are neither members nor held-out patients, and the membership audit leaves them out.
    """
    from training.catalog.selection import catalog, select_records

    trained = {r.sha256 for r in select_records(catalog(settings).manifest(ref.dataset), **selection)}
    rows = np.flatnonzero([sha in trained for sha in ref.image_sha256])
    if len(rows) < 2:
        raise BadInput(f"only {len(rows)} training images of {ref.dataset} are in its reference {ref.key}")
    return TrainingSelection(ref, rows)


def critic_from_state(state: dict):
    """The trained discriminator of a checkpoint state (eval mode, CPU), or None if it has none.

    A paired (image + mask) model's critic reads image + one-hot mask stacks; the audit scores
    images alone, so such a model has no critic attack here (None): its DCR attack still runs.
    """
    from training.gan.config import GanTrainConfig

    cfg = GanTrainConfig(**state["config"])
    if not state.get("critic") or cfg.preset().mask_channels:
        return None
    _, critic = cfg.preset().build(state.get("num_classes"))
    critic.load_state_dict(state["critic"])
    return critic.eval()


def privacy_tags(membership: dict | None, index: NearCopyIndex | None, filter_default: str = "none") -> dict[str, str]:
    """Version tags of the audit and the index (strings, as MLflow stores them)."""
    tags: dict[str, str] = {FILTER_DEFAULT_TAG: filter_default}
    if index is not None:
        tags |= {"near_copy.threshold": f"{index.threshold():.6f}", "near_copy.n_indexed": str(index.n),
                 "near_copy.reference_key": index.reference_key}
    if membership is None:
        return tags
    if "skipped" in membership:
        return tags | {"mia.skipped": membership["skipped"][:500]}
    tags |= {"mia.auc": f"{membership['auc']:.6f}", "mia.auc_ci_low": f"{membership['auc_ci'][0]:.6f}",
             "mia.auc_ci_high": f"{membership['auc_ci'][1]:.6f}", "mia.tpr_at_1pct_fpr": f"{membership['tpr_at_1pct_fpr']:.6f}",
             "mia.attack": membership["worst_attack"], "mia.n_members": str(membership["n_members"]),
             "mia.n_nonmembers": str(membership["n_nonmembers"]), "mia.summary": membership["artifact"]}
    for name, attack in membership["attacks"].items():
        tags[f"mia.{name}.auc"] = f"{attack['auc']:.6f}"
        tags[f"mia.{name}.tpr_at_1pct_fpr"] = f"{attack['tpr_at_1pct_fpr']:.6f}"
    return tags


def membership_metrics(membership: dict) -> dict[str, float]:
    """The audit as MLflow metrics (``mia_<attack>_auc`` …)."""
    out = {}
    for name, a in membership.get("attacks", {}).items():
        out |= {f"mia_{name}_auc": a["auc"], f"mia_{name}_auc_ci_low": a["auc_ci"][0],
                f"mia_{name}_auc_ci_high": a["auc_ci"][1], f"mia_{name}_tpr_at_1pct_fpr": a["tpr_at_1pct_fpr"]}
    return out


def load_index(uri: str, settings: Settings | None = None) -> NearCopyIndex | None:
    """The near-copy index packed with a registered version, or None when it has none."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

    from infra.settings import get_settings
    from infra.tracking import configure
    from training.evaluate.nearcopy import INDEX_FILE, NearCopyIndex

    configure(settings or get_settings())
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = ModelsArtifactRepository(uri).download_artifacts(f"extra_files/{INDEX_FILE}", tmp)
        except (MlflowException, OSError):
            return None
        return NearCopyIndex.from_bytes(Path(path).read_bytes())
