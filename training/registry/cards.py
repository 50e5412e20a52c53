"""Model cards of registered generators: generated from the registration's facts, never by hand.

Every number on the card comes from :class:`CardFacts`, which the registry fills from the
training run, its checkpoint and the evaluation done at registration; the "known limits" are
rules over the same facts (small n, a phantom dataset, low resolution, memorization hits), so
a card cannot claim more than was measured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

CARD_FILE = "model_card.md"
GRID_FILE = "sample_grid.png"
MASK_REALISM_FILE = "mask_realism.png"  # generated masks (green) vs the segmenter's reading (red)
MASK_DICE_LIMIT = 0.5  # below this mean mask-realism Dice the card lists the masks as a known limit
FID_RELIABLE_N = 2048  # below this FID is biased upwards (pytorch-fid's 2048-d features)


@dataclass(frozen=True)
class CardFacts:
    """What a model card states."""

    name: str
    arch: str
    image_size: int
    latent_dim: int
    conditional: bool
    classes: list[str]
    class_name: str | None
    dataset: str
    manifest_sha256: str
    selection: dict
    n_train: int
    epoch: int
    run_id: str
    run_url: str
    git_commit: str
    checkpoint: str
    hyperparameters: dict
    fid: dict
    kid: dict
    memorization: dict
    eval_seed: int
    phantom: bool = False  # every training image is from the procedural phantom
    floor: dict | None = None  # real-vs-real FID floor at the same n: {"fid", "n", "method", "key"}
    ema: bool = False  # the weights are the EMA generator's (StyleGAN2-ADA G_ema)
    membership: dict | None = None  # training.evaluate.membership summary, or {"skipped": why}
    near_copy: dict | None = None  # {"threshold", "n_indexed", "filter_default"} of the packed index
    mask_classes: list[str] | None = None  # a paired generator's mask classes (background first)
    mask_realism: dict | None = None  # registry.generators.measure_mask_realism summary, or {"skipped": why}
    sites: list[dict] | None = None  # federated: every site's selection (the lineage instead of ``selection``)


def _augmentation(hp: dict) -> str:
    """The card's line for the augmentation before D (the run's recipe and ops)."""
    kind = hp.get("augment", "none")
    # checkpoints written before the policy was configurable used all four ops
    policy = hp.get("augment_policy") or ["translation", "cutout", "brightness", "contrast"]
    if kind == "diffaugment":
        return f"DiffAugment (Zhao et al. 2020): {', '.join(policy)}, p = 1"
    if kind == "ada":
        return f"ADA (Karras et al. 2020): {', '.join(policy)}, adaptive p"
    return "none"


def known_limits(f: CardFacts) -> list[str]:
    """Limits that follow from the facts themselves."""
    limits = ["Synthetic images for research and for augmenting classifier training data; "
              "not for diagnosis, and not a substitute for a radiologist's reading."]
    if f.phantom:
        limits.append(f"Trained on `{f.dataset}`, a procedural phantom: the images show phantom anatomy, not patients.")
    if f.fid["n_real"] < FID_RELIABLE_N:
        limits.append(f"FID and KID use n = {f.fid['n_real']} real images (< {FID_RELIABLE_N}); FID is biased "
                      "upwards at small n, so compare it only with FIDs of the same reference key and n.")
    if f.image_size < 128:
        limits.append(f"{f.image_size}×{f.image_size} px: fine structures (trabeculae, fracture lines) are below "
                      "this resolution.")
    below = f.memorization.get("n_below_real_p1", 0)
    if below:
        limits.append(f"{below} of {f.memorization['n_fake']} audited samples lie closer to a training image than "
                      "99 % of training images lie to each other: inspect the contact sheets before sharing outputs.")
    if f.near_copy and f.near_copy["n_indexed"] < f.n_train:
        limits.append(f"The near-copy filter indexes {f.near_copy['n_indexed']} of the {f.n_train} training images "
                      "(the FID reference, capped by fid_n): copies of the others pass it.")
    mia = f.membership or {}
    if "auc" in mia and mia["auc_ci"][0] > 0.5:
        limits.append(f"The membership-inference attack ({mia['worst_attack']}) beats chance: AUC {mia['auc']:.2f}, "
                      f"CI low {mia['auc_ci'][0]:.2f} > 0.5; training patients can be told from held-out ones.")
    realism = f.mask_realism or {}
    if f.mask_classes and "skipped" in realism:
        limits.append(f"Mask realism was not measured ({realism['skipped']}): nothing checks that a generated mask "
                      "matches its image.")
    elif "dice" in realism and realism["dice"] < MASK_DICE_LIMIT:
        limits.append(f"Generated masks disagree with the segmenter's reading of their images (mask realism Dice "
                      f"{realism['dice']:.2f} < {MASK_DICE_LIMIT}): inspect the pairs before using the masks as labels.")
    if f.epoch < 10:
        limits.append(f"Only {f.epoch} epoch(s) of training: expect visible artefacts.")
    return limits


def _kv(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def render_card(f: CardFacts, version: str | None = None) -> str:
    """The Markdown card (the sample grid is ``sample_grid.png`` beside it)."""
    kid, mem = f.kid, f.memorization
    what = (f"conditional on {len(f.classes)} classes ({', '.join(f.classes)})" if f.conditional and f.class_name is None
            else f"class `{f.class_name}` only" if f.class_name else "unconditional (all classes)")
    label = "label=<class index>" if f.conditional else "label=None"
    sections = [
        f"# Model card: {f.name}" + (f" v{version}" if version else ""),
        f"GAN generator `{f.arch}`, {f.image_size}×{f.image_size} grayscale, {what}. "
        f"Generated from the registration's measurements by synthray; do not edit.",
        "## Intended use\n"
        "Produce synthetic radiographs to augment or replace scarce real training data for "
        "radiology classifiers, where real images cannot be shared. Every output is synthetic and "
        "must be labelled as such.\n\n"
        f"Contract: `generate(n, seed, {label})` returns uint8 images `(n, {f.image_size}, {f.image_size})`; "
        "the same arguments give byte-identical images."
        + (f"\n\nImage + mask pairs: `generate_pairs(n, seed, {label})` also returns uint8 label maps "
           f"`(n, {f.image_size}, {f.image_size})`, value i = class i of {', '.join(f'`{c}`' for c in f.mask_classes)} "
           "(argmax of the generator's one-hot mask channels; byte-identical for the same arguments). "
           "FID, KID and the memorization audit score the image channel only."
           if f.mask_classes else ""),
        "## Data\n" + _kv([
            ("dataset", f"`{f.dataset}`"),
            ("manifest sha256", f"`{f.manifest_sha256}`"),
            ("selection", ", ".join(f"{k}={v}" for k, v in f.selection.items() if v not in (None, "none"))),
            *((("federated sites", "; ".join(", ".join(f"{k}={v}" for k, v in s.items() if v is not None)
                                             for s in f.sites)),) if f.sites else ()),
            ("training images", str(f.n_train)),
        ]),
        "## Training\n" + _kv([
            ("run", f"[{f.run_id}]({f.run_url})"),
            ("git commit", f"`{f.git_commit}`"),
            ("epoch of this checkpoint", str(f.epoch)),
            ("weights", "EMA generator (G_ema, StyleGAN2-ADA convention; BatchNorm statistics recomputed for the "
             "EMA weights)" if f.ema else "raw generator"),
            ("augmentation before D", _augmentation(f.hyperparameters)),
            ("checkpoint", f"`{f.checkpoint}`"),
            *((k, f"`{v}`") for k, v in f.hyperparameters.items()),
        ]),
        "## Metrics\n" + _kv([
            ("FID", f"{f.fid['fid']:.3f} (n_real = {f.fid['n_real']}, n_fake = {f.fid['n_fake']}, {f.fid['dims']}-d)"),
            ("KID", f"not computed: {kid['skipped']}" if "skipped" in kid else
             f"{kid['kid']:.5f}, {100 * (kid.get('confidence') or 0):.0f} % CI "
             f"[{kid['ci_low']:.5f}, {kid['ci_high']:.5f}] ({kid['bootstrap']} bootstrap draws)"
             if kid.get("ci_low") is not None else f"{kid['kid']:.5f}"),
            *((("real-vs-real floor", f"{f.floor['fid']:.3f} at n = {f.floor['n']} ({f.floor['method']}; "
                f"FID / floor = {f.fid['fid'] / f.floor['fid']:.2f})"),) if f.floor and f.floor["fid"] > 0 else ()),
            ("reference", f"`{f.fid['reference_key']}`"),
            ("Inception weights sha256", f"`{f.fid['weights_sha256']}`"),
            ("evaluation seed", str(f.eval_seed)),
        ]),
        f"## Privacy audit (memorization)\nNot run: {mem['skipped']}" if "skipped" in mem else
        "## Privacy audit (memorization)\n"
        "Nearest training image of every synthetic one in Inception space, against the training "
        "set's own spacing (real→nearest-other-real).\n\n" + _kv([
            ("synthetic images audited", str(mem["n_fake"])),
            ("closer than the real→real 1st percentile",
             f"{mem['n_below_real_p1']} ({100 * mem['fraction_below_real_p1']:.1f} %)"),
            ("smallest synthetic→training distance", f"{mem['min_distance']:.3f} (real→real p1 {mem['real_nn_p1']:.3f})"),
            *((f"contact sheet {k.removeprefix('contact-').removesuffix('.png')}", f"`{v}`")
              for k, v in mem.get("artifacts", {}).items() if k.startswith("contact-")),
        ]),
        *((section,) if f.mask_classes and (section := mask_realism_section(mask_realism_tags(f.mask_realism or {})))
          else ()),
        *privacy_sections(f),
        f"## Samples\n![samples (fixed seed {f.eval_seed})]({GRID_FILE})",
        "## Known limits\n" + "\n".join(f"- {line}" for line in known_limits(f)),
    ]
    return "\n\n".join(sections) + "\n"


def mask_realism_tags(summary: dict) -> dict[str, str]:
    """``mask_realism.*`` version tags of a mask realism summary
    (:func:`training.registry.generators.measure_mask_realism`), or its ``skipped`` reason."""
    if "dice" not in summary:
        return {"mask_realism.skipped": summary["skipped"]} if "skipped" in summary else {}
    tags = {"mask_realism.dice": summary["dice"], "mask_realism.dice.ci_low": summary["dice_ci"][0],
            "mask_realism.dice.ci_high": summary["dice_ci"][1]}
    for name, row in summary["per_class"].items():
        tags |= {f"mask_realism.dice.{name}": row["dice"], f"mask_realism.dice.{name}.ci_low": row["ci_low"],
                 f"mask_realism.dice.{name}.ci_high": row["ci_high"]}
    tags = {k: f"{v:.6f}" for k, v in tags.items()}
    tags |= {"mask_realism.n": str(summary["n"]), "mask_realism.seed": str(summary["seed"]),
             "mask_realism.segmenter": summary["segmenter"], "mask_realism.segmenter_choice": summary["choice"],
             "mask_realism.classes": json.dumps(list(summary["per_class"]))}
    if summary.get("segmenter_test_dice") is not None:
        tags["mask_realism.segmenter_test_dice"] = f"{summary['segmenter_test_dice']:.6f}"
    return tags


def mask_realism_section(tags: dict[str, str]) -> str | None:
    """The "Mask realism" section from a version's ``mask_realism.*`` tags (None when it has none).

    Rendered from the tags (not from :class:`CardFacts`) so the stored card and ``registry show``
    of a version logged without it say the same thing.
    """
    if not any(k.startswith("mask_realism.") for k in tags):
        return None
    head = ("## Mask realism\nDoes each generated mask match its generated image? A registered segmenter reads the "
            "image; its label map is scored against the generated mask with MONAI `DiceMetric` per image and "
            "foreground class (a class absent from both scores 1, drawn by one side only 0), then averaged over "
            "images with a 95 % bootstrap CI. Low Dice: the masks do not match the images, or the segmenter fails "
            "on synthetic images (compare its own test Dice on real images).")
    if "mask_realism.skipped" in tags:
        return f"{head}\n\nNot measured: {tags['mask_realism.skipped']}."

    def dice(prefix: str) -> str:
        return (f"{float(tags[prefix]):.3f}, 95 % CI [{float(tags[prefix + '.ci_low']):.3f}, "
                f"{float(tags[prefix + '.ci_high']):.3f}]")

    own = tags.get("mask_realism.segmenter_test_dice")
    rows = [("segmenter", f"`{tags['mask_realism.segmenter']}` ({tags['mask_realism.segmenter_choice']})"),
            ("segmenter's test Dice on real images", f"{float(own):.3f}" if own else "not recorded"),
            ("generated pairs", f"{tags['mask_realism.n']} (seed {tags['mask_realism.seed']})"),
            ("Dice (mean over classes)", dice("mask_realism.dice")),
            *((f"Dice `{name}`", dice(f"mask_realism.dice.{name}"))
              for name in json.loads(tags.get("mask_realism.classes", "[]")))]
    return f"{head}\n\n{_kv(rows)}\n\n![generated masks (green) vs the segmenter (red)]({MASK_REALISM_FILE})"


def privacy_sections(f: CardFacts) -> list[str]:
    """The membership-inference audit and the near-copy filter (empty for facts without them)."""
    out = []
    mia = f.membership
    if mia is not None and "skipped" in mia:
        out.append(f"## Privacy audit (membership inference)\nNot run: {mia['skipped']}")
    elif mia is not None:
        ci = lambda a, k: f"[{a[k + '_ci'][0]:.3f}, {a[k + '_ci'][1]:.3f}]" if a.get(k + "_ci") else "–"  # noqa: E731
        rows = [("members (training images)", str(mia["n_members"])),
                ("non-members (held-out patients)", f"{mia['n_nonmembers']} (`{'`, `'.join(mia['nonmember_keys'])}`)"),
                ("synthetic samples attacked with", str(mia["n_synthetic"]))]
        names = {"dcr": "distance to closest synthetic record (GAN-Leaks)", "critic": "discriminator score (LOGAN)"}
        for name, a in mia["attacks"].items():
            rows.append((f"{names.get(name, name)}: AUC", f"{a['auc']:.3f}, {100 * a['confidence']:.0f} % CI {ci(a, 'auc')}"))
            rows.append((f"{names.get(name, name)}: TPR at 1 % FPR",
                         f"{a['tpr_at_1pct_fpr']:.3f}, CI {ci(a, 'tpr_at_1pct_fpr')}"))
        rows.append(("summary", f"`{mia['artifact']}`"))
        out.append("## Privacy audit (membership inference)\n"
                   "Can an attacker tell a training patient's image from a held-out patient's? AUC 0.5 is chance; "
                   "the promotion gate `--max-mia-auc` (default 0.6) reads the worst attack's AUC and its CI.\n\n" + _kv(rows))
    if f.near_copy:
        nc = f.near_copy
        out.append("## Near-copy filter\n" + _kv([
            ("default for requests", f"`{nc['filter_default']}` (`filter=near-copy` or `filter=none` per request)"),
            ("index", f"{nc['n_indexed']} training-split images (the memorization audit's reference), Inception "
                      "features, scikit-learn NearestNeighbors"),
            ("threshold", f"{nc['threshold']:.3f} (real→real nearest-neighbour 1st percentile)"),
        ]))
    return out


def cas_section(tags: dict[str, str]) -> str | None:
    """The classification accuracy score an augmentation experiment recorded on the version, if any.

    Written after registration (``cas.*`` version tags), so it is appended when the card is shown
    rather than baked into the stored card.
    """
    if not any(k.startswith("cas.") for k in tags):
        return None
    pct = lambda key: f"{100 * float(tags[key]):.2f} %" if key in tags else "–"  # noqa: E731
    return "## Classification accuracy score\n" + _kv([
        ("train on synthetic, test on real (TSTR)", pct("cas.tstr_accuracy")),
        ("train on real, test on synthetic (TRTS)", pct("cas.trts_accuracy")),
        ("real test set", tags.get("cas.test_set", "–")),
        ("experiment", tags.get("cas.experiment", "–")),
    ]) + "\n"
