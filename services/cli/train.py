"""``synthray train …``: GAN training on Ray Train, and the spine paper's four generation methods."""

from __future__ import annotations

import click

from infra.progress import say

from infra.seeds import TRAIN_MAX_SEED

from training.nets.presets import PRESETS
from infra.errors import BadInput

ARCHS = click.Choice(sorted(PRESETS))


@click.group("train")
def train() -> None:
    """Distributed training on Ray Train, tracked in MLflow."""


def _common(fn):
    """Options shared by `train gan` and `train methods`."""
    options = [
        click.option("--dataset", required=True, help="catalog dataset, name@version or name (latest)"),
        click.option("--arch", type=ARCHS, default="wgan-gp-knee-small", show_default=True, help="GAN preset"),
        click.option("--epochs", type=click.IntRange(1, 100_000), default=5, show_default=True),
        click.option("--workers", type=click.IntRange(1, 1024), default=2, show_default=True,
                     help="Ray Train workers (one CPU, or one GPU with --gpu, each)"),
        click.option("--gpu/--cpu", "use_gpu", default=False, show_default=True, help="NCCL + bf16 + channels_last"),
        click.option("--split", default="train", show_default=True, help="catalog split to train on"),
        click.option("--subset", default=None, help="catalog subset, e.g. gan-train"),
        click.option("--limit", type=click.IntRange(1), default=None, help="use the first N selected images"),
        click.option("--batch-size", type=click.IntRange(1), default=None, help="global batch (preset default)"),
        click.option("--fid-every", type=click.IntRange(0), default=5, show_default=True,
                     help="FID every k epochs and at the last; 0 disables"),
        click.option("--fid-n", type=click.IntRange(2), default=None, help="cap n_real = n_fake (default: all)"),
        click.option("--seed", type=click.IntRange(0, TRAIN_MAX_SEED), default=0, show_default=True),
        click.option("--register/--no-register", default=True, show_default=True,
                     help="evaluate and register each generator as the challenger"),
        click.option("--steps-per-epoch", type=click.IntRange(1), default=None,
                     help="generator steps per epoch (default: one pass over the data)"),
        click.option("--checkpoint-every", type=click.IntRange(1), default=100, show_default=True,
                     help="checkpoint and sample grid every N epochs (FID epochs and the last always); a failure "
                     "loses at most one interval"),
        click.option("--checkpoint-minutes", type=click.FloatRange(min=0, min_open=True), default=2.0,
                     show_default=True, help="... or after this many minutes, whichever comes first"),
        click.option("--kimg", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="train for this many thousand images shown (StyleGAN's --kimg) instead of --epochs: "
                     "epochs become ticks of --tick-kimg, and --fid-every/--checkpoint-every count ticks"),
        click.option("--tick-kimg", type=click.FloatRange(min=0, min_open=True), default=4.0, show_default=True,
                     help="with --kimg: thousands of images per epoch (tick)"),
        click.option("--fid-quick-n", type=click.IntRange(2), default=None,
                     help="also a quick FID at this n on every epoch (metric fid_quick)"),
        click.option("--augment", type=click.Choice(["none", "diffaugment", "ada"]), default=None,
                     help="augmentation before D (default: the preset's; paper presets: none)"),
        click.option("--ada-target", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.6,
                     show_default=True, help="ADA's target r_t = E[sign(D(real))]"),
        click.option("--ada-kimg", type=click.FloatRange(min=0, min_open=True), default=100.0, show_default=True,
                     help="ADA: thousands of images for p to go from 0 to 1"),
        click.option("--ema-kimg", type=click.FloatRange(min=0), default=None,
                     help="EMA generator half-life in thousands of images (default: the preset's, 10; 0 = off)"),
        click.option("--ema-bn-batches", type=click.IntRange(0), default=8, show_default=True,
                     help="batches of 64 over which the EMA generator's BatchNorm statistics are recomputed "
                     "each epoch (0 = keep those copied from G)"),
        click.option("--augment-policy", type=click.Choice(["translation", "cutout", "brightness", "contrast"]),
                     multiple=True, default=None, help="augmentation ops, repeatable, in order (default: the preset's)"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _config(**kwargs):
    from training.gan.config import GanTrainConfig

    kwargs["augment_policy"] = list(kwargs.get("augment_policy") or ()) or None  # click gives () when unset
    if kwargs.get("kimg") is not None:
        ctx = click.get_current_context(silent=True)
        given = [f"--{name.replace('_', '-')}" for name in ("epochs", "steps_per_epoch") if ctx is not None
                 and ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise BadInput(f"--kimg sets the run's length in images shown; drop {' and '.join(given)}")
    return GanTrainConfig(**kwargs)


def _register(run_id: str, checkpoint: str | None = None) -> None:
    from training.registry.generators import register_run

    _announce(register_run(run_id, checkpoint=checkpoint, progress=say))


def _announce(reg) -> None:
    click.echo(f"model: {reg.version_uri} (alias {reg.alias}); promote with "
               f"`synthray registry promote {reg.name} --version {reg.version}`")


@train.command("gan")
@_common
@click.option("--class", "class_label", type=click.IntRange(0), default=None, help="train on one class (per-class mode)")
@click.option("--balance", type=click.Choice(["none", "first", "random"]), default="none", show_default=True,
              help="undersample every class to the smallest")
@click.option("--init-from", default=None, help="warm start from a checkpoint URI (s3://…)")
@click.option("--transfer-critic/--fresh-critic", default=False, show_default=True)
@click.option("--g-norm", type=click.Choice(["pn", "sn"]), default=None,
              help="progressive presets: pixel norm or spectral norm in G (Enhanced-GAN ablation)")
@click.option("--d-norm", type=click.Choice(["sn", "pn", "none"]), default=None,
              help="progressive presets: spectral, pixel or no norm in D (Enhanced-GAN ablation)")
@click.option("--stage-images", type=click.IntRange(1), default=None,
              help="progressive presets: images per stage at alpha = 1 (preset's; chest paper 600k)")
@click.option("--fade-images", type=click.IntRange(1), default=None,
              help="progressive presets: images per fade-in (preset's; chest paper 600k)")
@click.option("--growth-batch", type=(click.IntRange(1), click.IntRange(1)), multiple=True,
              metavar="RES BATCH", help="progressive presets: global batch at a resolution (repeatable)")
@click.option("--epoch-images", type=click.IntRange(1), default=None,
              help="progressive presets: images per epoch (checkpoint, grid, FID); default one pass")
@click.option("--channels", type=click.IntRange(1, 4), default=None,
              help="progressive presets: image channels (knee MRI: 2 with the cartilage mask)")
@click.option("--masks/--no-masks", default=False, show_default=True,
              help="image + mask generator: train on (image, one-hot mask) stacks of a dataset with masks; "
                   "G emits 1 + K channels (K mask classes), samples come with argmax label maps")
def train_gan_cmd(register: bool, growth_batch: tuple, **kwargs) -> None:
    """Train a GAN preset on DATASET and (optionally) register the generator.

    Progressive presets (pggan-*, enhanced-gan-*, cpggan-*) run the growth schedule: its images
    per stage and fade-in set the run's length, not --epochs.
    """
    from training.gan.trainer import train_gan

    result = train_gan(_config(**kwargs, growth_batch=dict(growth_batch) or None), progress=say)
    click.echo(f"run: {result.run_url}\ncheckpoint: {result.checkpoint_path} (epoch {result.metrics.get('epoch')})")
    if register:
        _register(result.run_id, result.checkpoint_path)


@train.command("federated")
@click.option("--dataset", required=True, help="catalog dataset with site subsets (`catalog split REF --sites K`)")
@click.option("--arch", type=ARCHS, default="wgan-gp-knee-small", show_default=True, help="GAN preset (fixed-size)")
@click.option("--sites", type=click.IntRange(1), required=True, help="K: the number of sites of the dataset")
@click.option("--fraction", type=click.FloatRange(0, 1, min_open=True), default=0.1, show_default=True,
              help="C: fraction of sites sampled per round (chest paper 0.1)")
@click.option("--rounds", type=click.IntRange(1), required=True, help="communication rounds in all")
@click.option("--local-iters", type=click.IntRange(1), default=10, show_default=True,
              help="E: generator updates per site per round (chest paper 10)")
@click.option("--average", type=click.Choice(["g", "d", "g+d"]), default="g+d", show_default=True,
              help="networks FedAvg averages (chest paper: both)")
@click.option("--min-fit-clients", type=click.IntRange(1), default=1, show_default=True,
              help="a round counts when at least this many sampled sites return")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="per-site batch (preset's; paper 32)")
@click.option("--fid-every", type=click.IntRange(0), default=1, show_default=True,
              help="global FID against the pooled site statistics every k rounds; 0 disables")
@click.option("--fid-dims", type=click.Choice(["64", "192", "768", "2048"]), default="2048", show_default=True)
@click.option("--augment", type=click.Choice(["none", "diffaugment"]), default=None, help="augmentation before D")
@click.option("--split", default="train", show_default=True, help="catalog split within each site")
@click.option("--seed", type=click.IntRange(0, TRAIN_MAX_SEED), default=0, show_default=True)
@click.option("--client-cpus", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True,
              help="Ray CPUs per simulated site")
@click.option("--resume", default=None, metavar="RUN_ID", help="continue a run after its last finished round")
@click.option("--register/--no-register", default=True, show_default=True,
              help="register the global generator as the challenger (lineage: every site's selection)")
@click.option("--drill-fail", default=None, hidden=True,
              help="SITE@ROUND (SITE an index or 'any'): that site's process is killed mid-round (drill)")
def train_federated_cmd(dataset, arch, sites, fraction, rounds, local_iters, average, min_fit_clients, batch_size,
                        fid_every, fid_dims, augment, split, seed, client_cpus, resume, register, drill_fail) -> None:
    """Federated GAN training (FedAvg with Flower): each site trains on its own images, only weights move."""
    from infra.errors import BadInput
    from training.federated.config import FederatedConfig
    from training.federated.server import train_federated
    from training.gan.config import GanTrainConfig

    if register and fid_every == 0:  # before any work: the version states the global FID
        raise BadInput("--register states the global FID against the pooled site statistics: use --fid-every >= 1 "
                       "or --no-register", field="fid_every")
    if register and average == "d":
        raise BadInput("--average d keeps every generator at its site: there is no global generator to register; "
                       "use --no-register", field="average")

    gan = GanTrainConfig(dataset=dataset, arch=arch, batch_size=batch_size, augment=augment, split=split, seed=seed,
                         fid_every=0)
    cfg = FederatedConfig(gan=gan, sites=sites, fraction=fraction, rounds=rounds, local_iters=local_iters,
                          average=average, min_fit_clients=min_fit_clients, fid_every=fid_every,
                          fid_dims=int(fid_dims), client_cpus=client_cpus, drill_fail=drill_fail)
    result = train_federated(cfg, resume=resume, progress=say)
    fid = f", FID {result.fid[max(result.fid)]:.2f} at round {max(result.fid)}" if result.fid else ""
    click.echo(f"run: {result.run_id} ({len(result.site_run_ids)} site runs), {result.rounds} rounds{fid}\n"
               f"checkpoint: {result.checkpoint_key}")
    if register:
        from training.registry.federated import register_federated

        _announce(register_federated(result.run_id, progress=say))


@train.command("methods")
@_common
@click.option("--method", type=click.Choice(["I", "II", "III", "IV"]), required=True,
              help="spine paper: I all classes, II balanced, III one model per class, IV pretrain + fine-tune")
@click.option("--balance", type=click.Choice(["first", "random"]), default="first", show_default=True,
              help="Method II undersampling")
@click.option("--finetune-epochs", type=click.IntRange(1), default=None, help="Method IV fine-tune epochs")
@click.option("--transfer-critic/--fresh-critic", default=False, show_default=True,
              help="Method IV: also start each minority discriminator from the pretrained one")
def train_methods_cmd(register: bool, method: str, balance: str, finetune_epochs, transfer_critic, **kwargs) -> None:
    """Run one of the spine paper's generation methods (I–IV) as a sequence of training runs."""
    from training.catalog.selection import catalog
    from training.gan.methods import plan_method, run_plan

    def go():
        base = _config(**kwargs)
        manifest = catalog().manifest(base.dataset)
        plan = plan_method(manifest, method, base, balance=balance, finetune_epochs=finetune_epochs,
                           transfer_critic=transfer_critic)
        for step in plan:
            click.echo(f"plan: {step.describe()}")
        return run_plan(plan, progress=say)

    results = go()
    for name, result in results.items():
        click.echo(f"{name}: run {result.run_url} checkpoint {result.checkpoint_path}")
        if register:
            _register(result.run_id, result.checkpoint_path)


@click.group("sweep")
def sweep() -> None:
    """Hyperparameter sweeps on Ray Tune (each trial a Ray Train run), tracked in MLflow."""


@sweep.command("gan")
@click.option("--dataset", required=True, help="catalog dataset, name@version or name (latest)")
@click.option("--arch", type=ARCHS, default="wgan-gp-knee-small", show_default=True, help="GAN preset")
@click.option("--trials", type=click.IntRange(1, 10_000), default=8, show_default=True)
@click.option("--workers-per-trial", type=click.IntRange(1, 1024), default=1, show_default=True)
@click.option("--epochs", type=click.IntRange(1, 100_000), default=5, show_default=True, help="epochs per trial (max)")
@click.option("--gpu/--cpu", "use_gpu", default=False, show_default=True)
@click.option("--scheduler", type=click.Choice(["asha", "pbt"]), default="asha", show_default=True)
@click.option("--space-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="search space YAML (default: training/gan/sweep_space.yaml)")
@click.option("--space", "space_flags", multiple=True, metavar="KEY=KIND:V1,V2",
              help="override one key, e.g. lr_g=loguniform:1e-5,1e-3 or batch_size=choice:16,32")
@click.option("--max-concurrent", type=click.IntRange(1), default=None, help="trials at a time (default: fits the cluster)")
@click.option("--split", default="train", show_default=True)
@click.option("--subset", default=None)
@click.option("--class", "class_label", type=click.IntRange(0), default=None)
@click.option("--limit", type=click.IntRange(1), default=None)
@click.option("--fid-n", type=click.IntRange(2), default=None)
@click.option("--seed", type=click.IntRange(0, TRAIN_MAX_SEED), default=0, show_default=True)
@click.option("--register/--no-register", default=True, show_default=True,
              help="register the best trial's best checkpoint as the challenger")
def sweep_gan_cmd(trials, workers_per_trial, scheduler, space_file, space_flags, max_concurrent, register,
                  **kwargs) -> None:
    """Sweep a GAN preset's hyperparameters with ASHA (or PBT) on FID."""
    from training.gan.sweep import SearchSpace, SweepConfig, run_sweep, table_markdown

    def go():
        overrides = {}
        for flag in space_flags:
            key, sep, spec = flag.partition("=")
            if not sep:
                raise BadInput(f"--space {flag!r}: expected KEY=KIND:V1,V2")
            overrides[key] = spec
        space = SearchSpace.load(space_file, overrides)
        cfg = SweepConfig(base=_config(workers=workers_per_trial, **kwargs), space=space, trials=trials,
                          scheduler=scheduler, max_concurrent=max_concurrent)
        return run_sweep(cfg, progress=say)

    result = go()
    click.echo(table_markdown(result.trials))
    best = result.best
    click.echo(f"best: trial {best.trial_id} FID {best.best_fid:.3f} at epoch-checkpoint {best.checkpoint} "
               f"(run {best.run_id})\nparent run: {result.run_url}")
    if register and best.run_id:
        _register(best.run_id, best.checkpoint)


@train.command("classifier")
@click.option("--dataset", required=True, help="catalog dataset, name@version or name (latest)")
@click.option("--arch", type=click.Choice(["densenet121", "densenet169", "resnet18-small", "small-cnn", "vgg16-knee"]),
              default="resnet18-small", show_default=True, help="classifier preset")
@click.option("--epochs", type=click.IntRange(1, 100_000), default=None, help="preset default")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="global batch (preset default)")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Adam lr (preset default)")
@click.option("--workers", type=click.IntRange(1, 1024), default=1, show_default=True)
@click.option("--gpu/--cpu", "use_gpu", default=False, show_default=True)
@click.option("--multilabel", is_flag=True, help="independent sigmoid per class (DenseNet presets)")
@click.option("--pretrained", default=None, help="starting weights: a state dict PATH or s3://bucket/key")
@click.option("--pretrained-sha256", default=None, help="expected sha256 of --pretrained (required with it)")
@click.option("--seed", type=click.IntRange(0, TRAIN_MAX_SEED), default=0, show_default=True)
@click.option("--label-from", default=None, metavar="attribute=NAME",
              help="train on a record attribute instead of the class, e.g. attribute=slice_index (the knee-MRI "
                   "paper's domain classifier for eval am-mode)")
@click.option("--register/--no-register", default=True, show_default=True,
              help="register the lowest-validation-loss model as classifier-{dataset}-{arch}[-{attribute}]@champion")
def train_classifier_cmd(dataset: str, seed: int, register: bool, label_from: str | None, **kwargs) -> None:
    """Train a classifier on DATASET's real train split (best validation loss selects the epoch).

    A multi-label dataset (nih-cxr14 / chexpert layouts) trains the multi-label head on its
    multi-hot findings and reports per-finding AUROC."""
    from training.classify.config import ClassifierTrainConfig
    from training.classify.trainer import train_classifier

    def go():
        cfg = ClassifierTrainConfig(**kwargs)
        return train_classifier(cfg, dataset, seed=seed, register=register, progress=say,
                                label_from=label_from)

    fit, reg, url = go()
    metrics = fit.results[fit.best_key].test_metrics
    keys = (("accuracy", "auroc_mean", *sorted(k for k in metrics if k.startswith("auroc/"))) if "auroc_mean" in metrics
            else ("accuracy", "balanced_accuracy", "kappa", "roc_auc"))
    click.echo(f"run: {url}\ntest: " + ", ".join(f"{k} {metrics[k]:.3f}" for k in keys))
    if reg is not None:
        click.echo(f"classifier: {reg.uri} ({reg.alias_uri})")


@train.command("segmenter")
@click.option("--dataset", required=True, help="catalog dataset with masks, name@version or name (latest)")
@click.option("--arch", type=click.Choice(["unet-small", "unet", "basicunet-small"]), default="unet-small",
              show_default=True, help="segmenter preset (MONAI UNet / BasicUNet)")
@click.option("--epochs", type=click.IntRange(1, 100_000), default=None, help="preset default")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="global batch (preset default)")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Adam lr (preset default)")
@click.option("--workers", type=click.IntRange(1, 1024), default=1, show_default=True)
@click.option("--gpu/--cpu", "use_gpu", default=False, show_default=True)
@click.option("--seed", type=click.IntRange(0, TRAIN_MAX_SEED), default=0, show_default=True)
@click.option("--register/--no-register", default=True, show_default=True,
              help="register the highest-validation-Dice model as segmenter-{dataset}-{arch}@champion")
def train_segmenter_cmd(dataset: str, seed: int, register: bool, **kwargs) -> None:
    """Train a segmenter on DATASET's real image + mask train split (best validation Dice selects the epoch)."""
    from training.segment.config import SegmenterTrainConfig
    from training.segment.trainer import train_segmenter

    fit, reg, url = train_segmenter(SegmenterTrainConfig(**kwargs), dataset, seed=seed, register=register,
                                    progress=click.echo)
    metrics = fit.results[fit.best_key].test_metrics
    click.echo(f"run: {url}\ntest Dice {metrics['dice']:.3f} [{metrics['dice/ci_low']:.3f}, {metrics['dice/ci_high']:.3f}]"
               f", IoU {metrics['iou']:.3f} [{metrics['iou/ci_low']:.3f}, {metrics['iou/ci_high']:.3f}]")
    if reg is not None:
        click.echo(f"segmenter: {reg.uri} ({reg.alias_uri})")
