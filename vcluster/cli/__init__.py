"""The ``vcluster`` command line: a thin click layer over the library.

Every command turns a :class:`~vcluster.errors.VclusterError` into one line on stderr
(``vcluster: error: ...``) and exit status 1; ``--debug`` shows the traceback instead.
Subcommands live in their own modules and are added below.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from vcluster import __version__
from vcluster.errors import VclusterError


class VclusterGroup(click.Group):
    """A click group that prints vcluster errors as one line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VclusterError as exc:
            if ctx.find_root().params.get("debug"):
                raise
            click.echo(f"{ctx.find_root().info_name or 'vcluster'}: error: {exc}", err=True)
            ctx.exit(1)


@click.group(cls=VclusterGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vcluster")
@click.option("--config", "config_path", envvar="VCLUSTER_CONFIG", default=None,
              metavar="PATH", help="Config file [default: $VCLUSTER_CONFIG or "
              "/etc/vcluster/vcluster.toml].")
@click.option("--debug", is_flag=True, help="Log debug messages and show tracebacks.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, debug: bool) -> None:
    """vcluster: run Slurm jobs on VMs booted for them in OpenNebula.

    \b
    Example:
      vcluster status
    """
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path
    ctx.obj["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def _register() -> None:
    from vcluster.cli.testbed import testbed

    cli.add_command(testbed)
    from vcluster.cli.slurmconf import slurm_conf; cli.add_command(slurm_conf)  # noqa: E702,I001
    from vcluster.cli.status import events, status; cli.add_command(status); cli.add_command(events)  # noqa: E702,I001,E501
    from vcluster.cli.hook import hook; cli.add_command(hook)  # noqa: E702,I001
    from vcluster.cli.controller import controller_group; cli.add_command(controller_group)  # noqa: E702,I001,E501


_register()


def main() -> None:
    cli(prog_name="vcluster")
