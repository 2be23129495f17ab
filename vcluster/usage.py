"""Usage accounting: VM-hours, core-hours and cost per job, user, account and node class.

Why it exists: a site that boots VMs for jobs is asked who used how much (and what it cost).
Every launch records its VM's CPUs, memory, template, host and lifetime (OpenNebula's STIME
and ETIME once the VM is gone; vcluster's clock before that), and every job row its Slurm
user and account, so the answer comes from vcluster's database alone.

One VM counts ``lifetime / 3600`` VM-hours and ``cpus * lifetime / 3600`` core-hours; a VM
still running counts up to ``now``. With ``since``, only the part of each VM's life after it
counts. A pool VM is charged to the job it was booted for (pool VMs booted without a job
are under job ``-``, user and account ``""``). Cost is the class's ``cost_per_hour`` times
VM-hours; None where no class has a cost. Launches from before accounting (no lifetime
recorded) are not counted.

Building the report is pure (rows, config and a clock in, dataclasses out); rendering gives
rich tables, JSON (hours to 6 decimals) or CSV (one row per group and key).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from vcluster import db
from vcluster.config import Config
from vcluster.errors import VclusterError

GROUPS = ("job", "user", "account", "class")
_RELATIVE = re.compile(r"^(\d+)\s*([dhm])$")
_UNIT_S = {"d": 86400, "h": 3600, "m": 60}


class BadTime(VclusterError):
    """A ``--since`` value that is neither a date, a time nor a span like ``7d``."""


def parse_since(text: str, now: datetime) -> datetime:
    """``2026-11-01``, ``2026-11-01T08:00`` (UTC unless an offset is given), or a span back
    from ``now``: ``7d``, ``12h``, ``30m``."""
    text = text.strip()
    relative = _RELATIVE.match(text)
    if relative:
        return now - timedelta(seconds=int(relative.group(1)) * _UNIT_S[relative.group(2)])
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise BadTime(f"--since {text!r} is not a time: give a date (2026-11-01), a time "
                      "(2026-11-01T08:00, UTC) or a span back from now (7d, 12h, 30m)") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


@dataclass(frozen=True)
class VmUsage:
    """One VM's share of the report."""

    job_id: int | None
    user: str
    account: str
    node_class: str
    cpus: int
    seconds: float
    cost_per_hour: float


@dataclass(frozen=True)
class UsageRow:
    """The sum over one job, user, account or class (``key``)."""

    key: str
    vms: int
    vm_hours: float
    core_hours: float
    cost: float | None


@dataclass(frozen=True)
class JobUsage:
    job_id: int | None
    user: str
    account: str
    node_class: str
    vms: int
    vm_hours: float
    core_hours: float
    cost: float | None


@dataclass(frozen=True)
class UsageReport:
    since: datetime | None
    until: datetime
    jobs: tuple[JobUsage, ...]
    users: tuple[UsageRow, ...]
    accounts: tuple[UsageRow, ...]
    classes: tuple[UsageRow, ...]
    total: UsageRow


def vm_usages(session: Session, config: Config, now: datetime, *, since: datetime | None = None,
              user: str | None = None, account: str | None = None) -> list[VmUsage]:
    """Every VM with a recorded lifetime that lived after ``since``, of ``user`` and
    ``account`` if given, with the seconds it lived (after ``since``, up to ``now``)."""
    query = (select(db.Launch, db.Job).outerjoin(db.Job, db.Job.job_id == db.Launch.job_id)
             .where(db.Launch.vm_started_at.is_not(None)).order_by(db.Launch.id))
    if since is not None:
        query = query.where(or_(db.Launch.vm_ended_at.is_(None), db.Launch.vm_ended_at > since))
    if user is not None:
        query = query.where(db.Job.user == user)
    if account is not None:
        query = query.where(db.Job.account == account)
    costs = {nc.name: nc.cost_per_hour for nc in config.node_classes}
    cpus_of = {nc.name: nc.cpus for nc in config.node_classes}
    out = []
    for launch, job in session.execute(query).all():
        assert launch.vm_started_at is not None
        start = max(launch.vm_started_at, since) if since else launch.vm_started_at
        end = min(launch.vm_ended_at or now, now)
        out.append(VmUsage(
            launch.job_id, job.user if job else "", job.account if job else "",
            launch.node_class, launch.cpus or cpus_of.get(launch.node_class, 0),
            max((end - start).total_seconds(), 0.0), costs.get(launch.node_class, 0.0)))
    return out


def _sum(key: str, vms: Sequence[VmUsage], charged: bool) -> UsageRow:
    vm_hours = sum(v.seconds for v in vms) / 3600
    return UsageRow(key, len(vms), vm_hours, sum(v.seconds * v.cpus for v in vms) / 3600,
                    sum(v.seconds * v.cost_per_hour for v in vms) / 3600 if charged else None)


def _by(vms: Iterable[VmUsage], key: str, charged: bool) -> tuple[UsageRow, ...]:
    groups: dict[str, list[VmUsage]] = {}
    for v in vms:
        groups.setdefault(str(getattr(v, key)), []).append(v)
    return tuple(_sum(k, groups[k], charged) for k in sorted(groups))


def summarize(vms: Sequence[VmUsage], *, since: datetime | None, until: datetime,
              charged: bool) -> UsageReport:
    """Sums per job (ordered by job id, VMs without a job last), user, account and class."""
    by_job: dict[int | None, list[VmUsage]] = {}
    for v in vms:
        by_job.setdefault(v.job_id, []).append(v)
    jobs = []
    for job_id in sorted(by_job, key=lambda j: (j is None, j or 0)):
        group = by_job[job_id]
        row = _sum(str(job_id), group, charged)
        classes = ",".join(sorted({v.node_class for v in group}))
        jobs.append(JobUsage(job_id, group[0].user, group[0].account, classes, row.vms,
                             row.vm_hours, row.core_hours, row.cost))
    return UsageReport(since, until, tuple(jobs), _by(vms, "user", charged),
                       _by(vms, "account", charged), _by(vms, "node_class", charged),
                       _sum("total", vms, charged))


def build_usage(session: Session, config: Config, now: datetime, *,
                since: datetime | None = None, user: str | None = None,
                account: str | None = None) -> UsageReport:
    charged = any(nc.cost_per_hour for nc in config.node_classes)
    vms = vm_usages(session, config, now, since=since, user=user, account=account)
    return summarize(vms, since=since, until=now, charged=charged)


# --- output -----------------------------------------------------------------------------------


def _hours(value: float) -> str:
    return f"{value:.3f}"


def _cost(value: float | None) -> str:
    """To the cent, halves up (0.125 -> 0.13), not binary floating point's way (0.12)."""
    if value is None:
        return "-"
    return str(Decimal(repr(round(value, 9))).quantize(Decimal("0.01"), ROUND_HALF_UP))


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_round(v) for v in value]
    return value


def usage_to_json(report: UsageReport) -> dict[str, Any]:
    return dict(_round(asdict(report)))


def usage_to_csv(report: UsageReport) -> str:
    """``by,key,vms,vm_hours,core_hours,cost``: every job, user, account, class, and total."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["by", "key", "vms", "vm_hours", "core_hours", "cost"])
    rows: list[tuple[str, UsageRow]] = [
        ("job", UsageRow("-" if j.job_id is None else str(j.job_id), j.vms, j.vm_hours,
                         j.core_hours, j.cost)) for j in report.jobs]
    rows += [("user", r) for r in report.users] + [("account", r) for r in report.accounts]
    rows += [("class", r) for r in report.classes] + [("total", report.total)]
    for by, r in rows:
        writer.writerow([by, r.key, r.vms, f"{r.vm_hours:.6f}", f"{r.core_hours:.6f}",
                         "" if r.cost is None else f"{r.cost:.6f}"])
    return out.getvalue()


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", box=None,
                  header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold",
                         justify="right" if column in ("VMS", "VM-HOURS", "CORE-HOURS", "COST")
                         else "left")
    return table


def render_usage(report: UsageReport, console: Console) -> None:
    charged = report.total.cost is not None
    money = ("COST",) if charged else ()
    span = (f"since {report.since:%Y-%m-%d %H:%M:%S}" if report.since else "all recorded VMs")
    console.print(f"usage: {span} until {report.until:%Y-%m-%d %H:%M:%S} UTC: "
                  f"{report.total.vms} VMs, {_hours(report.total.vm_hours)} VM-hours, "
                  f"{_hours(report.total.core_hours)} core-hours"
                  + (f", cost {_cost(report.total.cost)}" if charged else ""), markup=False)
    if not report.jobs:
        return
    jobs = _table("Jobs", "JOB", "USER", "ACCOUNT", "CLASS", "VMS", "VM-HOURS", "CORE-HOURS",
                  *money)
    for j in report.jobs:
        jobs.add_row("-" if j.job_id is None else str(j.job_id), escape(j.user or "-"),
                     escape(j.account or "-"), escape(j.node_class), str(j.vms),
                     _hours(j.vm_hours), _hours(j.core_hours), *((_cost(j.cost),) * charged))
    console.print()
    console.print(jobs)
    for title, column, rows in (("Users", "USER", report.users),
                                ("Accounts", "ACCOUNT", report.accounts),
                                ("Classes", "CLASS", report.classes)):
        table = _table(title, column, "VMS", "VM-HOURS", "CORE-HOURS", *money)
        for r in rows:
            table.add_row(escape(r.key or "-"), str(r.vms), _hours(r.vm_hours),
                          _hours(r.core_hours), *((_cost(r.cost),) * charged))
        console.print()
        console.print(table)
