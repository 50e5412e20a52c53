"""``synthray study …``: blinded real-vs-synthetic reader studies, tied to the generator version.

``create`` freezes the image set in S3 and prints one link per reader (served by the Serve app
at ``/study/<token>``); ``status`` counts answers; ``close`` ends the study, analyses it and logs
it to MLflow (the generator version gets ``study.*`` tags, shown by ``synthray registry show``);
``results`` prints the analysis of a closed study.

Fakes are rendered here through the Serve app's own code path (the registered
:class:`~training.nets.sampler.GeneratorSampler`, loaded by ``load_generator``, rendered by
``Synthesizer._render_jobs``), one seed per image, so ``/v1/synthesize`` with
``{"model": "NAME/VERSION", "n": 1, "seed": S}`` returns the same pixels.
"""

from __future__ import annotations

import json
import math

import click

from infra.settings import get_settings


@click.group("study")
def study() -> None:
    """Reader studies: experts tell real from synthetic radiographs (knee paper 000, chest paper 003)."""


def _studies():
    from infra.object_store import ObjectStore
    from training.studies.store import StudyStore

    store = ObjectStore(get_settings())
    return StudyStore(store)


def _base_url(url: str | None) -> str:
    if url:
        return url.rstrip("/")
    from services.serving.deploy import base_url

    return base_url(get_settings())


def render_local(model: dict, seeds: list[int], cls: str | int | None, classes: list[str]) -> list:
    """One image per seed, through the Synthesizer's render path (same pixels as /v1/synthesize n=1)."""
    from infra.errors import BadInput
    from services.serving.model_directory import ModelRef
    from services.serving.synthesizer import Synthesizer, _Job, resolve_label
    from training.registry.generators import load_generator

    sampler = load_generator(model["uri"], get_settings())
    ref = ModelRef(model["name"], str(model["version"]), model.get("run_id"), classes=tuple(classes))
    label = resolve_label(sampler, ref, cls)
    if hasattr(label, "detail"):
        raise BadInput(label.detail, field="class")
    return list(Synthesizer.func_or_class._render_jobs([_Job(sampler, 1, seed, label) for seed in seeds]))


@study.command("create")
@click.option("--model", required=True, help="generator: NAME@alias or NAME/VERSION (the version is recorded)")
@click.option("--reference", required=True, help="real images: NAME[@VER][:SELECTOR], e.g. phantom-knee:split=test")
@click.option("--n-real", type=click.IntRange(1, 500), default=30, show_default=True)
@click.option("--n-fake", type=click.IntRange(1, 500), default=30, show_default=True)
@click.option("--size", type=click.IntRange(32, 2048), default=315, show_default=True, help="served image side, px")
@click.option("--readers", type=click.IntRange(1, 200), default=15, show_default=True)
@click.option("--groups", default=None, help="reader groups, e.g. radiologist=8,surgeon=7 (sum = --readers)")
@click.option("--time-limit", "time_limit", type=click.FloatRange(3, 3600), default=None,
              help="seconds per image; a timeout is recorded as 'no answer'")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=None, help="seeds the choice of images")
@click.option("--require-disjoint", is_flag=True,
              help="refuse a reference sharing patients/images with the generator's training selection")
@click.option("--class", "cls", default=None, help="class of the fakes (conditional generators)")
@click.option("--title", default="", help="shown to readers")
@click.option("--url", default=None, help="base URL readers reach the Serve app at [default: the local one]")
@click.option("--json", "as_json", is_flag=True, help="print the study (with links) as JSON")
def create_cmd(model, reference, n_real, n_fake, size, readers, groups, time_limit, seed, require_disjoint, cls,
               title, url, as_json) -> None:
    """Freeze a blinded image set in S3 and print one link per reader."""
    from infra.tracking import configure
    from training.catalog.store import Catalog
    from training.registry.generators import resolve_version
    from training.registry.refs import ModelReference
    from training.studies.create import StudyRequest, freeze, parse_groups, plan

    settings = get_settings()
    request = StudyRequest(model=model, reference=reference, n_real=n_real, n_fake=n_fake, size=size,
                           readers=readers, groups=parse_groups(groups), time_limit_s=time_limit, seed=seed,
                           require_disjoint=require_disjoint, cls=int(cls) if cls and cls.isdigit() else cls,
                           title=title)
    ModelReference.parse(model)
    version = resolve_version(configure(settings).MlflowClient(), model)
    tags = dict(version.tags or {})
    resolved = {"name": version.name, "version": str(version.version), "run_id": version.run_id, "spec": model,
                "uri": ModelReference(version.name, version=str(version.version)).uri}
    studies = _studies()
    catalog = Catalog(studies.store)
    the_plan = plan(request, resolved, tags, catalog)
    click.echo(f"study: {n_real} real from {the_plan.dataset}:{the_plan.selector or '(all)'}, {n_fake} synthetic "
               f"from {resolved['name']}/{resolved['version']}; {the_plan.disjoint}", err=True)
    fakes = render_local(resolved, the_plan.fake_seeds, request.cls, json.loads(tags.get("classes") or "[]"))
    created = freeze(the_plan, fakes, catalog, studies, progress=lambda m: click.echo(m, err=True))
    links = created.links(_base_url(url))
    s = created.study
    if as_json:
        click.echo(json.dumps({"study_id": s.study_id, "model": s.model, "reference": s.reference,
                               "readers": [{"reader_id": r.reader_id, "group": r.group, "url": links[r.reader_id]}
                                           for r in s.readers]}, indent=1))
        return
    click.echo(f"study {s.study_id}: {len(s.images)} images at {s.size} px, {len(s.readers)} readers")
    for r in s.readers:
        click.echo(f"  {r.reader_id}  {r.group:<14} {links[r.reader_id]}")
    click.echo(f"close it with: synthray study close {s.study_id}")


@study.command("list")
def list_cmd() -> None:
    """Every study with its generator version and state."""
    studies = _studies()
    ids = studies.study_ids()
    if not ids:
        click.echo("no studies")
        return
    for sid in ids:
        s = studies.study(sid)
        state = "closed" if studies.closed(sid) else "open"
        click.echo(f"{sid}  {state:<6}  {s.model['name']}/{s.model['version']}  {s.n_real}+{s.n_fake} images  "
                   f"{len(s.readers)} readers  {s.title}")


@study.command("status")
@click.argument("study_id")
def status_cmd(study_id: str) -> None:
    """State and answers per reader (counts only)."""
    from training.studies.results import status

    st = status(_studies(), study_id)
    click.echo(f"{st['study_id']}: {st['state']}, {st['answers']}/{st['answers_expected']} answers, "
               f"{st['readers_done']}/{len(st['readers'])} readers done; "
               f"model {st['model']['name']}/{st['model']['version']}")
    for r in st["readers"]:
        click.echo(f"  {r['reader_id']}  {r['group']:<14} {r['answered']}/{r['total']}")


@study.command("links")
@click.argument("study_id")
@click.option("--url", default=None, help="base URL of the Serve app [default: the local one]")
def links_cmd(study_id: str, url: str | None) -> None:
    """The readers' links again (owner only: they are the readers' credentials)."""
    from training.studies.create import reader_url

    studies = _studies()
    s = studies.study(study_id)
    tokens = studies.tokens(study_id)
    base = _base_url(url)
    for r in s.readers:
        click.echo(f"{r.reader_id}  {r.group:<14} {reader_url(base, tokens[r.reader_id])}")


def _pct(v) -> str:
    return "   –  " if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:5.1f}%"


def _p(v) -> str:
    return "–" if v is None else f"{v:.3g}"


def print_results(result: dict) -> None:
    s = result["study"]
    click.echo(f"study {s['study_id']}: {s['model']['name']}/{s['model']['version']}, {s['n_real']} real + "
               f"{s['n_fake']} synthetic at {s['size']} px, {s['n_readers']} readers")
    head = f"{'':<22} {'n':>4} {'acc':>7} {'sens':>7} {'spec':>7} {'bal.acc':>7}  {'95% CI':<15} {'p':>7}"
    click.echo(head)

    def row(name, x):
        click.echo(f"{name:<22} {x['n']:>4} {_pct(x['accuracy']):>7} {_pct(x['sensitivity']):>7} "
                   f"{_pct(x['specificity']):>7} {_pct(x['balanced_accuracy']):>7}  "
                   f"{_pct(x['ci_low']).strip()}–{_pct(x['ci_high']).strip():<8} {_p(x['p_value']):>7}")

    row("all readers", result["overall"])
    for g in result["groups"]:
        row(f"group {g['group']} ({g['n_readers']})", g)
    for r in result["readers"]:
        row(f"reader {r['reader']} ({r['group']})", r)
    o = result["overall"]
    click.echo(f"per-reader balanced accuracy: {_pct(o['reader_ba_mean']).strip()} ± {_pct(o['reader_ba_sd']).strip()}")
    click.echo(f"Fleiss' kappa: {_p(result['fleiss_kappa'])} over {result['fleiss_n_images']} images")
    for k in result["cohen_kappa"]:
        click.echo(f"Cohen's kappa {k['reader_a']} x {k['reader_b']}: {_p(k['kappa'])} ({k['n']} images)")
    click.echo(f"most-fooling fake: fooled {_pct(result['most_fooling_fake_rate']).strip()} of its readers")
    for b in result["accuracy_vs_time"]:
        click.echo(f"accuracy {b['from_s']:.1f}–{b['to_s']:.1f} s: {_pct(b['accuracy']).strip()} ({b['n']} answers)")
    if result.get("mlflow_run_id"):
        click.echo(f"MLflow run: {result['mlflow_run_id']}")


@study.command("close")
@click.argument("study_id")
@click.option("--json", "as_json", is_flag=True)
def close_cmd(study_id: str, as_json: bool) -> None:
    """Close the study (no more answers), analyse it and log it to MLflow with the generator version."""
    from training.studies.results import close_study

    result = close_study(_studies(), study_id, progress=lambda m: click.echo(m, err=True))
    click.echo(json.dumps(result, indent=1)) if as_json else print_results(result)


@study.command("results")
@click.argument("study_id")
@click.option("--json", "as_json", is_flag=True)
def results_cmd(study_id: str, as_json: bool) -> None:
    """The analysis of a closed study: per reader and group, κ, fooling rates, accuracy vs time."""
    from training.studies.results import stored_results

    result = stored_results(_studies(), study_id)
    click.echo(json.dumps(result, indent=1)) if as_json else print_results(result)
