"""Driver-side checks of every input of a GAN run, before any run, worker or trial starts.

A worker that fails on an input fails the same way on every retry: Ray Train restarts the
worker group (``FailureConfig.max_failures``) and the user gets a ``WorkerGroupError``
traceback half a minute later. So everything a run reads is checked here first, on the
driver, and a problem is one :class:`~infra.errors.SynthrayError` naming the input (the CLI
prints one ``Error:`` line):

- the dataset reference (it exists; the version is pinned), the selection (split, subset,
  class), the *stored* image size against the architecture, the batch against the selection
  (per worker) — :func:`_check_selection` (below);
- the FID reference selection (at least 2 images; ``fid_n`` no larger than the selection);
- the warm-start checkpoint (``--init-from``): the object exists, loads, and its generator
  (and critic, with ``--transfer-critic``) fits the architecture — :func:`check_checkpoint`.

:func:`check_plan` does this for every run of a multi-run plan (spine methods I-IV, a sweep's
base and largest batch) before the first one starts. A step warm-started from an *earlier*
step of the same plan is checked against that step's name, since its checkpoint does not
exist yet.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

from infra.errors import BadInput, NotFound, SynthrayError, Unavailable
from infra.settings import Settings, get_settings
from training.gan.config import GanTrainConfig

__all__ = ["Checked", "check_checkpoint", "check_plan", "check_run"]


@dataclass(frozen=True)
class Checked:
    """What the checks found: the pinned manifest and the run's training records."""

    manifest: object  # training.catalog.store.Manifest
    records: list
    mask_classes: list[str] | None = None  # with cfg.masks: the manifest's, which the run must set


def check_run(cfg: GanTrainConfig, settings: Settings | None = None, *, init_from_later_step: bool = False) -> Checked:
    """Check every input of one run; raise one SynthrayError naming the first bad input.

    Args:
        cfg: the run (its dataset may be a bare name; it is resolved here).
        settings: where the catalog and the object store are.
        init_from_later_step: ``cfg.init_from`` names a checkpoint an earlier step of the same
            plan will write; it is not looked up.
    """

    settings = settings or get_settings()
    from training.gan.growth import check_progressive

    check_progressive(cfg)  # progressive options only on progressive presets
    if cfg.masks and cfg.channels:
        raise BadInput("--channels and --masks both set the generator's channels; --masks makes 1 + K "
                       "(K mask classes), drop --channels", field="--channels")
    manifest, records = _check_selection(cfg, settings)  # dataset, split/subset/class, stored size, batch
    _check_reference(cfg, manifest, records)
    mask_classes = _check_masks(cfg, manifest, records)
    if mask_classes:
        cfg = cfg.model_copy(update={"mask_classes": mask_classes})
    if cfg.init_from and not init_from_later_step:
        num_classes = len(manifest.findings or manifest.classes) if cfg.preset().conditional else 1
        check_checkpoint(cfg.init_from, cfg, num_classes, settings)
    return Checked(manifest, records, mask_classes)


def _check_masks(cfg: GanTrainConfig, manifest, records: list) -> list[str] | None:
    """``--masks``: the dataset names its mask classes and every selected record has a mask."""
    if not cfg.masks:
        return None
    if not manifest.mask_classes:
        raise BadInput(f"--masks: dataset {manifest.ref} has no masks (ingest with masks, e.g. "
                       "`synthray catalog phantom --masks`)", field="--masks")
    missing = sum(r.mask_sha256 is None for r in records)
    if missing:
        raise BadInput(f"--masks: {missing} of the {len(records)} selected images of {manifest.ref} have no mask "
                       "(ingest with --require-mask, or select a subset with masks)", field="--masks")
    if cfg.mask_classes and list(cfg.mask_classes) != list(manifest.mask_classes):
        raise BadInput(f"--masks: mask classes {cfg.mask_classes} differ from the dataset's {manifest.mask_classes}",
                       field="mask_classes")
    return list(manifest.mask_classes)


def check_plan(configs: Sequence[tuple[str, GanTrainConfig, bool]], settings: Settings | None = None) -> None:
    """Check every run of a plan before any starts: (step name, config, warm-started by an earlier step)."""
    for name, cfg, later in configs:
        try:
            check_run(cfg, settings, init_from_later_step=later)
        except SynthrayError as err:
            raise type(err)(f"plan step {name!r}: {err.message}", field=err.field) from None


def _check_reference(cfg: GanTrainConfig, manifest, records: list) -> None:
    """The FID reference is the first n images of the selection (:func:`trainer.reference_request`)."""
    if not cfg.fid_every:
        return
    from training.evaluate.reference import selected_records

    request = reference_request(cfg, len(records))
    if request["n"] < 2:
        raise BadInput(f"FID reference of dataset {manifest.ref}: the selection has {request['n']} image(s), "
                       "a covariance needs at least 2; add images or use --fid-every 0", field="--fid-every")
    selected_records(manifest, request["split"], request["subset"], request["labels"], request["n"])


def check_checkpoint(uri: str, cfg: GanTrainConfig, num_classes: int, settings: Settings | None = None) -> None:
    """``--init-from``: the checkpoint exists, loads, and fits ``cfg``'s architecture.

    Reads only ``gan.pt`` (one GET, no Ray). Raises NotFound (no such object), BadInput (not
    a checkpoint, or one of another architecture), Unavailable (the object store is down).
    """
    import torch

    from training.gan.loop import CHECKPOINT_FILE

    field = "--init-from"
    data = _read_checkpoint(uri, CHECKPOINT_FILE, settings or get_settings())
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise BadInput(f"{field} {uri}: {CHECKPOINT_FILE} is not a readable checkpoint ({type(exc).__name__})",
                       field=field) from None
    wanted = ["generator"] + (["critic"] if cfg.transfer_critic else [])
    if not isinstance(state, dict) or (missing := [k for k in wanted if k not in state]):
        raise BadInput(f"{field} {uri}: the checkpoint has no {missing if isinstance(state, dict) else wanted} "
                       "weights", field=field)
    gen, critic = cfg.preset().build(num_classes)  # as the worker loop builds them
    for key, module in (("generator", gen), ("critic", critic)):
        if key not in wanted:
            continue
        try:
            module.load_state_dict(state[key])
        except (RuntimeError, KeyError, TypeError) as exc:
            first = str(exc).strip().splitlines()
            raise BadInput(f"{field} {uri}: its {key} does not fit --arch {cfg.arch}"
                           f"{' (trained as ' + str(state.get('config', {}).get('arch')) + ')' if isinstance(state.get('config'), dict) else ''}: "
                           f"{first[1].strip() if len(first) > 1 else first[0] if first else exc}", field=field) from None


def _read_checkpoint(uri: str, filename: str, settings: Settings) -> bytes:
    from pathlib import Path

    field = "--init-from"
    if uri.startswith("s3://"):
        from infra.object_store import ObjectStore

        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not bucket or not prefix.strip("/"):
            raise BadInput(f"{field} {uri}: use s3://BUCKET/PATH/checkpoint_NNNNNN", field=field)
        store = ObjectStore(settings.model_copy(update={"bucket": bucket}))
        key = f"{prefix.rstrip('/')}/{filename}"
        try:
            return store.get_bytes(key)
        except NotFound:
            raise NotFound(f"{field} {uri}: no checkpoint there (no object s3://{bucket}/{key})", field=field) from None
        except Unavailable:
            raise
        except SynthrayError as err:  # e.g. a bucket we may not read
            raise BadInput(f"{field} {uri}: {err.message}", field=field) from None
    if "://" in uri:
        raise BadInput(f"{field} {uri}: only s3:// URIs and local checkpoint directories are supported", field=field)
    path = Path(uri).expanduser() / filename
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"{field} {uri}: no checkpoint there (no {path})", field=field) from None
    except OSError as exc:
        raise BadInput(f"{field} {uri}: cannot read {path} ({exc.strerror or exc})", field=field) from None


def _check_selection(cfg: GanTrainConfig, settings: Settings):
    """The selection's records, after checking class, size and batch against the architecture."""
    from collections import Counter

    from training.catalog.selection import catalog, select_records

    preset = cfg.preset()
    manifest = catalog(settings).manifest(cfg.dataset)
    records = select_records(manifest, **cfg.selection())
    sizes = Counter(manifest.stored_size(r) for r in records)  # what is stored, not the source
    if set(sizes) != {(preset.image_size, preset.image_size)}:
        found = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sizes.most_common())
        raise BadInput(
            f"dataset {manifest.ref} has {found} images but {cfg.arch} makes "
            f"{preset.image_size}x{preset.image_size}; ingest with --resize {preset.image_size} or pick another --arch"
        )
    batch = cfg.hyperparameters()["batch_size"]
    if len(records) // cfg.workers < max(1, batch // cfg.workers):
        raise BadInput(f"dataset {manifest.ref} selection has {len(records)} images, fewer than one batch of "
                         f"{batch // cfg.workers} per worker on {cfg.workers} workers; lower --batch-size")
    return manifest, records


def reference_request(cfg: GanTrainConfig, n_train: int) -> dict:
    """Keyword arguments of ``reference_statistics`` for a run's FID reference.

    The reference is the first n images, in image-hash order, of the training selection (split/subset/class), with
    n = the number of training images unless ``fid_n`` caps it; a balanced (Method II) run
    still compares against its unbalanced selection, the distribution it should cover.
    """
    selection = cfg.selection()
    return {"dataset": cfg.dataset, "split": selection["split"], "subset": selection["subset"],
            "labels": selection["labels"], "n": min(cfg.fid_n or n_train, n_train)}
