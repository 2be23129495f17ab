"""``vcluster slurm-conf``: print the slurm.conf lines for the configured node classes."""

from __future__ import annotations

import click

from vcluster.config import Config, load_config
from vcluster.errors import SlurmCommandError, UserInputError
from vcluster.slurmconf import HookPrograms, default_program_dir, generate
from vcluster.slurmconf import gres_conf as generate_gres_conf


@click.command("slurm-conf")
@click.option("--program-dir", metavar="DIR", default=None,
              help="Directory holding vcluster-resume, vcluster-suspend, ... "
              "[default: where pip installed them].")
@click.option("--slurm-version", metavar="X.Y", default=None,
              help="The Slurm the lines are for, e.g. 24.11: only parameters it accepts are "
              "written [default: the installed Slurm's, from `scontrol --version`].")
@click.option("--gres-conf", is_flag=True,
              help="Print the gres.conf lines of node classes with gres instead.")
@click.pass_context
def slurm_conf(ctx: click.Context, program_dir: str | None, slurm_version: str | None,
               gres_conf: bool) -> None:
    """Print the NodeName, PartitionName and power-saving lines to merge into slurm.conf.

    The lines come from the node classes in vcluster.toml; merge them into slurm.conf as
    slurm/README.md explains, then `scontrol reconfigure` (node changes need a restart).
    They are written for the installed Slurm (22.05 or later), or for --slurm-version.

    \b
    Example:
      vcluster --config /etc/vcluster/vcluster.toml slurm-conf > /etc/slurm/vcluster.conf
      echo 'Include /etc/slurm/vcluster.conf' >> /etc/slurm/slurm.conf
      vcluster slurm-conf --slurm-version 24.11   # for a Slurm not installed here
      vcluster slurm-conf --gres-conf > /etc/slurm/gres.conf   # classes with gres
    """
    config = load_config(ctx.obj.get("config_path") if ctx.obj else None)
    if gres_conf:
        click.echo(generate_gres_conf(config), nl=False)
        return
    programs = HookPrograms.in_dir(program_dir or default_program_dir())
    version = slurm_version or installed_slurm_version(config)
    click.echo(generate(config, programs, slurm_version=version), nl=False)


def installed_slurm_version(config: Config) -> str:
    """``24.11.5``: the Slurm in ``slurm.bin_dir``; refuses in one line if there is none."""
    from vcluster.slurm import Slurm

    try:
        return str(Slurm(config.slurm).version())
    except SlurmCommandError as exc:
        if exc.returncode is None and not exc.timed_out:
            raise UserInputError(
                f"no Slurm installed here (cannot run {exc.argv[0]}); say which Slurm the "
                "lines are for with --slurm-version, e.g. --slurm-version 24.11") from None
        raise UserInputError(f"cannot read the installed Slurm's version ({exc}); say which "
                             "Slurm the lines are for with --slurm-version") from None
