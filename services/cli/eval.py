"""``synthray eval …``: FID (+ KID, precision/recall), memorization audit, diversity, AM/Mode scores,
membership inference and mask realism.

The synthetic side is a PNG folder (``--images DIR``) or a registered generator
(``--model models:/NAME@alias``, sampled with ``--seed``); the real side is a catalog
selection, ``--reference NAME[@VER][:SUBSET][:CLASS]`` plus ``--split`` (CLASS is a class name
or index; leave SUBSET empty to give only a class: ``phantom-knee@abc::KL2``). That syntax and
the class rule are :mod:`training.evaluate.reference_spec`'s, shared with ``POST /v1/fid``;
this module only turns their errors into click's ``--reference`` messages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from infra.errors import BadInput
from infra.settings import get_settings

if TYPE_CHECKING:  # imported lazily below: importing training.evaluate pulls in torch
    from training.evaluate.reference_spec import ReferenceSpec

DIMS = ("64", "192", "768", "2048")


def _spec_option(_ctx, _param, text: str | None) -> ReferenceSpec | None:
    """``--reference`` callback: :meth:`ReferenceSpec.parse`, its error as click's bad-value message."""
    if text is None:
        return None
    from training.evaluate.reference_spec import ReferenceSpec

    try:
        return ReferenceSpec.parse(text)
    except BadInput as exc:
        raise click.BadParameter(exc.message) from None


def _labels_of(spec: ReferenceSpec) -> list[int] | None:
    """The spec's class against its dataset's manifest (:func:`resolve_labels`), as a --reference error."""
    if spec.label is None:
        return None
    from training.catalog.selection import catalog
    from training.evaluate.reference_spec import resolve_labels

    classes = catalog(get_settings()).manifest(spec.dataset).classes
    try:
        return resolve_labels(classes, spec.label, spec.dataset)
    except BadInput as exc:
        raise click.BadParameter(exc.message, param_hint="--reference") from None


def _real_stats(ref: ReferenceSpec, split: str, n: int | None, dims: int, batch_size: int):
    from training.evaluate import reference_statistics

    click.echo(f"reference: {ref.dataset} split={split} subset={ref.subset} class={ref.label} n={n or 'all'}", err=True)
    stats = reference_statistics(
        ref.dataset, split=None if split == "all" else split, subset=ref.subset,
        labels=_labels_of(ref), n=n, settings=get_settings(), dims=dims,
        batch_size=batch_size,
    )
    click.echo(f"reference: {stats.n} images, {'cache hit' if stats.cached else 'computed'} "
               f"{stats.key}", err=True)
    return stats


def _synthetic(images: Path | None, model: str | None, n: int | None, seed: int, label: int | None = None):
    """(uint8 images, labels or None) from exactly one of --images / --model."""
    if (images is None) == (model is None):
        raise click.UsageError("give exactly one of --images DIR or --model models:/NAME@ALIAS")
    if images is not None:
        from training.evaluate.images import load_image_folder

        folder = load_image_folder(images, n)
        return folder.images, folder.labels, folder.class_names
    if n is None:
        raise click.UsageError("--model needs --n (how many images to generate)")
    from training.registry.generators import load_generator

    sampler = load_generator(model, get_settings())
    kwargs = {"label": label} if label is not None else {}
    return sampler.generate(n, seed=seed, **kwargs), None, None


def _common(fn):
    for option in reversed([
        click.option("--reference", "reference", required=True, callback=_spec_option,
                     metavar="NAME[@VER][:SUBSET][:CLASS]", help="real images: a catalog selection"),
        click.option("--split", default="train", show_default=True, help="split of the reference ('all' = every split)"),
        click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
                     help="folder of synthetic PNGs (or class subfolders)"),
        click.option("--model", default=None, metavar="models:/NAME@ALIAS", help="registered generator to sample"),
        click.option("--n", type=click.IntRange(2), default=None,
                     help="images per side: the first N of the reference and of DIR, or N generated [default: all]"),
        click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="sampling/bootstrap seed"),
        click.option("--dims", type=click.Choice(DIMS), default="2048", show_default=True,
                     help="Inception features (2048 = FID; smaller only for quick checks)"),
        click.option("--batch-size", type=click.IntRange(1, 4096), default=50, show_default=True),
        click.option("--json", "as_json", is_flag=True, help="print the result as JSON"),
    ]):
        fn = option(fn)
    return fn


@click.group("eval")
def eval_group() -> None:
    """Evaluate synthetic images against a catalog dataset."""


@eval_group.command("fid")
@_common
@click.option("--bootstrap", type=click.IntRange(0, 10_000), default=0, show_default=True,
              help="FID bootstrap draws for a CI (each ~2 s at 2048-d)")
@click.option("--kid/--no-kid", default=False, show_default=True, help="also KID with a 1,000-draw bootstrap CI")
@click.option("--precision-recall", "pr", is_flag=True, help="also improved precision/recall (k=3)")
def eval_fid(reference, split, images, model, n, seed, dims, batch_size, as_json, bootstrap, kid, pr) -> None:
    """FID of synthetic images vs cached reference statistics (n, weights and reference key reported)."""
    from training.evaluate import evaluate

    stats = _real_stats(reference, split, n, int(dims), batch_size)
    fake, _, _ = _synthetic(images, model, n if n is not None or images is not None else stats.n, seed)
    metrics = ["fid"] + (["kid"] if kid else []) + (["precision_recall"] if pr else [])
    result = evaluate(fake, stats, metrics, batch_size=batch_size,
                      fid_bootstrap=bootstrap, seed=seed)
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    fid = result["fid"]
    ci = f" ({fid['confidence']:.0%} CI {fid['ci_low']:.3f}-{fid['ci_high']:.3f})" if fid["bootstrap"] else ""
    click.echo(f"FID {fid['fid']:.4f}{ci}  n_real={fid['n_real']} n_fake={fid['n_fake']} dims={fid['dims']}")
    click.echo(f"  weights sha256 {fid['weights_sha256']}  reference {fid['reference_key']}")
    if "kid" in result:
        k = result["kid"]
        click.echo(f"KID {k['kid']:.5f} (95% CI {k['ci_low']:.5f}-{k['ci_high']:.5f})")
    if "precision_recall" in result:
        p = result["precision_recall"]
        click.echo(f"precision {p['precision']:.3f} recall {p['recall']:.3f} (k={p['k']})")


@eval_group.command("memorization")
@_common
@click.option("--top-k", type=click.IntRange(1, 500), default=20, show_default=True, help="pairs per class on the sheets")
@click.option("--pixel-ssim", is_flag=True, help="also the nearest training image by SSIM (every pair: slow)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="also write summary.json, pairs.csv and the contact sheets here")
def eval_memorization(reference, split, images, model, n, seed, dims, batch_size, as_json, top_k, pixel_ssim,
                      out_dir) -> None:
    """Nearest training image of each synthetic image, vs the training set's own NN distances.

    The reference is the whole selection (every training image is a candidate twin); --n caps
    only the synthetic images. Class subfolders of --images named like the dataset's classes
    label the synthetic images; otherwise each takes the class of its nearest training image.
    """
    from training.evaluate import memorization_audit

    stats = _real_stats(reference, split, None, int(dims), batch_size)
    fake, labels, names = _synthetic(images, model, n, seed)
    if labels is not None:  # class subfolders: map their names onto the dataset's classes
        from training.catalog.selection import catalog

        classes = catalog(get_settings()).manifest(stats.dataset).classes
        if unknown := set(names) - set(classes):
            raise click.BadParameter(f"subfolders {sorted(unknown)} are not classes of {stats.dataset}",
                                     param_hint="--images")
        labels = [classes.index(names[i]) for i in labels]
    summary = memorization_audit(fake, stats, fake_labels=labels, top_k=top_k, pixel_ssim=pixel_ssim,
                                 settings=get_settings(), out_dir=out_dir, batch_size=batch_size)
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    click.echo(f"{summary['n_fake']} synthetic vs {summary['n_real']} training images ({summary['dataset']})")
    click.echo(f"  min distance {summary['min_distance']:.3f}, median {summary['median_distance']:.3f}; "
               f"real→real 1st percentile {summary['real_nn_p1']:.3f}")
    click.echo(f"  closer than the real 1st percentile: {summary['n_below_real_p1']} "
               f"({summary['fraction_below_real_p1']:.1%})")
    if summary["ssim"]:
        s = summary["ssim"]
        click.echo(f"  SSIM: max {s['max']:.4f}; above the real→real 99th percentile {s['real_nn_p99']:.4f}: "
                   f"{s['n_above_real_p99']}")
    for row in summary["closest"][:5]:
        click.echo(f"  #{row['rank']} fake {row['fake_index']} ~ {row['real_sha256'][:12]} ({row['real_class']}) "
                   f"d={row['distance']:.3f}")
    for name, uri in summary["artifacts"].items():
        click.echo(f"  {name}: {uri}")


@eval_group.command("diversity")
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="folder of PNGs (class subfolders give the classes)")
@click.option("--reference", "reference", callback=_spec_option, default=None,
              metavar="NAME[@VER][:SUBSET][:CLASS]", help="real images from the catalog (labels from the manifest)")
@click.option("--model", default=None, metavar="models:/NAME@ALIAS", help="registered generator (one class)")
@click.option("--split", default="train", show_default=True, help="split of --reference ('all' = every split)")
@click.option("--n", type=click.IntRange(2), default=None, help="first N images / N generated")
@click.option("--pairs", type=click.IntRange(1, 1_000_000), default=1000, show_default=True,
              help="random same-class pairs")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def eval_diversity(images, reference, model, split, n, pairs, seed, as_json) -> None:
    """Mean ± std MS-SSIM over random same-class pairs (lower = more diverse)."""
    from training.evaluate import ms_ssim_diversity

    if sum(x is not None for x in (images, reference, model)) != 1:
        raise click.UsageError("give exactly one of --images, --reference or --model")
    if reference is not None:
        from training.catalog.selection import catalog
        from training.evaluate.reference import selected_records

        cat = catalog(get_settings())
        manifest = cat.manifest(reference.dataset)
        records = selected_records(manifest, None if split == "all" else split, reference.subset,
                                   _labels_of(reference), n)
        pixels, labels = cat.read_pixels(records), [r.label for r in records]
    else:
        pixels, labels, _ = _synthetic(images, model, n, seed)
    result = ms_ssim_diversity(pixels, labels, n_pairs=pairs, seed=seed)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=1))
        return
    click.echo(f"MS-SSIM {result.mean:.4f} ± {result.std:.4f} over {result.n_pairs} same-class pairs "
               f"({result.levels} scales, {len(pixels)} images)")
    for label, row in result.per_class.items():
        click.echo(f"  class {label}: {row['mean']:.4f} ± {row['std']:.4f} ({row['n_pairs']} pairs)")


@eval_group.command("am-mode")
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="folder of synthetic PNGs")
@click.option("--model", default=None, metavar="models:/NAME@ALIAS", help="registered generator to sample")
@click.option("--classifier", required=True, metavar="models:/NAME@ALIAS",
              help="registered domain classifier giving p(y|x) (e.g. trained with --label-from attribute=slice_index)")
@click.option("--prior", default=None, metavar="P1,P2,…",
              help="p(y*) as comma-separated probabilities [default: the classifier's training split]")
@click.option("--prior-dataset", default=None, metavar="NAME[@VER]",
              help="p(y*) from this dataset's train split [default: the classifier's own dataset]")
@click.option("--n", type=click.IntRange(1), default=None, help="first N images of DIR, or N generated")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="sampling seed of --model")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def eval_am_mode(images, model, classifier, prior, prior_dataset, n, seed, as_json) -> None:
    """AM (lower is better) and Mode (higher) scores, knee-MRI paper Eqs. 4-5, under a domain classifier.

    p(y|x) is the classifier's; p(y*) the label distribution of the data it was trained on
    (its version's dataset tag and, for an attribute classifier, its label_from tag)."""
    import numpy as np

    from training.evaluate.am_mode import am_mode_scores, load_domain_classifier, training_prior

    fake, _, _ = _synthetic(images, model, n, seed)
    domain = load_domain_classifier(classifier, get_settings())
    if prior is not None and prior_dataset is not None:
        raise click.UsageError("give --prior or --prior-dataset, not both")
    if prior is not None:
        try:
            p_star = np.array([float(v) for v in prior.split(",")])
        except ValueError:
            raise click.BadParameter(f"{prior!r}: use probabilities like 0.5,0.25,0.25", param_hint="--prior") from None
    else:
        dataset = prior_dataset or domain.dataset
        if dataset is None:
            raise click.UsageError(f"{classifier} carries no dataset tag: give --prior or --prior-dataset")
        p_star = training_prior(domain.classes, dataset, domain.label_from, settings=get_settings())
    scores, _ = am_mode_scores(fake, domain, p_star)
    result = {**scores.as_dict(), "classifier": classifier, "classes": domain.classes, "prior": p_star.tolist(),
              "label_from": domain.label_from}
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    click.echo(f"AM {scores.am:.6f} (lower is better)  Mode {scores.mode:.6f} (higher is better)  "
               f"n={scores.n} classes={scores.num_classes} ({classifier})")


@eval_group.command("membership")
@click.option("--model", required=True, metavar="models:/NAME@ALIAS",
              help="registered generator (registered from a training run: its training selection is recorded)")
@click.option("--critic/--no-critic", default=True, show_default=True,
              help="also attack with the discriminator (LOGAN) when the version's checkpoint still resolves")
@click.option("--bootstrap", type=click.IntRange(0, 100_000), default=1000, show_default=True,
              help="bootstrap resamples for the CIs (0 = none)")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def eval_membership(model, critic, bootstrap, as_json) -> None:
    """Membership-inference audit: can an attacker tell training patients from held-out ones?

    Members are the version's training images, non-members the dataset's held-out (val/test)
    patients of the same classes. Attacks: distance to the closest synthetic record (GAN-Leaks)
    and, with the checkpoint, the discriminator's score (LOGAN). Logged to MLflow
    (experiment membership-audit).
    """
    from training.registry.audit import audit_version

    summary = audit_version(model, critic=critic, bootstrap=bootstrap, settings=get_settings(),
                            progress=lambda line: click.echo(line, err=True))
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    click.echo(f"{summary['model']} v{summary['version']}: {summary['n_members']} members vs "
               f"{summary['n_nonmembers']} held-out patients' images, {summary['n_synthetic']} samples")
    for name, a in summary["attacks"].items():
        ci = a["auc_ci"] or [float("nan")] * 2
        click.echo(f"  {name:<7} AUC {a['auc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]  TPR@1%FPR {a['tpr_at_1pct_fpr']:.3f}")
    click.echo(f"  summary: {summary['artifact']}")


@eval_group.command("mask-realism")
@click.option("--model", required=True, metavar="NAME@ALIAS|NAME/VERSION", help="registered image + mask generator")
@click.option("--segmenter", default=None, metavar="NAME@ALIAS|NAME/VERSION",
              help="registered segmenter of the same mask classes [default: the champion segmenter of the "
                   "generator's dataset]")
@click.option("--n", type=click.IntRange(1, 100_000), default=None,
              help="pairs to generate [default: as on the version's card, else 64]")
@click.option("--seed", type=click.IntRange(0), default=None,
              help="sampling seed [default: the version's evaluation seed, as on its card]")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def eval_mask_realism(model, segmenter, n, seed, as_json) -> None:
    """Dice of generated masks against a segmenter's reading of the generated images (MONAI DiceMetric).

    The defaults reproduce the "Mask realism" section of the version's model card."""
    from training.registry.generators import version_mask_realism

    result = version_mask_realism(model, segmenter, n=n, seed=seed, fields=("--model", "--segmenter"),
                                  settings=get_settings())
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    if "skipped" in result:
        click.echo(f"{result['model']} v{result['version']}: mask realism not measured: {result['skipped']}")
        return
    low, high = result["dice_ci"]
    click.echo(f"{result['model']} v{result['version']}: mask Dice {result['dice']:.4f} (95% CI {low:.4f}-{high:.4f}) "
               f"over {result['n']} pairs (seed {result['seed']}) vs {result['segmenter']} ({result['choice']})")
    for name, row in result["per_class"].items():
        click.echo(f"  {name}: {row['dice']:.4f} ({row['ci_low']:.4f}-{row['ci_high']:.4f})")
