"""Host maintenance commands: ``vcluster drain-host`` and ``undrain-host``.

Thin click commands over :mod:`vcluster.host_drain`: read OpenNebula's hosts and VMs and
Slurm's jobs, disable the host and move its VMs, print one line per VM or ``--json``, and
wake the controller (it closes the launches of requeued jobs and boots replacements).
"""

from __future__ import annotations

from dataclasses import asdict

import click

from vcluster.cli.admin import _echo_json, _one, _slurm, _wake
from vcluster.cli.status import _config, _open_database

_VERBS = {"live-migrate": "live-migrated", "migrate": "migrated (cold)",
          "requeue": "job requeued", "terminate": "terminated", "replace": "replaced"}


@click.command("drain-host")
@click.argument("host", metavar="HOST")
@click.option("-n", "--dry-run", is_flag=True, help="Only say what would be done.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def drain_host(ctx: click.Context, host: str, dry_run: bool, as_json: bool) -> None:
    """Empty an OpenNebula host for maintenance: no new VMs there, running jobs moved.

    The host is DISABLED in OpenNebula. Each job's VM on it migrates live to the enabled
    host with the most free CPU that has room (a suspended job's VM migrates cold); where
    none has room or OpenNebula refuses, the job is requeued with the reason "vcluster: host
    HOST drained for maintenance" and runs again elsewhere. Standby VMs are replaced.
    `vcluster undrain-host HOST` enables the host again.

    \b
    Example:
      vcluster drain-host host0 --dry-run
      vcluster drain-host host0
    """
    from vcluster import admin, db, host_drain

    config = _config(ctx)
    engine = _open_database(config)
    try:
        result = host_drain.drain_host(
            db.session_factory(engine), _slurm(config), _one(config),
            config.controller.cluster_name, host, by=admin.admin_name(), now=db.utcnow(),
            dry_run=dry_run)
    finally:
        engine.dispose()
    if not dry_run:
        _wake(config)
    if as_json:
        _echo_json(asdict(result))
        return
    would = "would be " if dry_run else ""
    click.echo(f"host {result.host} {'would be ' if dry_run else ''}disabled: "
               f"{len(result.moves)} VM(s) of this cluster on it")
    for m in result.moves:
        who = m.node_name or "standby"
        job = f", job {m.job_id}" if m.job_id is not None else ""
        to = f" to {m.to_host}" if m.to_host else ""
        why = f" ({m.why})" if m.why else ""
        error = f"; failed: {m.error}" if m.error else ""
        click.echo(f"  VM {m.vm_id} ({who}{job}, {m.vm_state}): {would}{_VERBS[m.action]}"
                   f"{to}{why}{error}")


@click.command("undrain-host")
@click.argument("host", metavar="HOST")
@click.pass_context
def undrain_host(ctx: click.Context, host: str) -> None:
    """Enable a drained OpenNebula host again: new VMs may be placed on it.

    \b
    Example:
      vcluster undrain-host host0
    """
    from vcluster import admin, db, host_drain

    config = _config(ctx)
    engine = _open_database(config)
    try:
        found = host_drain.undrain_host(db.session_factory(engine), _one(config), host,
                                        by=admin.admin_name(), now=db.utcnow())
    finally:
        engine.dispose()
    click.echo(f"host {found.name} enabled: OpenNebula places new VMs on it again")
