"""Every MLflow tag key synthray writes or reads, and the values of ``synthray.kind``.

One module, so a key is spelled once: runs, registered models and model versions are
found and joined by these keys (the Serve app refuses a version whose kind is wrong, the
registry finds a run's checkpoint, experiments find a generator's dataset lineage).
Torch- and MLflow-free: the Serve ingress imports it.
"""

from __future__ import annotations

# -- what a run / registered model / version is ---------------------------------------------------
KIND = "synthray.kind"
GENERATOR_KIND = "gan-generator"  # registered models and versions of generators
CLASSIFIER_KIND = "classifier"  # registered classifiers, and the parent run of `train classifier`
GAN_TRAINING_KIND = "gan-training"
GAN_SWEEP_KIND = "gan-sweep"
CLASSIFIER_TRAINING_KIND = "classifier-training"
AUGMENTATION_EXPERIMENT_KIND = "augmentation-experiment"
SEGMENTER_KIND = "segmenter"  # registered segmenters, and the parent run of `train segmenter`
SEGMENTER_TRAINING_KIND = "segmenter-training"
SEGMENTATION_EXPERIMENT_KIND = "segmentation-experiment"
FEDERATED_EXPERIMENT_KIND = "federated-experiment"  # parent run of `experiment federated`

# -- data lineage -----------------------------------------------------------------------------------
DATASET = "synthray.dataset"
DATASET_MANIFEST_SHA256 = "synthray.dataset.manifest_sha256"
DATASET_MANIFEST_KEY = "synthray.dataset.manifest_key"
FID_REFERENCE_KEY = "synthray.fid.reference_key"
# version tag of a federated generator: JSON list of every site's selection (select_records kwargs);
# it replaces "dataset.selection", and the leakage guard unions the sites (training/experiments/guard.py)
DATASET_SITES = "dataset.sites"

# -- checkpoints --------------------------------------------------------------------------------------
CHECKPOINT = "synthray.checkpoint"  # the selected (best) checkpoint a version is registered from
CHECKPOINT_LATEST = "synthray.checkpoint.latest"
CHECKPOINT_EPOCH = "synthray.checkpoint.epoch"

# -- sweeps ---------------------------------------------------------------------------------------------
SWEEP_TRIAL_ID = "synthray.sweep.trial_id"  # joins a child run to its Tune trial
SWEEP_STOPPED_AT_EPOCH = "synthray.sweep.stopped_at_epoch"
SWEEP_BEST_TRIAL = "synthray.sweep.best_trial"
SWEEP_BEST_RUN_ID = "synthray.sweep.best_run_id"

# -- experiments ----------------------------------------------------------------------------------------
EXPERIMENT_NAME = "synthray.experiment.name"
EXPERIMENT_CELL = "synthray.experiment.cell"
EXPERIMENT_SEED = "synthray.experiment.seed"
EXPERIMENT_BEST_RUN = "synthray.experiment.best_run"
EXPERIMENT_BEST_CELL = "synthray.experiment.best_cell"

# -- classifier weights ---------------------------------------------------------------------------------
PRETRAINED = "synthray.pretrained"
PRETRAINED_SHA256 = "synthray.pretrained.sha256"
PRETRAINED_LOADED = "synthray.pretrained.loaded"
PRETRAINED_SKIPPED = "synthray.pretrained.skipped"
PRETRAINED_NOTES = "synthray.pretrained.notes"

# -- reader studies (training/studies) ------------------------------------------------------------------
READER_STUDY_KIND = "reader-study"  # the MLflow run of a closed reader study
STUDY_ID = "synthray.study.id"
STUDY_MODEL_NAME = "synthray.study.model_name"  # the generator version the study judged
STUDY_MODEL_VERSION = "synthray.study.model_version"
STUDY_MODEL_RUN_ID = "synthray.study.model_run_id"
STUDY_VERSION_PREFIX = "study."  # generator version tags: the latest closed study (the card's "Reader study")
