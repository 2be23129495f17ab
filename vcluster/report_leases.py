"""Suspended jobs and reservations in ``vcluster status``, each with its VMs' states.

Why it exists: a job Slurm suspended (``scontrol suspend``, its own preemption, or vcluster
preempting it for a ``preempt_partition`` job) and a reservation whose VMs boot ahead of its
start are leases on the cloud: what an admin asks of them is "where are its VMs, in what
OpenNebula state, and why". The answer joins Slurm's job states (SUSPENDED is Slurm's word),
vcluster's ``suspension`` and ``reservation`` rows (what it asked for, and for which job), the
launches (node -> VM) and OpenNebula's VM states (STOPPED, PENDING while a resume is placed,
RUNNING). Kept apart from :mod:`vcluster.report` (the rest of the picture) to keep both short;
building is pure over rows and listings, rendering gives rich tables of plain text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from rich.table import Table
from rich.text import Text
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from vcluster import db
from vcluster.controller.reserve_plan import working
from vcluster.one_vm import VM
from vcluster.slurm_parse import Job, Node, compress_hostlist, expand_hostlist

RECENT_S = 3600.0
"""Ended, cancelled or refused reservations stay in ``vcluster status`` this long, seconds."""
SLURM_ORIGIN = "Slurm or an admin (scontrol suspend)"
"""Who suspended a job vcluster did not suspend: it cannot tell ``scontrol suspend`` from
Slurm's own PreemptMode=SUSPEND."""


@dataclass(frozen=True)
class LeaseVm:
    """One node's VM of a suspended job or of a reservation."""

    node_name: str
    vm_id: int | None
    vm_state: str
    """OpenNebula's state name (``STOPPED``, ``PENDING``, ``RUNNING``...); ``""`` unknown."""
    host: str
    step: str
    """vcluster's side: a suspension's ``suspending``/``stopping``/``stopped``/``resuming``
    (``""``: vcluster has not stopped it), or a reservation VM's launch state."""
    slurm_state: str
    job_id: int | None
    reason: str = ""
    """Why its launch failed or ended, if it did (a reservation's VM that failed to boot)."""


@dataclass(frozen=True)
class SuspendedJob:
    job_id: int
    user: str
    partition: str
    slurm_state: str
    """Slurm's word for the job: ``SUSPENDED``; ``RUNNING`` while its VMs come back."""
    since: datetime | None
    """When Slurm suspended it (else when vcluster began to)."""
    suspended_s: float | None
    origin: str
    """``vcluster`` (it preempted the job) or ``slurm`` (``scontrol suspend``, Slurm's own
    preemption)."""
    by_job: int | None
    """The job vcluster preempted it for."""
    suspended_by: str
    """In words: ``preempted by job 13 (vcluster)`` or Slurm or an admin."""
    nodes: str
    vms: tuple[LeaseVm, ...]


@dataclass(frozen=True)
class ReservationStatus:
    reservation_id: int
    slurm_name: str
    node_class: str
    nodes: str
    node_count: int
    start: datetime
    end: datetime
    lead_s: float
    state: str
    """What it is now: ``admitted``, ``booting``, ``ready``, ``active``, ``ended``,
    ``cancelled`` or ``refused``."""
    working_nodes: int
    """Of its nodes, how many slurmd serves now (IDLE, ALLOCATED or MIXED)."""
    detail: str
    """The state in words: ``booting (lead 35 s, 1 of 2 nodes working)``."""
    reason: str
    """vcluster's admission decision (why it was refused, if it was)."""
    vms: tuple[LeaseVm, ...]


def _age(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else max(0.0, (now - then).total_seconds())


def _node_label(node: Node | None, read: bool) -> str:
    from vcluster.report import node_state_label  # report imports this module

    return node_state_label(node) if node else ("hidden" if read else "")


# --- suspended jobs ---------------------------------------------------------------------------


def suspended_by_text(by_job: int | None) -> str:
    return f"preempted by job {by_job} (vcluster)" if by_job is not None else SLURM_ORIGIN


def build_suspended(session: Session, slurm_jobs: Sequence[Job] | None,
                    launches: Sequence[db.Launch], vms: Sequence[VM] | None,
                    nodes: Mapping[str, Node] | None, now: datetime,
                    class_nodes: frozenset[str] = frozenset()) -> tuple[SuspendedJob, ...]:
    """Jobs Slurm has SUSPENDED on nodes of the classes (``class_nodes``) and jobs vcluster
    holds VMs stopped for (stopping them or bringing them back); with Slurm unread, the
    database's last view of the jobs."""
    rows: dict[int, list[db.Suspension]] = {}
    for r in session.scalars(select(db.Suspension).order_by(db.Suspension.node_name)):
        rows.setdefault(r.job_id, []).append(r)
    if slurm_jobs is not None:
        slurm_by_id = {j.job_id: j for j in slurm_jobs}
        ids = {j.job_id for j in slurm_jobs
               if j.state == "SUSPENDED" and class_nodes & set(j.nodes)}
    else:
        slurm_by_id = {}
        ids = set(session.scalars(select(db.Job.job_id).where(db.Job.state == "SUSPENDED")))
    vm_by_id = {v.vm_id: v for v in vms or ()}
    launch_by_node = {la.node_name: la for la in launches if la.is_open}
    out = []
    for job_id in sorted(ids | set(rows)):
        job = slurm_by_id.get(job_id)
        known = session.get(db.Job, job_id)
        mine = rows.get(job_id, [])
        by_node = {r.node_name: r for r in mine}
        names = list(job.nodes if job and job.nodes else ()) or sorted(by_node) or (
            expand_hostlist(known.nodes) if known and known.nodes else [])
        lease_vms = []
        for name in names:
            row, launch = by_node.get(name), launch_by_node.get(name)
            vm_id = row.vm_id if row else (launch.vm_id if launch else None)
            vm = vm_by_id.get(vm_id) if vm_id is not None else None
            lease_vms.append(LeaseVm(
                name, vm_id, vm.state_name if vm else "", vm.host if vm else "",
                row.state if row else "", _node_label((nodes or {}).get(name), nodes is not None),
                job_id))
        by_job = next((r.by_job for r in mine if r.by_job is not None), None)
        since = (datetime.fromtimestamp(job.suspend_time, UTC) if job and job.suspend_time
                 else min((r.created_at for r in mine), default=None))
        out.append(SuspendedJob(
            job_id, (job.user if job else "") or (known.user if known else ""),
            job.partition if job else "",
            job.state if job else (known.state if known else ""), since, _age(now, since),
            "vcluster" if by_job is not None else "slurm", by_job, suspended_by_text(by_job),
            compress_hostlist(names), tuple(lease_vms)))
    return tuple(out)


def suspension_reasons(session: Session) -> dict[str, str]:
    """A plain reason for each node whose VM vcluster stopped for a suspended job (what
    ``vcluster nodes`` shows instead of the DRAIN reason it gave Slurm)."""
    what = {"suspending": "to be stopped", "stopping": "stopping", "stopped": "stopped",
            "resuming": "resuming"}
    return {r.node_name: (f"job {r.job_id} preempted by vcluster for job {r.by_job}"
                          if r.by_job is not None else f"job {r.job_id} suspended by Slurm "
                          "or an admin") + f": VM {r.vm_id} {what.get(r.state, r.state)}, "
            "node drained until the job runs again"
            for r in session.scalars(select(db.Suspension))}


# --- reservations -----------------------------------------------------------------------------


def _reservation_state(r: db.Reservation, working_nodes: int, count: int,
                       now: datetime) -> tuple[str, str]:
    """(state, in words) of one reservation now."""
    have = f"{working_nodes} of {count} nodes working"
    if r.state == "refused":
        return "refused", "refused"
    if r.state == "cancelled":
        return "cancelled", "cancelled" if r.ended_at else "cancelled (powering its nodes down)"
    if r.state == "ended" or now >= r.end:
        return "ended", "ended" if r.ended_at else "ended (powering its nodes down)"
    if r.state == "accepted":
        boot_at = r.start - timedelta(seconds=r.lead_s)
        return "admitted", (f"admitted (boots at {boot_at:%H:%M:%S}, lead {r.lead_s:.0f} s)"
                            if now < boot_at else f"admitted (boot due, lead {r.lead_s:.0f} s)")
    if now >= r.start:
        return "active", f"active ({have})"
    if r.state == "booting":
        return "booting", f"booting (lead {r.lead_s:.0f} s, {have})"
    return "ready", f"ready ({have})"


def _reservation_launches(session: Session, r: db.Reservation, names: Sequence[str],
                          open_launches: Iterable[db.Launch]) -> list[db.Launch]:
    """The VMs of a reservation: its nodes' open launches while it lasts, and those started
    since it powered them up (until its end)."""
    if not names or r.state == "refused":
        return []
    found = {la.id: la for la in open_launches
             if la.node_name in names and r.ended_at is None and r.state != "accepted"}
    if r.powered_up_at is not None:
        until = r.ended_at or r.end
        for la in session.scalars(select(db.Launch).where(
                db.Launch.node_name.in_(names), db.Launch.created_at >= r.powered_up_at,
                db.Launch.created_at < until)):
            found.setdefault(la.id, la)
    return sorted(found.values(), key=lambda la: (la.node_name, la.id))


def build_reservations(session: Session, launches: Sequence[db.Launch],
                       vms: Sequence[VM] | None, nodes: Mapping[str, Node] | None,
                       now: datetime, *, all_: bool = False) -> tuple[ReservationStatus, ...]:
    """Open reservations, and those that ended, were cancelled or refused in the last hour
    (every one with ``all_``), by start time."""
    query = select(db.Reservation).order_by(db.Reservation.start, db.Reservation.id)
    if not all_:
        recent = now - timedelta(seconds=RECENT_S)
        query = query.where(or_(
            db.Reservation.ended_at >= recent,
            and_(db.Reservation.ended_at.is_(None), db.Reservation.state != "refused"),
            and_(db.Reservation.state == "refused", db.Reservation.created_at >= recent)))
    vm_by_id = {v.vm_id: v for v in vms or ()}
    out = []
    for r in session.scalars(query):
        names = expand_hostlist(r.nodes) if r.nodes else []
        count = len(names) or r.node_count
        up = sum(1 for n in names if working((nodes or {}).get(n)))
        state, detail = _reservation_state(r, up, count, now)
        lease_vms = []
        for la in _reservation_launches(session, r, names, launches):
            vm = vm_by_id.get(la.vm_id) if la.vm_id is not None and la.is_open else None
            lease_vms.append(LeaseVm(
                la.node_name, la.vm_id, vm.state_name if vm else "",
                (vm.host if vm else la.host) or "", la.state,
                _node_label((nodes or {}).get(la.node_name), nodes is not None), la.job_id,
                la.reason))
        out.append(ReservationStatus(
            r.id, r.slurm_name, r.node_class, r.nodes, r.node_count, r.start, r.end, r.lead_s,
            state, up, detail, r.reason, tuple(lease_vms)))
    return tuple(out)


# --- tables -----------------------------------------------------------------------------------


def _cells(*cells: str) -> list[Text]:
    return [Text(c) for c in cells]  # plain text: never read as rich markup


def _vm_cells(v: LeaseVm | None) -> list[str]:
    if v is None:
        return ["-", "-", "-", "-"]
    return [v.node_name, "-" if v.vm_id is None else str(v.vm_id), v.vm_state or "-",
            v.step or "-"]


def suspended_table(jobs: Sequence[SuspendedJob], now: datetime) -> Table:
    """One row per VM; the job's columns on its first row."""
    from vcluster.report_tables import format_age, plain_table  # it imports this module

    table = plain_table("Suspended jobs", "JOB", "USER", "PARTITION", "SLURM", "SUSPENDED",
                        "BY", "NODE", "VM", "VM STATE", "VCLUSTER")
    for j in jobs:
        since = (f"{j.since:%H:%M:%S} ({format_age(j.suspended_s)} ago)" if j.since
                 else "-")
        head = [str(j.job_id), j.user or "-", j.partition or "-", j.slurm_state or "-",
                since, j.suspended_by]
        for i, v in enumerate(j.vms or (None,)):
            table.add_row(*_cells(*(head if i == 0 else [""] * len(head)), *_vm_cells(v)))
    return table


def reservations_table(reservations: Sequence[ReservationStatus]) -> Table:
    """One row per VM; the reservation's columns on its first row (times UTC)."""
    from vcluster.report_tables import plain_table  # it imports this module

    table = plain_table("Reservations", "ID", "NAME", "CLASS", "NODES", "START (UTC)", "END",
                        "STATE", "NODE", "VM", "VM STATE", "LAUNCH")
    for r in reservations:
        head = [str(r.reservation_id), r.slurm_name or "-", r.node_class,
                f"{r.nodes or '-'} ({r.node_count})", f"{r.start:%Y-%m-%d %H:%M:%S}",
                f"{r.end:%H:%M:%S}", r.detail]
        for i, v in enumerate(r.vms or (None,)):
            table.add_row(*_cells(*(head if i == 0 else [""] * len(head)), *_vm_cells(v)))
    return table


def reservation_notes(reservations: Sequence[ReservationStatus]) -> list[str]:
    """One line per reason worth reading under the table: a refusal, a boot that failed
    (the reservation's and its VM's), a cancellation while jobs ran."""
    lines = []
    for r in reservations:
        if r.reason and not r.reason.startswith("accepted"):
            lines.append(f"reservation {r.reservation_id}: {r.reason}")
        lines += [f"reservation {r.reservation_id}: {v.node_name} VM {v.vm_id} {v.step}: "
                  f"{v.reason}" for v in r.vms if v.reason]
    return lines
