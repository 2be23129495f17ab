"""The ``vcluster`` command line: a thin click layer over the library.

Every command turns a :class:`~vcluster.errors.VclusterError` into one line on stderr
(``vcluster: error: ...``) and exit status 1; ``--debug`` shows the traceback instead.
Subcommands live in their own modules and are added below.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from vcluster import __version__
from vcluster.errors import VclusterError


class VclusterGroup(click.Group):
    """A click group that prints vcluster errors as one line instead of a traceback, and
    imports its subcommands (listed in ``_SUBCOMMANDS``) only when they are used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_SUBCOMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _SUBCOMMANDS and cmd_name not in self.commands:
            self.add_command(_load(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)

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


# Subcommands, imported only when used: `fsub` and `vcluster --help` stay fast, and a
# command's heavy imports (SQLAlchemy, the testbed) load only for that command.
_SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "cleanup": ("vcluster.cli.admin", "cleanup"),
    "controller": ("vcluster.cli.controller", "controller_group"),
    "doctor": ("vcluster.cli.doctor", "doctor"),
    "drain": ("vcluster.cli.admin", "drain"),
    "drain-host": ("vcluster.cli.host", "drain_host"),
    "events": ("vcluster.cli.status", "events"),
    "hook": ("vcluster.cli.hook", "hook"),
    "hook-front": ("vcluster.cli.hook", "hook_front"),
    "nodes": ("vcluster.cli.admin", "nodes"),
    "reserve": ("vcluster.cli.reserve", "reserve"),
    "slurm-conf": ("vcluster.cli.slurmconf", "slurm_conf"),
    "status": ("vcluster.cli.status", "status"),
    "terminate": ("vcluster.cli.admin", "terminate"),
    "testbed": ("vcluster.cli.testbed", "testbed"),
    "undrain": ("vcluster.cli.admin", "undrain"),
    "undrain-host": ("vcluster.cli.host", "undrain_host"),
    "usage": ("vcluster.cli.usage", "usage"),
}


def _load(name: str) -> click.Command:
    module, attr = _SUBCOMMANDS[name]
    command = getattr(importlib.import_module(module), attr)
    assert isinstance(command, click.Command)
    return command




def main() -> None:
    cli(prog_name="vcluster")
