"""``synthray catalog …``: publish, inspect, verify, re-split and export dataset versions."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import click

from infra.progress import say

from infra.settings import get_settings

LAYOUT_NAMES = ("imagefolder", "chen-kl", "mura", "csv", "image-mask", "dicom", "nifti", "nifti-mask", "nih-cxr14",
                "chexpert")
PRESET_NAMES = ("none", "knee", "radiograph")


def _open():
    from training.catalog.selection import catalog

    return catalog(get_settings())


def _fractions(_ctx, _param, text: str | None) -> dict[str, float] | None:
    """``train=0.8,val=0.1,test=0.1`` → dict (validated again by the splitter)."""
    if text is None:
        return None
    try:
        pairs = [t.split("=") for t in text.split(",") if t.strip()]
        return {k.strip(): float(v) for k, v in pairs}
    except ValueError:
        raise click.BadParameter(f"{text!r}: use SPLIT=FRACTION[,…], e.g. train=0.8,val=0.1,test=0.1") from None


def _pairs(_ctx, param, values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{value!r}: use NAME=…", param=param)
        out[key.strip()] = rest
    return out


def _echo_report(report: dict) -> None:
    """The counts a person checks after an ingest, one table at a time."""
    click.echo(f"  ingested {report['ingested']} of {report['scanned']} files; skipped {report['skipped'] or 'none'}")
    if (turned := report.get("exif_oriented", {})).get("applied"):
        click.echo(f"  EXIF orientation applied to {turned['applied']} file(s): {turned['by_orientation']}")
    if report.get("excluded_by_merge"):
        click.echo(f"  excluded by --merge/--classes: {report['excluded_by_merge']}")
    if masks := report.get("masks"):
        click.echo(f"  masks: {masks['with_mask']} image(s) with a mask; classes {masks['classes']}")
    for problem in report["problems"][:20]:
        click.echo(f"  skipped {problem['kind']:<11} {problem['path']}: {problem['reason']}")
    if len(report["problems"]) > 20:
        click.echo(f"  … {len(report['problems']) - 20} more in report.json")
    click.echo(f"  per class: {report['per_class']}")
    if "per_finding" in report:
        click.echo(f"  per finding: {report['per_finding']}")
    for split, counts in report["per_split"].items():
        click.echo(f"  {split:<6} {counts}")
    click.echo(f"  patients: {report['patients']}; shared between splits: {report['patient_overlap_between_splits']}")
    for step, counts in report["step_counts"].items():
        click.echo(f"  {step:<24} {counts}")
    if report["focus_bands"]:
        click.echo(f"  focus bands: {report['focus_bands']}")
    for step, score in report["detectors"].items():
        click.echo(
            f"  detector {step:<16} vs truth '{score['truth']}': accuracy {score['accuracy']:.3f} "
            f"precision {score['precision']:.3f} recall {score['recall']:.3f} (n={score['n']}, positives {score['positives']})"
        )


def _save_report(cat, result, report_dir: Path | None) -> None:
    """Report and contact sheets next to the manifest in S3, and (optionally) on disk for a look."""
    from training.catalog.store import encode_png

    manifest = result.manifest
    click.echo(f"  report and contact sheets: {cat.store.uri(cat.attachment_key(manifest.name, manifest.version, ''))}")
    if report_dir is None:
        return
    from infra.names import confined

    report_dir.mkdir(parents=True, exist_ok=True)
    confined(report_dir, "report.json").write_text(json.dumps(result.report, indent=1, sort_keys=True))
    for name, sheet in result.sheets.items():
        confined(report_dir, f"{name}.png").write_bytes(encode_png(sheet))
    click.echo(f"  written to {report_dir}/ (report.json{', ' + str(len(result.sheets)) + ' contact sheets' if result.sheets else ''})")


def _preprocess_options(fn):
    for option in reversed([
        click.option("--preprocess", "preset", type=click.Choice(PRESET_NAMES), default="none", show_default=True,
                     help="preprocessing preset; 'knee' = flip, invert negatives, equalize, resize, focus; "
                          "'radiograph' = equalize (16-bit in, 8-bit out), resize"),
        click.option("--resize", "size", type=click.IntRange(16, 4096), default=None,
                     help="resize target of the knee preset [default: 210; the phantom's own size for `phantom`]"),
        click.option("--focus-threshold", type=click.FloatRange(0), default=350.0, show_default=True,
                     help="Laplacian-variance score below which images go to subset 'rejected'"),
        click.option("--flip-detector", default="fibula", show_default=True, help="lateral-side detector"),
        click.option("--negative-detector", default="border", show_default=True, help="negative-image detector"),
        click.option("--focus-sweep", is_flag=True, help="contact sheets of the focus bands 0/175/350/525"),
        click.option("--engine", type=click.Choice(("threads", "ray")), default="threads", show_default=True,
                     help="read + preprocess in this process, or with Ray Data on the cluster"),
        click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="also write report.json and contact sheets here"),
    ]):
        fn = option(fn)
    return fn


def medical_options(fn):
    """Options of the dicom and nifti layouts (``training.catalog.dicom`` / ``.nifti``)."""
    for option in reversed([
        click.option("--window", default=None, metavar="auto|WC,WW|none",
                     help="dicom: VOI window; auto = the file's window/VOI LUT, else percentiles 0.5-99.5 [default: auto]"),
        click.option("--allow-burned-in", is_flag=True, default=None,
                     help="dicom: also ingest files marked BurnedInAnnotation=YES"),
        click.option("--label-by", default=None,
                     help="dicom: modality|body_part|view_position|folder|none [default: modality]; "
                          "nifti: folder|none [default: none]"),
        click.option("--slice-axis", type=click.Choice(("x", "y", "z")), default=None,
                     help="nifti: slice along this RAS+ axis [default: z, axial]"),
        click.option("--percentiles", default=None, metavar="LOW,HIGH",
                     help="nifti: intensity window from these percentiles of each volume [default: 0.5,99.5]"),
        click.option("--min-foreground", type=click.FloatRange(0, 1), default=None,
                     help="nifti: slices with less than this fraction of pixels above 5% of the window are "
                          "skipped as empty [default: 0.01]"),
        click.option("--patients", "patients_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     default=None, help="nifti: CSV path,patient_id[,label] mapping volumes to patients"),
        click.option("--id-salt-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                     help="dicom/nifti: salt of the patient/UID pseudonyms [default: a per-dataset salt "
                          "created in the state folder]"),
    ]):
        fn = option(fn)
    return fn


_MEDICAL_OPTIONS = {
    "dicom": ("window", "allow_burned_in", "label_by", "id_salt_file"),
    "nifti": ("slice_axis", "percentiles", "min_foreground", "patients_csv", "label_by", "id_salt_file"),
    "nifti-mask": ("slice_axis", "percentiles", "min_foreground", "patients_csv", "label_by", "id_salt_file"),
    "chexpert": ("uncertain",),
}


def layout_options(layout: str, given: dict) -> dict:
    """The medical options the user gave, checked against the layout and parsed."""
    from infra.errors import BadInput

    given = {k: v for k, v in given.items() if v is not None and v is not False}
    stray = sorted(set(given) - set(_MEDICAL_OPTIONS.get(layout, ())))
    if stray:
        flags = ", ".join("--" + k.replace("_csv", "").replace("_", "-") for k in stray)
        raise BadInput(f"{flags} do(es) not apply to --layout {layout}", field=stray[0])
    if "window" in given:
        from training.catalog.dicom import parse_window

        given["window"] = parse_window(given["window"])
    if "percentiles" in given:
        try:
            low, high = (float(v) for v in given["percentiles"].split(","))
        except ValueError:
            raise BadInput(f"--percentiles {given['percentiles']!r}: use LOW,HIGH, e.g. 0.5,99.5",
                           field="percentiles") from None
        given["percentiles"] = (low, high)
    return given


@click.group("catalog")
def catalog() -> None:
    """Datasets in the object store, addressed as name@version."""


@catalog.command("phantom")
@click.option("--n", "n", type=click.IntRange(1, 1_000_000), default=1000, show_default=True, help="images")
@click.option("--size", "phantom_size", type=click.IntRange(32, 1024), default=210, show_default=True, help="side in pixels")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--name", default="phantom-knee", show_default=True, help="dataset name")
@click.option("--merge", "merges", multiple=True, metavar="NEW=L1,L2",
              help="merge grades into a class, e.g. --merge KL01=0,1 --merge KL234=2,3,4 (the knee paper's two classes)")
@click.option("--masks", is_flag=True, help="also publish each image's exact label map (background, femur, tibia, fibula)")
@_preprocess_options
def catalog_phantom(n, phantom_size, seed, name, merges, masks, preset, size, focus_threshold, flip_detector,
                    negative_detector, focus_sweep, engine, report_dir) -> None:
    """Publish the procedural knee-radiograph PHANTOM (not medical data), scored against its ground truth."""
    from training.catalog.selection import ingest_phantom
    from training.catalog.ingest import IngestOptions, parse_merge
    from training.catalog.phantom import PhantomSpec

    options = IngestOptions(
        name=name, layout="csv", preset=preset, size=size or phantom_size, focus_threshold=focus_threshold,
        flip_detector=flip_detector, negative_detector=negative_detector, seed=seed, focus_sweep=focus_sweep,
        engine=engine, merges=dict(parse_merge(m) for m in merges),
    )
    cat = _open()
    result = ingest_phantom(n, PhantomSpec(size=phantom_size, seed=seed), options, cat, say, masks=masks)
    _echo_report(result.report)
    _save_report(cat, result, report_dir)
    click.echo(str(result.manifest.ref))


@catalog.command("ingest")
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.option("--name", required=True, help="dataset name (lowercase, digits, . _ -)")
@click.option("--layout", type=click.Choice(LAYOUT_NAMES), required=True, help="source layout")
@_preprocess_options
@click.option("--merge", "merges", multiple=True, metavar="NEW=L1,L2",
              help="merge source labels (names or indices) into a class, e.g. --merge KL01=0,1 --merge KL234=2,3,4")
@click.option("--classes", default=None, help="fixed class order, comma-separated (labels outside are excluded)")
@click.option("--split", "fractions", default="train=0.8,val=0.1,test=0.1", show_default=True, callback=_fractions,
              help="fractions for patient-level splits when the layout fixes none")
@click.option("--resplit", is_flag=True, help="ignore the layout's own splits")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="split seed")
@click.option("--patient-regex", default=None, help="patient id from the file stem (group 'patient' or 1)")
@click.option("--truth", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="CSV with path + mirrored/inverted/blurred (0/1) to score the detectors")
@click.option("--mask-classes", default=None, metavar="BACKGROUND,C1,…",
              help="names of the mask values, value 0 first (default: masks/classes.txt of layouts image-mask, "
                   "nifti-mask)")
@click.option("--require-mask", is_flag=True, help="every image needs a mask with at least one labelled pixel")
@medical_options
@click.option("--uncertain", type=click.Choice(("zeros", "ones", "ignore")), default=None,
              help="chexpert: uncertain (-1) labels become 0, 1, or are masked out of the loss "
                   "(stored in each record's 'uncertain' list) [default: zeros]")
def catalog_ingest(src, name, layout, preset, size, focus_threshold, flip_detector, negative_detector, focus_sweep,
                   engine, report_dir, merges, classes, fractions, resplit, seed, patient_regex, truth,
                   mask_classes, require_mask, **medical) -> None:
    """Ingest SRC (a directory, a CSV file for --layout csv, nih-cxr14 or chexpert, a DICOMDIR or a NIfTI file)
    as a new version of --name. For nih-cxr14/chexpert, --classes picks the findings (multi-hot order)."""
    from training.catalog.ingest import IngestOptions, ingest, parse_merge

    options = IngestOptions(
        name=name, layout=layout, preset=preset, size=size or 210, focus_threshold=focus_threshold,
        flip_detector=flip_detector, negative_detector=negative_detector, focus_sweep=focus_sweep, engine=engine,
        merges=dict(parse_merge(m) for m in merges), classes=classes.split(",") if classes else None,
        fractions=fractions, resplit=resplit, seed=seed, patient_regex=patient_regex, truth=truth,
        layout_options=layout_options(layout, medical),
        mask_classes=[c.strip() for c in mask_classes.split(",")] if mask_classes else None,
        require_mask=require_mask,
    )
    cat = _open()
    result = ingest(src, options, cat, say)
    _echo_report(result.report)
    _save_report(cat, result, report_dir)
    click.echo(str(result.manifest.ref))


@catalog.command("list")
def catalog_list() -> None:
    """Every dataset with its latest version, version count and image count."""
    from training.catalog.store import CatalogError

    cat = _open()
    for name in cat.datasets():
        try:
            manifest = cat.manifest(name)
        except CatalogError as err:  # one bad dataset must not hide the others
            click.echo(f"{name}  UNREADABLE: {err}")
            continue
        click.echo(
            f"{manifest.ref}  {len(manifest.records)} images  {len(cat.versions(name))} version(s)  "
            f"classes={','.join(manifest.classes)}"
        )


@catalog.command("show")
@click.argument("ref")
def catalog_show(ref: str) -> None:
    """Counts per class, split and patient of REF (name@version or name)."""
    from training.catalog.ingest import summarize

    manifest = _open().manifest(ref)
    summary = summarize(manifest.records)
    click.echo(f"{manifest.ref}: {manifest.description}")
    click.echo(f"  {len(manifest.records)} images, {summary['patients']} patients, classes {', '.join(manifest.classes)}")
    if manifest.multilabel:
        from training.catalog.multilabel import per_finding

        click.echo(f"  multi-label, findings (multi-hot order): {', '.join(manifest.findings)}")
        click.echo(f"  per finding: {per_finding(manifest.records, manifest.findings)}")
    width = max(map(len, manifest.classes)) + 2
    click.echo("  " + "split".ljust(8) + "".join(c.rjust(width) for c in manifest.classes) + "   patients")
    for split in summary["per_split"]:
        records = [r for r in manifest.records if r.split == split]
        counts = Counter(r.label_name for r in records)
        patients = len({r.patient_id for r in records if r.patient_id})
        click.echo("  " + split.ljust(8) + "".join(str(counts[c]).rjust(width) for c in manifest.classes) + f"   {patients}")
    click.echo(f"  patients shared between splits: {summary['patient_overlap_between_splits']}")
    for name, members in manifest.subsets.items():
        click.echo(f"  subset {name}: {len(members)} images")
    for step, counts in summary["step_counts"].items():
        click.echo(f"  {step:<24} {counts}")
    if manifest.preprocessing:
        click.echo(f"  preprocessing: {json.dumps(manifest.preprocessing)}")


@catalog.command("verify")
@click.argument("ref")
def catalog_verify(ref: str) -> None:
    """Re-hash every object of REF; exit 1 listing each missing or tampered object."""
    report = _open().verify(ref, progress=lambda done, total: click.echo(f"verify: {done}/{total} objects"))
    for problem in report.problems:
        click.echo(f"  {problem}", err=True)
    click.echo(f"{report.ref}: {report.checked} objects, {len(report.problems)} problem(s)")
    sys.exit(0 if report.ok else 1)


@catalog.command("split")
@click.argument("ref")
@click.option("--split", "fractions", default=None, callback=_fractions,
              help="new patient-level split fractions, e.g. train=0.7,val=0.15,test=0.15")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--subset", "subsets", multiple=True, callback=_pairs, metavar="NAME=SELECTOR",
              help="declare a subset, e.g. classifier-pool=subset=rejected or gan-train=split=train,subset!=rejected")
@click.option("--name", default=None, help="publish under another dataset name")
@click.option("--sites", type=click.IntRange(1), default=None,
              help="declare K disjoint federated sites site-0 … site-{K-1} (patients never span two)")
@click.option("--by", default="patient", show_default=True, metavar="patient|attribute=NAME",
              help="with --sites: deal whole patients, or use a record attribute such as hospital")
@click.option("--within", default="split=train", show_default=True, metavar="SELECTOR",
              help="with --sites: the records the sites partition")
def catalog_split(ref, fractions, seed, subsets, name, sites, by, within) -> None:
    """Publish a new version of REF with new splits, named subsets or federated sites (same images)."""
    from training.catalog.splits import derive, split_overlap

    if sites is not None:
        if fractions is not None or subsets:
            raise click.UsageError("--sites declares sites on the current splits; give it without --split/--subset")
        from training.federated.sites import publish_sites, site_subsets

        manifest = publish_sites(_open(), ref, sites, by=by, within=within, seed=seed, name=name)
        for site in site_subsets(manifest):
            chosen = manifest.select(subset=site)
            click.echo(f"  {site}: {len(chosen)} images, {len({r.patient_id or r.sha256 for r in chosen})} patients")
        click.echo(str(manifest.ref))
        return
    if fractions is None and not subsets:
        raise click.UsageError("give --split, --subset or --sites")
    manifest = derive(_open(), ref, name=name, fractions=fractions, seed=seed, subsets=subsets)
    for split in sorted({r.split for r in manifest.records}):
        click.echo(f"  {split:<6} {Counter(r.label_name for r in manifest.records if r.split == split)}")
    for pair, found in split_overlap(manifest.records).items():
        click.echo(f"  {pair[0]}/{pair[1]}: {found}")
    for subset, members in manifest.subsets.items():
        click.echo(f"  subset {subset}: {len(members)} images")
    click.echo(str(manifest.ref))


@catalog.command("disjoint")
@click.argument("ref_a")
@click.argument("ref_b")
@click.option("--a", "select_a", default="", help="selector within REF_A, e.g. subset=gan-train")
@click.option("--b", "select_b", default="", help="selector within REF_B, e.g. split=test")
def catalog_disjoint(ref_a, ref_b, select_a, select_b) -> None:
    """Check two selections share no patient and no image (exit 1 if they do)."""
    from training.catalog.splits import overlap, select

    cat = _open()
    a, b = select(cat.manifest(ref_a), select_a), select(cat.manifest(ref_b), select_b)
    found = overlap(a, b)
    click.echo(f"{ref_a}[{select_a or 'all'}] ({len(a)}) vs {ref_b}[{select_b or 'all'}] ({len(b)}): {found}")
    sys.exit(0 if found.disjoint else 1)


@catalog.command("export")
@click.argument("ref")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--select", "selector", default="", help="selector, e.g. split=test,label=KL01 or modality=CR")
@click.option("--format", "fmt", type=click.Choice(("png", "dicom")), default="png", show_default=True,
              help="png: the stored PNGs; dicom: DICOM Secondary Capture files with the catalog's provenance")
def catalog_export(ref, directory, selector, fmt) -> None:
    """Write REF's verified images to DIRECTORY/{split}/{class}/{sha256}.{png,dcm} plus manifest.json."""
    from training.catalog.splits import select

    cat = _open()
    records = select(cat.manifest(ref), selector)
    progress = lambda done, total: click.echo(f"export: {done}/{total} images")  # noqa: E731
    if fmt == "dicom":
        from training.catalog.dicom_export import export_catalog

        export_catalog(cat, ref, records, directory, progress=progress)
    else:
        cat.export(ref, directory, records, progress=progress)
    click.echo(f"{len(records)} images in {directory}")
