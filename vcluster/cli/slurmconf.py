"""``vcluster slurm-conf``: print the slurm.conf lines for the configured node classes."""

from __future__ import annotations

import click

from vcluster.config import load_config
from vcluster.slurmconf import HookPrograms, default_program_dir, generate


@click.command("slurm-conf")
@click.option("--program-dir", metavar="DIR", default=None,
              help="Directory holding vcluster-resume, vcluster-suspend, ... "
              "[default: where pip installed them].")
@click.pass_context
def slurm_conf(ctx: click.Context, program_dir: str | None) -> None:
    """Print the NodeName, PartitionName and power-saving lines to merge into slurm.conf.

    The lines come from the node classes in vcluster.toml; merge them into slurm.conf as
    slurm/README.md explains, then `scontrol reconfigure` (node changes need a restart).

    \b
    Example:
      vcluster --config /etc/vcluster/vcluster.toml slurm-conf > /etc/slurm/vcluster.conf
      echo 'Include /etc/slurm/vcluster.conf' >> /etc/slurm/slurm.conf
    """
    config = load_config(ctx.obj.get("config_path") if ctx.obj else None)
    programs = HookPrograms.in_dir(program_dir or default_program_dir())
    click.echo(generate(config, programs), nl=False)
