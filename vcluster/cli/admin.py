"""Admin commands: ``vcluster nodes``, ``drain``, ``undrain``, ``terminate``, ``cleanup``.

Thin click commands over :mod:`vcluster.admin` and :mod:`vcluster.cleanup`: each reads what
it needs (the database, Slurm, OpenNebula), calls one library function, prints a table or
``--json``, and wakes the controller when it changed something.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

import click

from vcluster.cli.status import _config, _console, _open_database
from vcluster.config import Config
from vcluster.errors import VclusterError

if TYPE_CHECKING:
    from vcluster.one import OneClient
    from vcluster.slurm import Slurm


def _slurm(config: Config) -> Slurm:
    from vcluster.slurm import Slurm

    return Slurm(config.slurm)


def _one(config: Config) -> OneClient:
    from vcluster.one import OneClient

    # One attempt: an admin at a terminal should not wait out the controller's backoff.
    return OneClient(replace(config.opennebula, retry_delays_s=()))


def _wake(config: Config) -> None:
    from vcluster.wake import send_wake

    send_wake(config.controller.state_dir)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.command("nodes")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (ages in seconds).")
@click.pass_context
def nodes(ctx: click.Context, as_json: bool) -> None:
    """Show every node of every class: Slurm state, VM, host, age, job and reason.

    SLURM is Slurm's state ("hidden": Slurm does not list it, as 22.05 hides powered-down
    CLOUD nodes); STATE is OpenNebula's state of the node's VM; AGE counts from its launch.

    \b
    Example:
      vcluster nodes
      vcluster nodes --json | jq '.nodes[] | select(.vm_id != null)'
    """
    from vcluster import db
    from vcluster.admin import build_nodes, read_drains
    from vcluster.report_leases import suspension_reasons
    from vcluster.report_tables import add_plain_row, format_age, plain_table

    config = _config(ctx)
    engine = _open_database(config)
    slurm_error = one_error = ""
    try:
        slurm_nodes = _slurm(config).nodes()
    except VclusterError as exc:
        slurm_nodes, slurm_error = None, str(exc)
    try:
        vms = _one(config).vms(cluster=config.controller.cluster_name)
    except VclusterError as exc:
        vms, one_error = None, str(exc)
    try:
        with db.session_factory(engine)() as session:
            rows = build_nodes(config, slurm_nodes, vms, db.open_launches(session),
                               read_drains(session), db.utcnow(), suspension_reasons(session))
    finally:
        engine.dispose()
    if as_json:
        _echo_json({"nodes": [dict(asdict(r), age_s=None if r.age_s is None
                                   else round(r.age_s, 3)) for r in rows],
                    "slurm_error": slurm_error, "opennebula_error": one_error})
        return
    console = _console()
    for side, error in (("slurm", slurm_error), ("opennebula", one_error)):
        if error:
            click.echo(f"{side}: unavailable: {error}")
    table = plain_table("Nodes", "NODE", "CLASS", "SLURM", "VM", "STATE", "HOST", "AGE", "JOB",
                   "REASON")
    for r in rows:
        add_plain_row(table, r.name, r.node_class, r.slurm_state or "-",
                      "-" if r.vm_id is None else str(r.vm_id), r.vm_state or "-",
                      r.host or "-", format_age(r.age_s),
                      "-" if r.job_id is None else str(r.job_id), r.reason)
    console.print(table)


@click.command("drain")
@click.argument("target", metavar="CLASS|NODE")
@click.option("--reason", default="", help="Why (shown in Slurm's reason and the events).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def drain(ctx: click.Context, target: str, reason: str, as_json: bool) -> None:
    """Take a node class or one node out of service: no new VMs for it; running jobs finish.

    Slurm gets DRAIN with the reason "vcluster drain: REASON (by USER)" so it picks other
    nodes; the drain is recorded in vcluster's database, and the controller keeps it (no VM
    for a drained node no job holds, DRAIN set again if it is lost) until `vcluster undrain`.

    \b
    Example:
      vcluster drain small --reason "template update"
      vcluster drain vc-small-003 --reason "bad host"
    """
    _drain_command(ctx, target, reason, as_json, undo=False)


@click.command("undrain")
@click.argument("target", metavar="CLASS|NODE")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def undrain(ctx: click.Context, target: str, as_json: bool) -> None:
    """Return a drained node class or node to service (lifts Slurm's DRAIN).

    \b
    Example:
      vcluster undrain small
    """
    _drain_command(ctx, target, "", as_json, undo=True)


def _drain_command(ctx: click.Context, target: str, reason: str, as_json: bool,
                   *, undo: bool) -> None:
    from vcluster import admin, db

    config = _config(ctx)
    engine = _open_database(config)
    try:
        sessions = db.session_factory(engine)
        slurm, by, now = _slurm(config), admin.admin_name(), db.utcnow()
        result = (admin.undrain(sessions, slurm, config, target, by=by, now=now) if undo
                  else admin.drain(sessions, slurm, config, target, reason, by=by, now=now))
    finally:
        engine.dispose()
    _wake(config)
    if as_json:
        _echo_json(asdict(result))
        return
    verb = "undrained" if undo else "drained"
    click.echo(f"{result.kind} {target} {verb}: {result.nodes}"
               + ("" if undo else f" ({result.reason})"))
    if result.slurm_error:
        click.echo(f"Slurm not told yet ({result.slurm_error}); the controller will tell it")


@click.command("terminate")
@click.argument("target", metavar="NODE|VM")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (needs --yes).")
@click.pass_context
def terminate(ctx: click.Context, target: str, yes: bool, as_json: bool) -> None:
    """Terminate a node's VM (or a VM by id): Slurm requeues the node's job.

    The node is set DOWN with the reason "vcluster: VM N terminated by USER" before the VM is
    terminated; the controller closes its launch once the VM is gone and returns the node to
    service.

    \b
    Example:
      vcluster terminate vc-small-003
      vcluster terminate 42 --yes
    """
    from vcluster import admin, db

    if as_json and not yes:
        raise click.UsageError("--json needs --yes (there is no one to ask)")
    config = _config(ctx)
    engine = _open_database(config)
    try:
        one = _one(config)
        vms = one.vms(cluster=config.controller.cluster_name)
        sessions = db.session_factory(engine)
        with sessions() as session:
            found = admin.find_vm(config, session, vms, target)
        if not yes:
            job = f", job {found.job_id}" if found.job_id is not None else ""
            host = f" on {found.host}" if found.host else ""
            node = found.node_name or "no node"
            click.confirm(f"Terminate VM {found.vm_id} ({node}{job}, {found.vm_state}{host})?",
                          abort=True)
        message = admin.terminate(sessions, _slurm(config), one, found,
                                  by=admin.admin_name(), now=db.utcnow())
    finally:
        engine.dispose()
    _wake(config)
    if as_json:
        _echo_json(dict(asdict(found), message=message))
    else:
        click.echo(message)


@click.command("cleanup")
@click.option("-n", "--dry-run", is_flag=True, help="Only say what would be done.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def cleanup(ctx: click.Context, dry_run: bool, as_json: bool) -> None:
    """Remove leftovers: orphan VMs of this cluster, launches whose VM is gone or never came,
    hook requests Slurm gave up on long ago.

    \b
    Example:
      vcluster cleanup --dry-run
      vcluster cleanup
    """
    from sqlalchemy import select

    from vcluster import admin, db
    from vcluster.cleanup import find_leftovers, remove

    config = _config(ctx)
    engine = _open_database(config)
    try:
        one = _one(config)
        vms = one.vms(cluster=config.controller.cluster_name)  # before the database: see cleanup
        sessions = db.session_factory(engine)
        now = db.utcnow()
        with sessions() as session:
            leftovers = find_leftovers(
                config, vms, db.open_launches(session), session.scalars(
                    select(db.HookRequest).where(db.HookRequest.handled_at.is_(None))).all(),
                now)
        errors = {} if dry_run else {
            i: remove(item, sessions, one, by=admin.admin_name(), now=now)
            for i, item in enumerate(leftovers)}
    finally:
        engine.dispose()
    if leftovers and not dry_run:
        _wake(config)
    if as_json:
        _echo_json({"dry_run": dry_run, "leftovers": [
            dict(asdict(item), done=not dry_run and not errors[i],
                 error=errors.get(i, "")) for i, item in enumerate(leftovers)]})
        return
    for i, item in enumerate(leftovers):
        if dry_run:
            click.echo(f"would {item.action} {item.what}: {item.why}")
        elif errors[i]:
            click.echo(f"could not {item.action} {item.what}: {errors[i]}")
        else:
            click.echo(f"{_done(item.action)} {item.what}: {item.why}")
    if not leftovers:
        click.echo("nothing to clean up")
    failed = sum(1 for e in errors.values() if e)
    if failed:
        ctx.exit(1)


def _done(action: str) -> str:
    return {"terminate": "terminated", "close": "closed", "mark handled": "marked handled"}[
        action]
