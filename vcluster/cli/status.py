"""``vcluster status`` and ``vcluster events``: the admin's view of the bridge.

Thin commands over :mod:`vcluster.report`: they open the state database read-only in
spirit (never migrating it), ask Slurm for its nodes once, and print tables or ``--json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from vcluster.config import Config, load_config
from vcluster.errors import VclusterError

if TYPE_CHECKING:  # SQLAlchemy and rich load only when a command runs (fsub imports vcluster.cli)
    from rich.console import Console
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

    from vcluster.one_vm import VM
    from vcluster.slurm import Job, Node
    from vcluster.versions import SiteVersions


def _config(ctx: click.Context) -> Config:
    return load_config((ctx.obj or {}).get("config_path"))


def _open_database(config: Config) -> Engine:
    """The existing database, at the current schema; never creates or migrates one."""
    from sqlalchemy.engine import make_url

    from vcluster import db

    url = make_url(config.database.url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        path = Path(url.database)
        try:
            exists = path.exists()
        except PermissionError:
            exists = True  # a directory above it is closed to this user: said below
        if not exists:
            raise db.DatabaseError(
                f"no database at {url.database}; start the controller "
                "(`vcluster controller run`) to create it, or fix database.url")
        if not (os.access(path, os.R_OK | os.W_OK) and os.access(path.parent, os.W_OK)):
            # SQLite in WAL mode writes beside the file even to read it.
            raise db.DatabaseError(
                f"permission denied: {url.database} can be read only by the controller's "
                "user; run this command as root or as that user (e.g. with sudo)")
    return db.make_engine(config.database, migrate=False)


def _site(config: Config) -> tuple[SiteVersions, list[Node] | None, str, list[Job] | None]:
    """The versions of Slurm and OpenNebula (refusing unsupported ones), Slurm's nodes
    (None with the reason if they cannot be read) and jobs (None if they cannot be read:
    the database's last view of them is shown)."""
    from dataclasses import replace

    from vcluster.one import OneClient
    from vcluster.slurm import Slurm
    from vcluster.versions import read_versions

    slurm = Slurm(config.slurm)
    # One attempt: an admin asking for the status should not wait out the backoff.
    one = OneClient(replace(config.opennebula, retry_delays_s=()))
    versions = read_versions(slurm, one)
    if versions.slurm_error:
        return versions, None, versions.slurm_error, None
    try:
        nodes = slurm.nodes()
    except VclusterError as exc:
        return versions, None, str(exc), None
    try:
        return versions, nodes, "", slurm.jobs()
    except VclusterError:
        return versions, nodes, "", None


def _vms(config: Config) -> tuple[list[VM] | None, str]:
    """The cluster's VMs as OpenNebula lists them (one attempt), or None and why not."""
    from dataclasses import replace

    from vcluster.one import OneClient

    one = OneClient(replace(config.opennebula, retry_delays_s=()))
    try:
        return one.vms(cluster=config.controller.cluster_name), ""
    except VclusterError as exc:
        return None, str(exc)


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (times ISO 8601 UTC, ages "
              "in seconds) instead of tables.")
@click.option("--all", "all_jobs", is_flag=True,
              help="Also show jobs and reservations that ended more than an hour ago.")
@click.pass_context
def status(ctx: click.Context, as_json: bool, all_jobs: bool) -> None:
    """Show the controller's heartbeat, the Slurm and OpenNebula versions, node classes,
    jobs with their VMs, suspended jobs, reservations, and last events.

    Node and job states come from Slurm (sinfo, or scontrol on 23.02+; squeue); launches,
    reservations and events from vcluster's database; VM states (a suspended job's VMs
    STOPPED, PENDING while resuming, RUNNING) from OpenNebula. A suspended job says who
    suspended it: vcluster, preempting it for a job of the preempt partition, or Slurm or
    an admin (scontrol suspend). A reservation is admitted, booting (its lead time), ready
    (k of N nodes working), active, ended, cancelled or refused. A node class's "hidden"
    nodes are powered-down CLOUD nodes that Slurm does not list (22.05's slurm.conf without
    PrivateData=cloud). A Slurm older than 22.05 or an OpenNebula older than 6.10 is
    refused.

    \b
    Example:
      vcluster status
      vcluster status --json | jq '.controller.running'
    """
    from vcluster import db
    from vcluster.report import build_status, status_to_json
    from vcluster.report_tables import render_status

    config = _config(ctx)
    engine = _open_database(config)
    try:
        versions, nodes, slurm_error, slurm_jobs = _site(config)
        vms, vm_error = _vms(config) if not versions.opennebula_error else (
            None, versions.opennebula_error)
        with db.session_factory(engine)() as session:
            report = build_status(session, config, nodes, db.utcnow(), slurm_error=slurm_error,
                                  all_jobs=all_jobs, versions=versions, slurm_jobs=slurm_jobs,
                                  cloud_vms=vms, vm_error=vm_error)
    finally:
        engine.dispose()
    standby = _standby(config, db.utcnow().timestamp())
    hosts = _hosts(config)
    if as_json:
        payload = status_to_json(report)
        if any(nc.standby for nc in config.node_classes):
            payload["standby_vms"] = standby
        payload.update({k: v for k, v in hosts.items() if v})  # only when there are some
        click.echo(json.dumps(payload, indent=2))
    else:
        render_status(report, _console())
        _print_standby(config, standby)
        for title, lines in (("Hosts out of service", hosts["hosts_out_of_service"]),
                             ("Migrations in flight", hosts["migrating"])):
            if lines:
                click.echo(f"\n{title}:\n" + "\n".join(f"  {line}" for line in lines))


def _hosts(config: Config) -> dict[str, list[str]]:
    """Drained (or down) hosts and VMs migrating (:func:`vcluster.host_drain.describe_hosts`);
    nothing if OpenNebula cannot be read (the versions line already says so)."""
    from dataclasses import replace

    from vcluster.host_drain import describe_hosts
    from vcluster.one import OneClient

    one = OneClient(replace(config.opennebula, retry_delays_s=()))
    try:
        return describe_hosts(one.host_capacities(),
                              one.vms(cluster=config.controller.cluster_name))
    except VclusterError:
        return {"hosts_out_of_service": [], "migrating": []}


def _standby(config: Config, now_s: float) -> list[dict[str, object]] | str:
    """The classes' standby VMs as OpenNebula lists them, or why they cannot be read; []
    without any class keeping standby VMs (no listing then)."""
    from dataclasses import replace

    from vcluster.controller.standby import describe
    from vcluster.one import OneClient

    if not any(nc.standby for nc in config.node_classes):
        return []
    one = OneClient(replace(config.opennebula, retry_delays_s=()))
    try:
        return describe(one.vms(cluster=config.controller.cluster_name), config, now_s)
    except VclusterError as exc:
        return str(exc)


def _print_standby(config: Config, standby: list[dict[str, object]] | str) -> None:
    from vcluster.report_tables import format_age

    kept = {nc.name: nc.standby for nc in config.node_classes if nc.standby}
    if not kept:
        return
    click.echo("")
    if isinstance(standby, str):
        click.echo(f"Standby VMs: cannot list them: {standby}")
        return
    have = {name: sum(1 for v in standby if v["node_class"] == name) for name in kept}
    click.echo("Standby VMs: " + ", ".join(f"class {name} {have[name]} of {k}"
                                           for name, k in kept.items()))
    for v in standby:
        age = v["age_s"]
        click.echo(f"  standby VM {v['vm_id']} of class {v['node_class']}: {v['state']}"
                   f"{', ready' if v['ready'] else ', booting'}, age "
                   f"{format_age(age if isinstance(age, float) else None)}")


PIPE_WIDTH = 200
"""Columns of a table written to a pipe or file (a terminal's own width is used otherwise):
wide enough that node names, IPs and messages stay on one line for grep and less."""


def _console() -> Console:
    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else PIPE_WIDTH)


@click.command("events")
@click.option("--job", "job_id", type=int, metavar="JOBID", help="Only events of this job.")
@click.option("--node", "node_name", metavar="NODE", help="Only events of this node.")
@click.option("-n", "--limit", type=click.IntRange(min=1), default=50, show_default=True,
              help="How many of the latest events.")
@click.option("--vm", "vm_id", type=int, metavar="VMID", help="Only events of this VM.")
@click.option("--kind", metavar="KIND", help="Only events of this kind, or of kinds starting "
              "KIND. (job, vm, reservation, node...).")
@click.option("--reservation", "reservation_id", type=int, metavar="ID",
              help="Only events of this reservation (see `vcluster reserve list`).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--unscheduled", is_flag=True, help="Only VMs that reached a state vcluster did "
              "not ask for (last day), one line each: what was seen, the rule of its node "
              "class, what was done, how long its job took to recover.")
@click.pass_context
def events(ctx: click.Context, job_id: int | None, node_name: str | None, vm_id: int | None,
           kind: str | None, reservation_id: int | None, limit: int, as_json: bool,
           unscheduled: bool) -> None:
    """Show what vcluster did and saw, oldest first (times in UTC).

    Suspensions and preemptions are job.preempt, vm.stop, vm.stopped, vm.restore,
    job.redeliver and job.resumed; reservations' are reservation.* (accepted, refused,
    power_up, ready, release, finish, cancelled).

    \b
    Example:
      vcluster events --job 42
      vcluster events --node vc-small-001 -n 20 --json
      vcluster events --vm 17 --kind vm
      vcluster events --reservation 3
      vcluster events --unscheduled
    """
    from vcluster import db
    from vcluster.report import events_to_json, query_events
    from vcluster.report_tables import events_table

    config = _config(ctx)
    engine = _open_database(config)
    try:
        with db.session_factory(engine)() as session:
            if unscheduled:
                _print_unscheduled(session, job_id, node_name, limit, as_json)
                return
            rows = query_events(session, job_id=job_id, node_name=node_name, vm_id=vm_id,
                                kind=kind, reservation_id=reservation_id, limit=limit)
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps(events_to_json(rows), indent=2))
    elif not rows:
        click.echo("no events" + (f" for job {job_id}" if job_id is not None else "")
                   + (f" for node {node_name}" if node_name else "")
                   + (f" for VM {vm_id}" if vm_id is not None else "")
                   + (f" of kind {kind}" if kind else "")
                   + (f" for reservation {reservation_id}" if reservation_id is not None
                      else ""))
    else:
        _console().print(events_table("Events", rows))


def _print_unscheduled(session: Session, job_id: int | None, node_name: str | None,
                       limit: int, as_json: bool) -> None:
    from vcluster import db
    from vcluster.vm_events import query_unscheduled, unscheduled_lines, unscheduled_to_json

    now = db.utcnow()
    found = [u for u in query_unscheduled(session, now, limit=10**6)
             if (job_id is None or u.job_id == job_id)
             and (node_name is None or u.node_name == node_name)][-limit:]
    if as_json:
        click.echo(json.dumps(unscheduled_to_json(found), indent=2))
    elif not found:
        click.echo("no unscheduled events in the last day")
    else:
        for line in unscheduled_lines(found, now):
            click.echo(line)
