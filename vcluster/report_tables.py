"""``vcluster status`` and ``vcluster events`` as rich tables, for people.

Why a module of its own: :mod:`vcluster.report` builds the picture (pure: rows, nodes and a
clock in, dataclasses out) and gives its JSON for scripts; this renders it. Every line the
tables print is one line, for grep.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from rich.console import Console
from rich.table import Table
from rich.text import Text

from vcluster.report import (
    BackoffStatus,
    ControllerStatus,
    EventRow,
    StatusReport,
    VmStatus,
)
from vcluster.report_leases import reservation_notes, reservations_table, suspended_table
from vcluster.vm_events import unscheduled_lines


def format_age(age_s: float | None) -> str:
    """``42s``, ``3m05s``, ``2h07m``, ``4d03h``; ``-`` if unknown."""
    if age_s is None:
        return "-"
    s = int(age_s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _time(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S")


def _opt(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def controller_line(c: ControllerStatus) -> Text:
    if c.heartbeat_at is None:
        return Text("controller: never ran (no heartbeat); start `vcluster controller run`",
                    style="bold red")
    where = f"{c.host}, pid {c.pid}, version {c.version}"
    age = format_age(c.heartbeat_age_s)
    if c.running:
        return Text(f"controller: running ({where}), heartbeat {age} ago", style="green")
    return Text(f"controller: STALE ({where}), last heartbeat {age} ago "
                f"(limit {format_age(c.stale_after_s)}); hooks refuse until it runs",
                style="bold red")


def instance_lines(c: ControllerStatus) -> list[Text]:
    """``leader: host1 pid 10 since ...`` and ``standby: ...``, one line per controller."""
    lines = []
    for i in c.instances:
        since = i.since.strftime("%Y-%m-%d %H:%M:%S UTC")
        if i.seen_age_s > c.stale_after_s:
            lines.append(Text(f"  {i.role}: {i.host} pid {i.pid}, GONE (not seen for "
                              f"{format_age(i.seen_age_s)})", style="red"))
        elif i.role == "leader":
            lines.append(Text(f"  leader: {i.host} pid {i.pid}, leading since {since}",
                              style="green"))
        else:
            lines.append(Text(f"  standby: {i.host} pid {i.pid}, standing by since {since}, "
                              f"seen {format_age(i.seen_age_s)} ago"))
    return lines


def version_lines(report: StatusReport) -> list[Text]:
    """``versions: Slurm 24.11.5, OpenNebula 7.4.0``, and why one is missing."""
    if not (report.slurm_version or report.opennebula_version or report.opennebula_error):
        return []  # not read (a report built without them)
    slurm = report.slurm_version or "unknown"
    one = report.opennebula_version or "unknown"
    lines = [Text(f"versions: Slurm {slurm}, OpenNebula {one}")]
    if report.opennebula_error:
        lines.append(Text(f"opennebula: version unavailable: {report.opennebula_error}",
                          style="yellow"))
    return lines


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", box=None,
                  header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def plain_table(title: str, *columns: str) -> Table:
    """An empty table in the style of ``vcluster status`` (fill it with add_plain_row)."""
    return _table(title, *columns)


def add_plain_row(table: Table, *cells: str) -> None:
    """A row of plain text: oned's ``[one.template.instantiate]``, a user's job name or a
    Slurm reason is shown as written, never read as rich markup."""
    table.add_row(*(Text(cell) for cell in cells))


def vm_table(title: str, vms: Sequence[VmStatus]) -> Table:
    table = _table(title, "NODE", "CLASS", "JOB", "VM", "LAUNCH", "SLURM", "IP", "AGE", "REASON")
    for v in vms:
        add_plain_row(table, v.node_name, v.node_class, _opt(v.job_id), _opt(v.vm_id),
                      v.launch_state, _opt(v.slurm_state), _opt(v.ip), format_age(v.age_s),
                      v.reason)
    return table


def backoff_table(backoffs: Sequence[BackoffStatus]) -> Table:
    table = _table("Backed off (OpenNebula cannot place these templates)", "CLASS",
                   "TEMPLATE", "CAUSE", "SINCE", "NEXT PROBE", "REASON")
    for b in backoffs:
        probe = (f"in {format_age(b.next_probe_in_s)} ({_time(b.next_probe_at)})"
                 if b.next_probe_in_s > 0 else "probing now")
        add_plain_row(table, b.node_class, b.template, f"{b.cause} #{b.level}", _time(b.since),
                      probe, b.reason)
    return table


def events_table(title: str, events: Sequence[EventRow]) -> Table:
    table = _table(title, "TIME (UTC)", "KIND", "NODE", "JOB", "VM", "MESSAGE")
    for e in events:
        add_plain_row(table, _time(e.at), e.kind, _opt(e.node_name), _opt(e.job_id),
                      _opt(e.vm_id), e.message)
    return table


def render_status(report: StatusReport, console: Console) -> None:
    console.print(controller_line(report.controller))
    for line in instance_lines(report.controller):
        console.print(line)
    for line in version_lines(report):
        console.print(line)
    if report.slurm_error:
        console.print(Text(f"slurm: node states unavailable: {report.slurm_error}",
                           style="yellow"))
    if report.vm_error and (report.suspended_jobs or report.reservations):
        console.print(Text(f"opennebula: VM states unavailable: {report.vm_error}",
                           style="yellow"))
    console.print()
    classes = _table("Node classes", "CLASS", "POLICY", "PARTITION", "TEMPLATE", "NODES",
                     "VMS", "SLURM STATES")
    for c in report.classes:
        template = ", ".join((c.template, *c.templates))
        states = ", ".join(f"{k} {v}" for k, v in c.node_states.items()) or "-"
        add_plain_row(classes, c.name, c.policy, c.partition, template,
                      f"{c.nodes} ({c.count})", str(c.open_launches), states)
    console.print(classes)
    if report.backoffs:
        console.print()
        console.print(backoff_table(report.backoffs))
    console.print()
    jobs = _table("Jobs", "JOB", "USER", "STATE", "CLASS", "TEMPLATE", "NODES", "AGE", "EXIT")
    for j in report.jobs:
        add_plain_row(jobs, str(j.job_id), _opt(j.user), j.state, _opt(j.node_class),
                      _opt(j.template), _opt(j.nodes), format_age(j.age_s), _opt(j.exit_code))
    console.print(jobs if report.jobs else Text("Jobs: none", style="bold"))
    if report.suspended_jobs:
        console.print()
        console.print(suspended_table(report.suspended_jobs, report.generated_at))
    vms = [v for j in report.jobs for v in j.vms] + list(report.pool_vms)
    console.print()
    console.print(vm_table("VMs", vms) if vms else Text("VMs: none", style="bold"))
    if report.reservations:
        console.print()
        console.print(reservations_table(report.reservations))
        for note in reservation_notes(report.reservations):
            console.print(Text(note), soft_wrap=True)  # one line each, for grep
    console.print()
    console.print(events_table("Last events", report.events) if report.events
                  else Text("Last events: none", style="bold"))
    if report.unscheduled:
        console.print()
        console.print(Text("Unscheduled events (last day)", style="bold"))
        for text in unscheduled_lines(report.unscheduled, report.generated_at):
            console.print(Text(text), soft_wrap=True)  # one line each, for grep
