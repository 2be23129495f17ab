"""``vcluster hook KIND ...``: run one of Slurm's hooks by hand, exactly as slurmctld would.

The installed programs (``vcluster-resume``, ``vcluster-prolog``...) are what slurm.conf
names; this command is the same code (:mod:`vcluster.hook_client`: the request goes to the
controller, or is recorded here when none takes it) for an admin who wants to replay or test
a hook.
"""

from __future__ import annotations

import os

import click

from vcluster import hook_client

HOOK_KINDS = ("resume", "suspend", "resume-fail", "prolog", "epilog", "job-finished")


@click.command("hook")
@click.argument("kind", type=click.Choice(HOOK_KINDS))
@click.argument("target", required=False, metavar="[HOSTLIST|JOBID]")
@click.option("--nodes", metavar="HOSTLIST",
              help="prolog/epilog: the job's nodes [default: $SLURM_JOB_NODELIST].")
@click.option("--exit-code", metavar="N", help="epilog: the job's exit code.")
@click.pass_context
def hook(ctx: click.Context, kind: str, target: str | None, nodes: str | None,
         exit_code: str | None) -> None:
    """Run hook KIND: resume|suspend|resume-fail HOSTLIST, prolog|epilog|job-finished JOBID.

    Exit codes: 0 done, 2 invalid input, 3 controller not running, 4 configuration error,
    5 other failure. Messages go to stderr and to <log_dir>/hooks.log.

    \b
    Examples:
      vcluster hook resume 'vc-small-[001-002]'
      vcluster hook prolog 12 --nodes 'vc-small-[001-002]'
      vcluster hook job-finished 12
    """
    environ = dict(os.environ)
    config_path = (ctx.obj or {}).get("config_path")
    if config_path:
        environ["VCLUSTER_CONFIG"] = config_path
    argv = ["vcluster-" + kind]
    if kind in ("prolog", "epilog"):
        if target is not None:
            environ["SLURM_JOB_ID"] = target
        if nodes is not None:
            environ["SLURM_JOB_NODELIST"] = nodes
        if exit_code is not None:
            environ["SLURM_JOB_EXIT_CODE"] = exit_code
    elif target is not None:
        argv.append(target)
    ctx.exit(hook_client.run(kind, argv, environ, argv0=_program_dir_hint()))


def _program_dir_hint() -> str:
    """argv0 whose directory holds the installed hook programs (for the strigger backup)."""
    import sysconfig

    return os.path.join(sysconfig.get_path("scripts"), "vcluster")


@click.command("hook-front")
@click.option("--out", "out_dir", required=True, metavar="DIR",
              help="Directory for the built program and its vcluster-<hook> links.")
@click.option("--python-dir", metavar="DIR", default=None,
              help="Directory of the installed Python hooks it hands unusual cases to "
              "[default: where pip installed vcluster's programs].")
@click.option("--cc", metavar="COMPILER", default=None, help="C compiler [default: $CC, cc].")
def hook_front(out_dir: str, python_dir: str | None, cc: str | None) -> None:
    """Build the C hook front: Slurm's hook programs at about 1 ms of CPU each.

    The Python hooks spend about 25 ms of CPU each starting Python; the front sends the
    same request to the controller and hands anything unusual (a config it cannot read
    plainly, no controller listening, a controller that did not record the request) to the
    Python hook of the same kind. Build it again after upgrading vcluster.

    \b
    Example:
      vcluster hook-front --out /usr/local/libexec/vcluster
      vcluster slurm-conf --program-dir /usr/local/libexec/vcluster > /etc/slurm/vcluster.conf
    """
    from vcluster import hook_front as front

    built = front.build(out_dir, python_dir=python_dir, cc=cc)
    click.echo(f"built {built / front.FRONT_NAME}; slurm.conf's programs: "
               f"vcluster slurm-conf --program-dir {built}")
