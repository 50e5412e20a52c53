"""Registering trained generators in the MLflow Model Registry, with evaluation tags and a model card.

A registered version holds a pickled :class:`~training.nets.sampler.GeneratorSampler`:
``mlflow.pytorch.load_model("models:/NAME@champion").generate(n, seed)`` works in any
process that can import ``training`` (Serve replicas, notebooks), with no training state.

Naming rule (one registered model per dataset × class-or-conditional × architecture)::

    gan-{dataset name}[-{class}]-{architecture}      e.g. gan-phantom-knee-KL01-wgan-gp-knee

``{class}`` is the class name for a per-class generator; a conditional (AC-GAN) generator
trained on every class and an unconditional one have none (the architecture tells them apart).
Anything outside ``[A-Za-z0-9_.-]`` becomes ``-``.

Registration (:func:`register_run`) starts from a training run: its best-FID checkpoint is
loaded, scored again with the training protocol (FID, KID with a bootstrap CI, memorization
audit; :mod:`training.evaluate.generator`; for an image + mask generator also mask realism,
:func:`measure_mask_realism`), and a version is created in one call carrying every tag and
the model card as its description, so nothing about a version changes after it exists. The
new version gets the ``challenger`` alias; ``champion`` moves only by promotion
(:mod:`training.registry.promotion`).
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from infra.settings import Settings, get_settings
from infra.tracking import configure, run_url
from training.registry.cards import (
    CARD_FILE,
    GRID_FILE,
    MASK_REALISM_FILE,
    CardFacts,
    cas_section,
    mask_realism_section,
    mask_realism_tags,
    render_card,
)
from infra.names import safe_name
from infra.errors import BadInput
from training.registry import tags as tag
from training.registry.models import (  # noqa: F401 - re-exported: the registry's public names
    CHALLENGER,
    CHAMPION,
    PIP_REQUIREMENTS,
    PREVIOUS_CHAMPION,
    RegistryError,
    ensure_registered_model,
    resolve_version,
)
from training.registry.refs import MODEL_REF_HELP, ModelReference, alias_uri, version_uri  # noqa: F401
from infra.progress import Progress

if TYPE_CHECKING:  # torch stays out of light importers (the Serve ingress parses model names)
    import numpy as np

    from training.nets.sampler import GeneratorSampler

CONTRACT = "generate(n, seed, label=None) -> uint8 (n, H, W); same arguments, same bytes"


def registered_name(dataset: str, arch: str, class_name: str | None = None) -> str:
    """The documented registry name for a generator."""
    parts = ["gan", dataset.split("@")[0]] + ([class_name] if class_name else []) + [arch]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(parts))


def parse_model(model: str) -> tuple[str, str | None, str | None]:
    """``(name, alias, version)`` of a model reference; exactly one of alias/version is set."""
    ref = ModelReference.parse(model)
    return ref.name, ref.alias, ref.version


@dataclass(frozen=True)
class RegisteredGenerator:
    name: str
    version: str
    run_id: str | None
    alias: str
    tags: dict[str, str]

    @property
    def uri(self) -> str:
        return alias_uri(self.name, self.alias)

    @property
    def version_uri(self) -> str:
        return version_uri(self.name, self.version)


def _client(settings: Settings | None):
    return configure(settings or get_settings()).MlflowClient()


def version_by_alias(client, name: str, alias: str):
    """The version behind ``alias``, or None when the alias is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _png(grid: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(grid).save(buffer, format="PNG")
    return buffer.getvalue()


def _sample_grid(sampler: GeneratorSampler, seed: int, n: int = 36) -> bytes:
    """A fixed-seed grid; a conditional generator shows its classes in turn."""
    from training.gan.loop import sample_grid

    z = sampler.latents(n, seed)
    return _png(sample_grid(sampler.generator, z, sampler.labels(n) if sampler.conditional else None,
                            paired=sampler.paired))


def _version_tags(facts: CardFacts, sampler: GeneratorSampler) -> dict[str, str]:
    """Every fact a gate, `registry list` or Serve reads, as string tags set at creation."""
    fid, kid, mem = facts.fid, facts.kid, facts.memorization
    tags = {
        tag.KIND: tag.GENERATOR_KIND, "arch": facts.arch, "contract": CONTRACT,
        "dataset": facts.dataset, "dataset.manifest_sha256": facts.manifest_sha256,
        # lineage: one selection, or (federated) every site's selection, never both (training.experiments.guard)
        **({tag.DATASET_SITES: json.dumps(facts.sites, sort_keys=True)} if facts.sites is not None
           else {"dataset.selection": json.dumps(facts.selection, sort_keys=True)}),
        "image_size": facts.image_size, "latent_dim": facts.latent_dim,
        "conditional": facts.conditional, "classes": json.dumps(facts.classes),
        "class": facts.class_name or "",
        "fid": f"{fid['fid']:.6f}", "fid.n_real": fid["n_real"], "fid.n_fake": fid["n_fake"],
        "fid.weights_sha256": fid["weights_sha256"], "fid.reference_key": fid["reference_key"],
        **({"kid.skipped": kid["skipped"]} if "skipped" in kid else {
            "kid": f"{kid['kid']:.8f}", "kid.ci_low": kid["ci_low"], "kid.ci_high": kid["ci_high"],
            "kid.confidence": kid["confidence"], "kid.n_real": kid["n_real"], "kid.n_fake": kid["n_fake"]}),
        **({"memorization.skipped": mem["skipped"]} if "skipped" in mem else {
            "memorization.fraction_below_real_p1": f"{mem['fraction_below_real_p1']:.6f}",
            "memorization.n_below_real_p1": mem["n_below_real_p1"], "memorization.n_fake": mem["n_fake"],
            "memorization.real_nn_p1": f"{mem['real_nn_p1']:.6f}",
            "memorization.min_distance": f"{mem['min_distance']:.6f}",
            "memorization.summary": mem["artifacts"]["summary.json"]}),
        "epoch": facts.epoch, "run_id": facts.run_id, "git_commit": facts.git_commit,
        "checkpoint": facts.checkpoint, "eval_seed": facts.eval_seed,
        "augment": facts.hyperparameters.get("augment", "none"), "ema": facts.ema,
    }
    if facts.floor:
        tags |= {"fid.floor": f"{facts.floor['fid']:.6f}", "fid.floor_n": facts.floor["n"],
                 "fid.floor_method": facts.floor["method"]}
    if sampler.conditional:
        tags["num_classes"] = sampler.num_classes
    if sampler.paired:  # image + mask pairs: the names of the mask values, background first
        tags["mask_classes"] = json.dumps(sampler.mask_classes)
        tags |= mask_realism_tags(facts.mask_realism or {})
    return {k: str(v) for k, v in tags.items()}


def measure_mask_realism(sampler: GeneratorSampler, spec: str | None, dataset: str, *, n: int, seed: int,
                         field: str = "segmenter", settings: Settings | None = None):
    """Mask realism of a paired generator (:mod:`training.evaluate.mask_realism`), as a card/tag summary.

    Args:
        sampler: the generator; one that emits images only is refused when ``spec`` names a segmenter.
        spec: the segmenter (``NAME@alias`` / ``NAME/VERSION``), ``"none"`` to skip, or None for
            the champion segmenter of ``dataset`` (:func:`~training.registry.segmenters.choose_segmenter`).
        dataset: the generator's dataset (``name@version``).
        n, seed: pairs generated and their seed.
        field: the CLI option / request field named in errors.

    Returns:
        ``(summary, MaskRealism | None)``. The summary is ``{"dice", "dice_ci", "per_class": {class:
        {"dice", "ci_low", "ci_high"}}, "n", "seed", "segmenter", "choice", "segmenter_test_dice"}``,
        or ``{"skipped": why}`` when no segmenter was chosen.

    Raises:
        BadInput / NotFound: a bad ``spec`` (naming ``field``), or a generator without masks.
    """
    from training.evaluate.mask_realism import mask_realism
    from training.registry.segmenters import choose_segmenter, segmenter_name

    if spec == "none":
        return {"skipped": f"not requested ({field} none)"}, None
    if not sampler.paired:
        raise BadInput(f"{field}: mask realism needs an image + mask generator; this one emits images only",
                       field=field)
    chosen = choose_segmenter(spec, dataset, sampler.mask_classes, field=field, settings=settings)
    if chosen is None:
        return {"skipped": f"no {field} given and no champion segmenter of {dataset.split('@')[0]} with these "
                           f"classes is registered (`{segmenter_name(dataset, '')}*@champion`)"}, None
    try:
        result = mask_realism(sampler, chosen.model, n=n, seed=seed)
    except BadInput as exc:
        raise BadInput(f"{field}: {exc.message}" if exc.field == "segmenter" else exc.message,
                       field=field if exc.field == "segmenter" else exc.field) from None
    m = result.metrics
    summary = {
        "dice": m["dice"], "dice_ci": [m["dice/ci_low"], m["dice/ci_high"]],
        "per_class": {c: {"dice": m[f"dice/{c}"], "ci_low": m[f"dice/{c}/ci_low"], "ci_high": m[f"dice/{c}/ci_high"]}
                      for c in sampler.mask_classes[1:]},
        "n": n, "seed": seed, "segmenter": chosen.uri, "choice": chosen.choice,
        "segmenter_test_dice": chosen.test_dice,
    }
    return summary, result


def _signature(sampler: GeneratorSampler):
    from mlflow.models import infer_signature

    z = sampler.latents(2, 0)
    return infer_signature(z.numpy(), sampler(z).detach().numpy())


def _facts(client, run_id: str, checkpoint: str | None, settings: Settings, progress: Progress,
           segmenter: str | None = None, mask_n: int | None = None):
    """Load the run's checkpoint and score it: (sampler, CardFacts, near-copy index, mask overlay PNG or None)."""
    from training.catalog.selection import catalog, select_records
    from training.gan.config import GanTrainConfig
    from training.evaluate.generator import evaluate_generator
    from training.gan.loop import checkpoint_state
    from training.evaluate import reference_statistics
    from training.evaluate.floor import real_floor
    from training.catalog.phantom import PHANTOM_PATIENT_PREFIX
    from training.gan.preflight import reference_request
    from training.gan.trainer import sampler_from_state

    run = client.get_run(run_id)
    tags = run.data.tags
    checkpoint = checkpoint or tags.get(tag.CHECKPOINT)
    if not checkpoint:
        raise RegistryError(f"run {run_id} has no synthray.checkpoint tag (did it finish?); pass --checkpoint")
    state = checkpoint_state(checkpoint)
    cfg = GanTrainConfig(**state["config"])
    manifest = catalog(settings).manifest(cfg.dataset)
    sampler = sampler_from_state(state, classes=manifest.classes)
    records = select_records(manifest, **cfg.selection())
    n_train = len(records)
    seed = cfg.seed + 1  # the training loop's FID seed: the registered FID is the checkpoint's FID
    # before the slow scoring, so a bad --segmenter fails fast
    realism, overlay = _registration_mask_realism(sampler, segmenter, cfg.dataset, mask_n, seed, settings, progress)
    ref = reference_statistics(**reference_request(cfg, n_train), settings=settings)
    progress(f"register: scoring {checkpoint}: {ref.n} samples against {ref.key} (FID, KID, memorization)")
    evaluation = evaluate_generator(sampler, ref, seed=seed, settings=settings)
    floor = real_floor(ref, settings)  # cached by training; computed (and cached) otherwise
    progress("register: near-copy index and membership-inference audit (DCR on the samples, critic score)")
    index, membership = _privacy(cfg, ref, evaluation, state, settings)
    preset = cfg.preset()
    facts = CardFacts(
        name="", arch=cfg.arch, image_size=preset.image_size, latent_dim=preset.latent_dim,
        conditional=sampler.conditional, classes=list(manifest.findings or manifest.classes),
        class_name=sampler.class_name,
        dataset=cfg.dataset, manifest_sha256=manifest.ref.version, selection=cfg.selection(), n_train=n_train,
        epoch=int(state["epoch"]), run_id=run_id,
        run_url=run_url(settings, run.info.experiment_id, run_id),
        git_commit=tags.get("mlflow.source.git.commit", "unknown"), checkpoint=checkpoint,
        hyperparameters=dict(state["hyperparameters"]),
        fid=evaluation.fid, kid=evaluation.kid, memorization=evaluation.memorization, eval_seed=seed,
        phantom=all((r.patient_id or "").startswith(PHANTOM_PATIENT_PREFIX) for r in records),
        floor={"fid": floor.fid, "n": floor.n, "method": floor.method, "key": floor.key},
        ema=bool(state.get("generator_ema")),
        membership=membership, near_copy={"threshold": index.threshold(), "n_indexed": index.n, "filter_default": "none"},
        mask_classes=sampler.mask_classes if sampler.paired else None, mask_realism=realism,
    )
    return sampler, facts, index, overlay


def _registration_mask_realism(sampler: GeneratorSampler, segmenter: str | None, dataset: str, n: int | None,
                               seed: int, settings: Settings, progress: Progress) -> tuple[dict | None, bytes | None]:
    """(card summary or None for an image-only generator, overlay PNG of up to 16 scored pairs or None)."""
    if not sampler.paired and segmenter in (None, "none"):
        return None, None
    if n is None:
        from training.evaluate.mask_realism import DEFAULT_N as n
    realism, scored = measure_mask_realism(sampler, segmenter, dataset, n=n, seed=seed, settings=settings)
    if scored is None:
        progress(f"register: mask realism not measured: {realism['skipped']}")
        return realism, None
    from training.evaluate.segmentation import overlay_grid

    progress(f"register: mask realism: Dice {realism['dice']:.3f} of {n} generated masks against "
             f"{realism['segmenter']} ({realism['choice']})")
    return realism, _png(overlay_grid(scored.images[:16], scored.masks[:16], scored.predictions[:16], per_row=8))


def _privacy(cfg, ref, evaluation, state: dict, settings: Settings):
    """(near-copy index, membership audit summary) of the run's training selection (:mod:`.privacy`).

    A dataset without held-out patients of these classes cannot be audited: the summary then says
    why (``{"skipped": …}``), and the promotion gate fails on it.
    """
    from training.evaluate.membership import membership_audit
    from training.evaluate.nearcopy import NearCopyIndex
    from training.registry.privacy import critic_from_state, training_selection

    try:
        train = training_selection(ref, cfg.selection(), settings)
        membership = membership_audit(evaluation.fake_features, ref, member_rows=train.rows,
                                      critic=critic_from_state(state), settings=settings, seed=evaluation.seed)
    except BadInput as exc:
        membership = {"skipped": exc.message}
    return NearCopyIndex.from_reference(ref), membership


def register_run(
    run_id: str,
    *,
    name: str | None = None,
    checkpoint: str | None = None,
    alias: str = CHALLENGER,
    filter_default: str = "none",
    segmenter: str | None = None,
    mask_n: int | None = None,
    settings: Settings | None = None,
    progress: Progress = print,
) -> RegisteredGenerator:
    """Evaluate and register the generator of a training run (its best-FID checkpoint unless ``checkpoint``).

    Besides FID, KID and the memorization audit, registration builds the near-copy index of the
    training selection (packed with the model) and runs the membership-inference audit
    (:mod:`training.registry.privacy`); their numbers are version tags, MLflow metrics of the run
    and sections of the card.

    Args:
        run_id: the MLflow training run.
        name: registered model name; default :func:`registered_name` of the run.
        checkpoint: checkpoint URI (``s3://…``) instead of the run's selected one.
        alias: alias the new version gets (``challenger``).
        filter_default: the version's default synthesis filter (``none`` or ``near-copy``), used by
            ``/v1/synthesize``, batches and ``synthray generate`` when a request names none.
        segmenter: for an image + mask generator, the segmenter that scores mask realism
            (:func:`measure_mask_realism`): a reference, ``"none"`` to skip, or None for the
            champion segmenter of the generator's dataset when one is registered.
        mask_n: generated pairs that mask realism scores (default
            :data:`training.evaluate.mask_realism.DEFAULT_N`).
        settings: where MLflow and the object store are.
        progress: receives progress lines.

    Raises:
        BadInput / NotFound: a bad ``name``, ``filter_default`` or ``segmenter`` (naming the field).
    """
    from dataclasses import replace

    if name is not None:
        safe_name(name, "--name")  # before any download: a model name is a key in the registry's store
    from training.evaluate.nearcopy import FILTERS, INDEX_FILE
    from training.registry.privacy import membership_metrics, privacy_tags

    if filter_default not in FILTERS:
        raise BadInput(f"filter_default must be one of {FILTERS}, got {filter_default!r}", field="filter_default")
    settings = settings or get_settings()
    client = _client(settings)
    if mask_n is not None and mask_n < 1:
        raise BadInput(f"mask_n must be at least 1, got {mask_n}", field="mask_n")
    sampler, facts, index, overlay = _facts(client, run_id, checkpoint, settings, progress, segmenter, mask_n)
    name = name or registered_name(facts.dataset, facts.arch, facts.class_name)
    facts = replace(facts, name=name, near_copy=facts.near_copy | {"filter_default": filter_default})
    card = render_card(facts)
    tags = _version_tags(facts, sampler) | privacy_tags(facts.membership, index, filter_default)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / CARD_FILE).write_text(card)
        (Path(tmp) / GRID_FILE).write_bytes(_sample_grid(sampler, facts.eval_seed))
        (Path(tmp) / INDEX_FILE).write_bytes(index.to_bytes())
        if overlay is not None:
            (Path(tmp) / MASK_REALISM_FILE).write_bytes(overlay)
        reg = log_generator(sampler, name, run_id=run_id, alias=alias, tags=tags,
                            description=card, card_dir=Path(tmp), settings=settings)
    for key, value in membership_metrics(facts.membership or {}).items():
        client.log_metric(run_id, key, value)
    for key, value in mask_realism_metrics(facts.mask_realism or {}).items():
        client.log_metric(run_id, key, value)
    from training.evaluate.floor import RealFloor, with_floor

    floor = RealFloor(**facts.floor, n_available=0, reference_key="") if facts.floor else None
    progress(f"register: {name} version {reg.version} (alias {alias}), {with_floor(facts.fid['fid'], floor)}, "
             f"KID {facts.kid['kid']:.4f}, memorized {facts.memorization['n_below_real_p1']}/{facts.memorization['n_fake']}, "
             + (f"membership AUC {facts.membership['auc']:.3f} ({facts.membership['worst_attack']})"
                if "auc" in (facts.membership or {}) else f"membership audit skipped: {facts.membership['skipped']}"))
    return reg


def mask_realism_metrics(summary: dict) -> dict[str, float]:
    """MLflow metrics of a mask realism summary: ``mask_dice`` and ``mask_dice_{class}`` (none when skipped)."""
    if "dice" not in summary:
        return {}
    return {"mask_dice": summary["dice"], **{f"mask_dice_{c}": row["dice"] for c, row in summary["per_class"].items()}}


def log_generator(
    sampler: GeneratorSampler,
    name: str,
    *,
    run_id: str | None = None,
    alias: str = CHALLENGER,
    tags: dict[str, str] | None = None,
    description: str = "",
    card_dir: Path | None = None,
    settings: Settings | None = None,
) -> RegisteredGenerator:
    """Log ``sampler`` as an MLflow model and create a version with ``tags`` and ``description``.

    The low-level step of :func:`register_run` (which supplies the evaluation tags and card);
    used alone only where no training run exists (fixtures of the Serve tests).

    Args:
        sampler: the generator.
        name: registered model name.
        run_id: run to log the model in (a new run if None).
        alias: alias pointed at the new version.
        tags: version tags, set at creation.
        description: version description (the model card).
        card_dir: files packed with the model (``extra_files/``) and logged beside the run.
        settings: where MLflow lives.
    """
    mlflow = configure(settings or get_settings())
    client = mlflow.MlflowClient()
    extra = sorted(str(p) for p in card_dir.iterdir()) if card_dir else None
    with mlflow.start_run(run_id=run_id) as run:
        info = mlflow.pytorch.log_model(
            sampler.cpu().eval(), name="generator", pip_requirements=PIP_REQUIREMENTS,
            serialization_format="pickle", signature=_signature(sampler),
            metadata={"contract": CONTRACT, "latent_dim": sampler.latent_dim}, extra_files=extra,
        )
        if card_dir:
            mlflow.log_artifacts(str(card_dir), f"model_card/{info.model_id}")  # beside the run, images rendered
    ensure_registered_model(client, name, tag.GENERATOR_KIND,
                            "GAN generator registered by synthray (see each version's card).")
    version = client.create_model_version(name, source=info.model_uri, run_id=run.info.run_id, tags=tags or {},
                                          description=description, model_id=info.model_id)
    client.set_registered_model_alias(name, alias, version.version)
    return RegisteredGenerator(name=name, version=str(version.version), run_id=run.info.run_id, alias=alias,
                               tags=dict(tags or {}))


def model_card(spec: str, settings: Settings | None = None) -> str:
    """The card of ``NAME@alias`` / ``NAME/VERSION``, read from the version's own artifacts."""
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

    client = _client(settings)
    version = resolve_version(client, spec)
    repo = ModelsArtifactRepository(version_uri(version.name, version.version))
    with tempfile.TemporaryDirectory() as tmp:
        card = Path(repo.download_artifacts(f"extra_files/{CARD_FILE}", tmp)).read_text()
    from training.studies.card import study_section

    tags = version.tags or {}
    realism = None if "## Mask realism" in card else mask_realism_section(tags)  # versions logged without it
    for extra in (realism, cas_section(tags), study_section(tags)):
        if extra is not None:
            card = f"{card.rstrip()}\n\n{extra}"
    return card


def version_mask_realism(model: str, segmenter: str | None = None, *, n: int | None = None, seed: int | None = None,
                         fields: tuple[str, str] = ("model", "segmenter"), settings: Settings | None = None) -> dict:
    """Mask realism of a registered image + mask generator, measured again (``synthray eval mask-realism``).

    Args:
        model: the generator, ``NAME@alias`` / ``NAME/VERSION`` (a bare NAME means ``@champion``).
        segmenter: as :func:`measure_mask_realism`'s ``spec`` (None: the dataset's champion segmenter).
        n, seed: default to what the version's card used (``mask_realism.n`` / its evaluation
            seed), so the defaults reproduce the card's numbers.
        fields: the names of the model and segmenter fields in errors (e.g. ``--model``).

    Returns:
        :func:`measure_mask_realism`'s summary plus ``model`` and ``version``.

    Raises:
        BadInput / NotFound: a bad reference (naming its field), or a generator without masks.
    """
    from infra.errors import SynthrayError
    from training.evaluate.mask_realism import DEFAULT_N

    client = _client(settings)
    try:
        version = resolve_version(client, model)
    except SynthrayError as exc:
        raise type(exc)(f"{fields[0]}: {exc.message}", field=fields[0]) from None
    t = version.tags or {}
    if t.get(tag.KIND, tag.GENERATOR_KIND) != tag.GENERATOR_KIND:
        raise BadInput(f"{fields[0]}: {model!r} is a {t[tag.KIND]}, not a generator", field=fields[0])
    if n is None:
        n = int(t.get("mask_realism.n") or DEFAULT_N)
    if seed is None:
        seed = int(t.get("eval_seed") or 0)
    sampler = load_generator(version_uri(version.name, version.version), settings)
    if not sampler.paired:
        raise BadInput(f"{fields[0]}: {model!r} emits images only; mask realism needs an image + mask generator",
                       field=fields[0])
    summary, _ = measure_mask_realism(sampler, segmenter, t.get("dataset", ""), n=n, seed=seed, field=fields[1],
                                      settings=settings)
    return {"model": version.name, "version": str(version.version), **summary}


def load_generator(uri: str, settings: Settings | None = None) -> GeneratorSampler:
    """Load a registered generator (``models:/NAME@alias`` or ``models:/NAME/3``) on CPU."""
    mlflow = configure(settings or get_settings())
    return mlflow.pytorch.load_model(uri, map_location="cpu").eval()
