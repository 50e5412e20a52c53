"""The one console entry point, ``synthray``.

Groups follow the layers: ``stack`` (infra), ``catalog``, ``train``, ``sweep``, ``registry``,
``eval`` and ``experiment`` (training),
``serve``, ``demo`` and ``study`` (services). Heavy imports happen inside commands so ``--help``
stays instant.

Errors are handled once, here: a :class:`infra.errors.SynthrayError` (or a library error that
:func:`infra.errors.classify` maps to one) prints one ``Error: …`` line and exits with the
error's ``exit_code``. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


import click

from infra.errors import SynthrayError, classify
from infra.progress import set_verbosity
from services.cli.stack import fid_weights, stack
from services.cli.catalog import catalog
from services.cli.train import sweep, train
from services.cli.eval import eval_group
from services.cli.experiment import experiment
from services.cli.registry import registry
from services.cli.serve import generate, serve
from services.cli.cluster import cluster
from services.cli.demo import demo
from services.cli.doctor import doctor
from services.cli.study import study


class UserError(click.ClickException):
    """A :class:`SynthrayError` on its way to click's one-line ``Error: …`` output."""

    def __init__(self, error: SynthrayError) -> None:
        super().__init__(error.message)
        self.error = error
        self.exit_code = error.exit_code


class SynthrayGroup(click.Group):
    """The root group: every command's user errors pass through :meth:`invoke` once."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - classified below; the rest re-raised untouched
            error = classify(exc)
            if error is None:
                raise
            raise UserError(error) from None


@click.group(cls=SynthrayGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="synthray")
@click.option("-q", "--quiet", is_flag=True, help="print only results and errors (no progress, no step lines)")
@click.option("-v", "--verbose", is_flag=True,
              help="print everything: Ray's worker output, Serve access logs, MLflow's run links")
def main(quiet: bool, verbose: bool) -> None:
    """synthray: synthetic radiographs from GANs, on Ray, MLflow and S3.

    By default the console shows synthray's own lines and progress bars (a few periodic lines
    when stdout is not a terminal); Ray's and Serve's own logs stay in the log files under the
    state dir (SYNTHRAY_VERBOSITY sets the default level).
    """
    if quiet and verbose:
        raise click.UsageError("--quiet and --verbose exclude each other")
    if quiet or verbose:
        set_verbosity("quiet" if quiet else "verbose")


for command in (stack, doctor, fid_weights, catalog, train, sweep, registry, eval_group, experiment, serve, generate,
                cluster, demo, study):
    main.add_command(command)


if __name__ == "__main__":
    main()
