"""``vcluster testbed slurm up|down|status``: a real local Slurm with namespace nodes."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from vcluster.testbed.slurm_files import DEFAULT_NAME, DEFAULT_PORT, DEFAULT_SUBNET, TestbedSpec
from vcluster.testbed.slurm_local import down, format_status, status, up


def _instance_options(func: Callable[..., Any]) -> Callable[..., Any]:
    @click.option("--name", default=DEFAULT_NAME, show_default=True,
                  help="Instance name; prefixes its bridge (<name>br0), namespaces and nodes.")
    @click.option("--state-dir", default="", metavar="DIR",
                  help="slurm.conf, munge key, logs, pid files, spool "
                  "[default: /var/lib/vcluster-testbed/<name>].")
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper


def _known_spec(name: str, state_dir: str) -> TestbedSpec:
    """The spec ``up`` recorded for this instance, else one built from the name."""
    spec = TestbedSpec(name=name, state_dir=state_dir)
    try:
        recorded = TestbedSpec.from_json(spec.spec_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return spec
    return recorded if recorded.root == spec.root and recorded.name == name else spec


@click.group("slurm")
def slurm_group() -> None:
    """Local Slurm: munged, slurmctld and namespace nodes on a bridge.

    \b
    Example:
      vcluster testbed slurm up --static-nodes 2
      SLURM_CONF=/var/lib/vcluster-testbed/vc/slurm.conf sbatch -p static --wrap hostname
      vcluster testbed slurm down
    """


@slurm_group.command("up")
@_instance_options
@click.option("--subnet", default=DEFAULT_SUBNET, show_default=True,
              help="Bridge subnet; slurmctld listens on its first address.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=int,
              help="SlurmctldPort (slurmctld binds it on every address: one per instance).")
@click.option("--static-nodes", default=0, show_default=True, type=int, metavar="N",
              help="Namespace nodes <name>-s[1-N] in partition 'static'.")
@click.option("--config", "config_path", default="", metavar="PATH",
              help="vcluster.toml whose node classes become CLOUD nodes.")
@click.option("--program-dir", default="", metavar="DIR",
              help="Where to write the hook wrappers slurmctld runs [default: <state-dir>/bin].")
def up_cmd(name: str, state_dir: str, subnet: str, port: int, static_nodes: int,
           config_path: str, program_dir: str) -> None:
    """Install Slurm and munge if missing, start them, and wait until nodes are idle.

    Leftovers of a previous run of the same instance are cleared first; running `up` again
    with the same options leaves a running instance alone.

    \b
    Example:
      vcluster testbed slurm up --name vc --static-nodes 2 --config /etc/vcluster/vcluster.toml
    """
    spec = TestbedSpec(name=name, subnet=subnet, port=port, state_dir=state_dir,
                       static_nodes=static_nodes, config_path=config_path,
                       program_dir=program_dir)
    up(spec, say=click.echo)


@slurm_group.command("down")
@_instance_options
def down_cmd(name: str, state_dir: str) -> None:
    """Stop the instance's daemons by PID and remove its namespaces and bridge.

    Safe to run when nothing runs.

    \b
    Example:
      vcluster testbed slurm down --name vc
    """
    spec = _known_spec(name, state_dir)
    said: list[str] = []

    def say(line: str) -> None:
        said.append(line)
        click.echo(line)

    down(spec, say=say)
    if not said:
        click.echo(f"testbed {spec.name}: nothing to stop")


@slurm_group.command("status")
@_instance_options
@click.pass_context
def status_cmd(ctx: click.Context, name: str, state_dir: str) -> None:
    """Show the daemons (pid, running?), bridge, namespaces and `sinfo`.

    Exit status 0 when the instance is up, 3 when it is not.

    \b
    Example:
      vcluster testbed slurm status --name vc
    """
    st = status(_known_spec(name, state_dir))
    click.echo(format_status(st))
    if not st.running:
        ctx.exit(3)
