"""``vcluster testbed cloud``: the OpenNebula-compatible server (being written)."""

import click


@click.group("cloud")
def cloud_group() -> None:
    """The embedded OpenNebula-compatible cloud."""
