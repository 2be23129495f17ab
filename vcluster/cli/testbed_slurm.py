"""``vcluster testbed slurm``: the local Slurm (being written)."""

import click


@click.group("slurm")
def slurm_group() -> None:
    """Local Slurm: slurmctld, munge and namespace nodes on a bridge."""
