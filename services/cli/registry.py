"""``synthray registry …``: list, show, register, promote (gated) and roll back generators."""

from __future__ import annotations

import click

from infra.progress import say

from training.registry.generators import MODEL_REF_HELP


@click.group("registry")
def registry() -> None:
    """The MLflow Model Registry: generators, their cards, gated promotion."""


def _cell(tags: dict, key: str, fmt: str = "{}") -> str:
    value = tags.get(key)
    return "-" if value in (None, "") else fmt.format(float(value) if fmt != "{}" else value)


@registry.command("list")
@click.option("--name", "name_filter", default=None, help="only models whose name contains this")
@click.option("--versions", type=click.IntRange(1), default=5, show_default=True, help="newest versions per model")
def list_cmd(name_filter: str | None, versions: int) -> None:
    """Registered models: versions, aliases and key metrics."""
    from infra.tracking import configure

    def go():
        client = configure().MlflowClient()
        rows = []
        for model in client.search_registered_models(max_results=1000):
            if name_filter and name_filter not in model.name:
                continue
            aliases: dict[str, list[str]] = {}
            for alias, version in (model.aliases or {}).items():
                aliases.setdefault(str(version), []).append(alias)
            found = client.search_model_versions(f"name = '{model.name}'", order_by=["version_number DESC"],
                                                 max_results=versions)
            for v in found:
                t = v.tags
                rows.append([model.name, str(v.version), ",".join(sorted(aliases.get(str(v.version), []))) or "-",
                             _cell(t, "fid", "{:.2f}"), _cell(t, "fid.n_real"), _cell(t, "kid", "{:.4f}"),
                             _cell(t, "memorization.fraction_below_real_p1", "{:.3f}"), _cell(t, "epoch"),
                             _cell(t, "dataset")])
        return rows

    rows = go()
    head = ["NAME", "VER", "ALIASES", "FID", "n", "KID", "MEMO", "EPOCH", "DATASET"]
    if not rows:
        click.echo("no registered models" + (f" matching {name_filter!r}" if name_filter else ""))
        return
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for row in [head, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


@registry.command("show")
@click.argument("spec", metavar="NAME[@ALIAS|/VERSION]")
def show_cmd(spec: str) -> None:
    """Print a version's model card (NAME alone means NAME@champion)."""
    from training.registry.generators import model_card

    click.echo(model_card(spec))


@registry.command("register")
@click.option("--run", "run_id", required=True, help="MLflow training run id")
@click.option("--checkpoint", default=None, help="checkpoint URI (default: the run's best-FID checkpoint)")
@click.option("--name", default=None, help="registered model name (default: the naming rule)")
@click.option("--filter-default", type=click.Choice(("none", "near-copy")), default="none", show_default=True,
              help="synthesis filter of this version when a request names none (shown on the card)")
@click.option("--segmenter", default=None, metavar="NAME@ALIAS|NAME/VERSION|none",
              help="image + mask generators: the segmenter that scores mask realism on the card "
                   "[default: the champion segmenter of the generator's dataset, if registered]")
@click.option("--mask-n", type=click.IntRange(1, 100_000), default=None,
              help="generated pairs that mask realism scores [default: 64]")
def register_cmd(run_id: str, checkpoint: str | None, name: str | None, filter_default: str, segmenter: str | None,
                 mask_n: int | None) -> None:
    """Evaluate a training run's generator and register it as the challenger."""
    from training.registry.generators import register_run

    reg = register_run(run_id, name=name, checkpoint=checkpoint, filter_default=filter_default, segmenter=segmenter,
                       mask_n=mask_n, progress=say)
    click.echo(f"model: {reg.version_uri} (alias {reg.alias})")


@registry.command("promote")
@click.argument("name")
@click.option("--version", default=None, help="version number to promote")
@click.option("--from", "from_alias", default=None, help="promote the version behind this alias, e.g. challenger")
@click.option("--max-fid", type=click.FloatRange(min=0, min_open=True), default=None,
              help="gate 1 passes at or below this FID")
@click.option("--beat-champion/--no-beat-champion", default=True, show_default=True,
              help="gate 1 also passes when FID beats the champion's on the same reference")
@click.option("--max-memorized", type=click.FloatRange(0, 1), default=0.05, show_default=True,
              help="gate 2: largest fraction of samples closer than the real→real 1st percentile")
@click.option("--max-mia-auc", type=click.FloatRange(0.5, 1), default=0.6, show_default=True,
              help="gate 4: largest membership-inference AUC (worst attack) of the registration audit")
@click.option("--force", is_flag=True, help="promote despite failed gates (needs --reason)")
@click.option("--reason", default=None, help="why --force; recorded on the registered model")
def promote_cmd(name: str, version, from_alias, max_fid, beat_champion, max_memorized, max_mia_auc, force,
                reason) -> None:
    """Move NAME's champion alias to a version that passes the gates."""
    from training.registry.promotion import PromotionGates, promote

    gates = PromotionGates(max_fid=max_fid, beat_champion=beat_champion, max_memorized_fraction=max_memorized,
                           max_mia_auc=max_mia_auc)
    report = promote(name, version=version, from_alias=from_alias, gates=gates, force=force, reason=reason)
    for line in report.lines() if report.gates else []:
        click.echo(line)
    click.echo(f"{name} v{report.version}: {report.note}")
    if not report.promoted and report.failures:
        raise SystemExit(1)


@registry.command("rollback")
@click.argument("name")
def rollback_cmd(name: str) -> None:
    """Point champion back at previous-champion (and vice versa)."""
    from training.registry.promotion import rollback

    old, new = rollback(name)
    click.echo(f"{name}: champion v{old} → v{new}")


__doc__ += f"\n\nModel references: {MODEL_REF_HELP}."
