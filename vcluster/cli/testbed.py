"""``vcluster testbed``: a whole site on one machine (local Slurm + the embedded cloud)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

from vcluster.cli.testbed_cloud import cloud_group
from vcluster.cli.testbed_slurm import slurm_group


@click.group()
def testbed() -> None:
    """Run a local Slurm, an OpenNebula-compatible cloud and the controller on this machine.

    \b
    Example:
      vcluster testbed up
      vcluster testbed status
      vcluster testbed down
    """


testbed.add_command(slurm_group)
testbed.add_command(cloud_group)


def _site_options(func: Callable[..., Any]) -> Callable[..., Any]:
    @click.option("--name", default="vc", show_default=True,
                  help="Instance name; prefixes the bridge, namespaces and node names.")
    @click.option("--state-dir", default="", metavar="DIR",
                  help="Where the site keeps everything "
                  "[default: /var/lib/vcluster-testbed/<name>].")
    @click.option("--subnet", default="10.111.0.0/24", show_default=True,
                  help="Bridge subnet shared by slurmctld and the VMs.")
    @click.option("--slurm-port", default=6817, show_default=True, type=int)
    @click.option("--one-port", default=2633, show_default=True, type=int,
                  help="Port of the OpenNebula XML-RPC API on 127.0.0.1 (up: if the "
                  "default is taken, e.g. by an oned, the next free one).")
    @click.option("--onegate-port", default=5030, show_default=True, type=int,
                  help="OneGate port on the bridge (up: if the default is taken, the next "
                  "free one).")
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper


def _spec(**kwargs: Any) -> Any:
    from vcluster.testbed.site import SiteSpec

    return SiteSpec(**kwargs)


def _slurm_root_for(release: str) -> str:
    """``--slurm``: "host" -> "" (the host's Slurm), else the root of that Slurm (built once)."""
    from vcluster.testbed import slurm_root

    if release in ("", "host"):
        return ""
    suites = {version: suite for suite, version in slurm_root.SUITE_SLURM.items()}
    suite = suites.get(release, release)
    if suite not in slurm_root.SUITE_SLURM:
        raise click.BadParameter(
            f"{release!r}: choose host, " + ", ".join(sorted(suites)) + " or a Debian release "
            "(" + ", ".join(sorted(slurm_root.SUITE_SLURM)) + ")", param_hint="--slurm")
    if suite == slurm_root.host_suite():
        return ""
    return slurm_root.build(suite, say=click.echo).path


@testbed.command("slurm-root")
@click.option("--suite", default="", metavar="RELEASE",
              help="Debian release whose Slurm to install [default: the other one than the "
              "host's: trixie (24.11) on Debian 12, bookworm (22.05) on Debian 13].")
def slurm_root_cmd(suite: str) -> None:
    """Build (once) a Debian root with another release's Slurm, for ``up --slurm``.

    \b
    Example:
      vcluster testbed slurm-root --suite trixie
    """
    from vcluster.testbed import slurm_root

    root = slurm_root.build(suite or None, say=click.echo)
    click.echo(f"{root.path}: Slurm {root.version()}")


@testbed.command("up")
@_site_options
@click.option("--slurm", "slurm_release", default="host", show_default=True,
              metavar="host|22.05|24.11",
              help="Which Slurm runs the site: the host's, or the other Debian release's "
              "from a root built once with debootstrap (its slurmctld chrooted there, its VMs "
              "booted from it as their image).")
def up_cmd(slurm_release: str, **kwargs: Any) -> None:
    """Start the local Slurm, the cloud (netns VMs) and the controller, in the background.

    Leftovers of an earlier run of the same instance are removed first.

    \b
    Example:
      vcluster testbed up
      export VCLUSTER_CONFIG=/var/lib/vcluster-testbed/vc/vcluster.toml
      export SLURM_CONF=/var/lib/vcluster-testbed/vc/slurm/slurm.conf
      fsub -N2 --wait --wrap 'srun hostname'
    """
    from vcluster.testbed import site

    # ports the user gave are kept (or refused, if taken); defaults move to free ones
    ctx = click.get_current_context()
    fixed = {name for name in ("one_port", "onegate_port")
             if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT,
                                                       ParameterSource.DEFAULT_MAP)}
    site.up(_spec(slurm_root=_slurm_root_for(slurm_release), **kwargs), say=click.echo,
            fixed_ports=fixed)


@testbed.command("down")
@_site_options
def down_cmd(**kwargs: Any) -> None:
    """Stop the controller, terminate every VM, stop the cloud and Slurm. Safe to run twice.

    \b
    Example:
      vcluster testbed down
    """
    from vcluster.testbed import site

    site.down(_spec(**kwargs), say=click.echo)
    click.echo("down")


@testbed.command("status")
@_site_options
def status_cmd(**kwargs: Any) -> None:
    """Show Slurm's daemons and nodes, the cloud server, the controller and the VMs.

    \b
    Example:
      vcluster testbed status
    """
    from vcluster.testbed import site

    spec = _spec(**kwargs)
    click.echo(site.format_status(spec, site.status(spec)))
