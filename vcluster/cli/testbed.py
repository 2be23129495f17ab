"""``vcluster testbed``: a whole site on one machine (local Slurm + the embedded cloud)."""

from __future__ import annotations

import click

from vcluster.cli.testbed_cloud import cloud_group
from vcluster.cli.testbed_slurm import slurm_group


@click.group()
def testbed() -> None:
    """Run a local Slurm and an OpenNebula-compatible cloud on this machine.

    \b
    Example:
      vcluster testbed slurm up
    """


testbed.add_command(slurm_group)
testbed.add_command(cloud_group)
