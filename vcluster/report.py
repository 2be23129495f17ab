"""What ``vcluster status`` and ``vcluster events`` show: one picture, as tables or JSON.

An admin asks "is the controller alive, what do my node classes look like, which job holds
which nodes and VMs, and what happened lately?". The answer joins the state database (the
controller's heartbeat, the job <-> node <-> VM map, the event log) with Slurm's own view of
the nodes (``sinfo``), so a disagreement between the two is visible at a glance.

Building the report is pure (rows, nodes and a clock in, dataclasses out) so it can be tested
on a real database without Slurm; rendering gives rich tables for people and plain JSON (ISO
times, ages in seconds) for scripts. A failed read of Slurm does not hide the database's view:
the report says what failed instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from vcluster import db
from vcluster.config import Config
from vcluster.one_vm import VM
from vcluster.report_leases import (
    ReservationStatus,
    SuspendedJob,
    build_reservations,
    build_suspended,
)
from vcluster.slurm import Node
from vcluster.slurm_parse import Job as SlurmJob
from vcluster.versions import SiteVersions
from vcluster.vm_events import Unscheduled, query_unscheduled

RECENT_JOBS_S = 3600.0
"""Finished jobs stay in ``vcluster status`` this long after they end, seconds."""
STATUS_EVENTS = 10
"""How many of the latest events ``vcluster status`` shows."""


# --- the report ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ControllerInstance:
    """One of several controllers sharing a PostgreSQL database (leading or standing by)."""

    host: str
    pid: int
    role: str
    since: datetime
    seen_age_s: float
    """Since it last rewrote its row, seconds; older than the heartbeat limit: gone."""


@dataclass(frozen=True)
class ControllerStatus:
    running: bool
    """A heartbeat exists and is younger than ``controller.heartbeat_stale_s``."""
    pid: int | None
    host: str
    version: str
    heartbeat_at: datetime | None
    heartbeat_age_s: float | None
    stale_after_s: float
    instances: tuple[ControllerInstance, ...] = ()
    """Every controller's row (with PostgreSQL; empty with SQLite), the leader first."""


@dataclass(frozen=True)
class ClassStatus:
    name: str
    policy: str
    partition: str
    template: str
    templates: tuple[str, ...]
    nodes: str
    """The class's node names as a hostlist."""
    count: int
    node_states: dict[str, int]
    """Slurm state label -> number of the class's nodes; ``hidden`` = not listed by sinfo."""
    open_launches: int


@dataclass(frozen=True)
class BackoffStatus:
    """A class's template OpenNebula cannot place: no new VM from it until the next probe."""

    node_class: str
    template: str
    level: int
    """Back-offs in a row without a placement."""
    cause: str
    reason: str
    since: datetime
    next_probe_at: datetime
    next_probe_in_s: float
    """Seconds until the probe VM may boot; 0 once it may (probing)."""


@dataclass(frozen=True)
class VmStatus:
    node_name: str
    node_class: str
    job_id: int | None
    vm_id: int | None
    launch_state: str
    """vcluster's launch state: requested, allocating, booting, up, terminating, ..."""
    slurm_state: str
    ip: str
    reason: str
    age_s: float
    """Since the launch was requested, seconds."""
    ended: bool


@dataclass(frozen=True)
class JobStatus:
    job_id: int
    user: str
    state: str
    node_class: str
    template: str
    nodes: str
    exit_code: int | None
    age_s: float
    """Since vcluster first saw the job, seconds."""
    vms: tuple[VmStatus, ...]


@dataclass(frozen=True)
class EventRow:
    at: datetime
    kind: str
    node_name: str | None
    job_id: int | None
    vm_id: int | None
    message: str


@dataclass(frozen=True)
class StatusReport:
    generated_at: datetime
    controller: ControllerStatus
    classes: tuple[ClassStatus, ...]
    jobs: tuple[JobStatus, ...]
    pool_vms: tuple[VmStatus, ...]
    """Open launches that serve no job (pool nodes, or a job the map no longer knows)."""
    events: tuple[EventRow, ...]
    slurm_error: str = ""
    """Why Slurm's node states are missing, if they are."""
    slurm_version: str = ""
    """The Slurm vcluster talks to (``24.11.5``); ``""`` if it could not be read."""
    opennebula_version: str = ""
    """The OpenNebula (oned) vcluster talks to (``7.4.0``); ``""`` if it could not be read."""
    opennebula_error: str = ""
    """Why oned's version is missing, if it is."""
    backoffs: tuple[BackoffStatus, ...] = ()
    """Templates of node classes backed off for want of capacity."""
    unscheduled: tuple[Unscheduled, ...] = ()
    """VMs that reached a state vcluster did not ask for (last day): seen, rule, recovery."""
    suspended_jobs: tuple[SuspendedJob, ...] = ()
    """Jobs Slurm suspended or vcluster holds VMs stopped for, with their VMs' states."""
    reservations: tuple[ReservationStatus, ...] = ()
    """Open reservations (and those over in the last hour) with their VMs."""
    vm_error: str = ""
    """Why OpenNebula's VM states are missing, if they are."""


def node_state_label(node: Node) -> str:
    """One word for a node's state, power-saving states first (``powering_up``, ``idle``)."""
    for flag, label in (("POWERING_UP", "powering_up"), ("POWERING_DOWN", "powering_down"),
                        ("POWERED_DOWN", "powered_down")):
        if flag in node.flags:
            return label
    if node.is_down:
        return "down"
    if node.is_drained:
        return "drained"
    if "NOT_RESPONDING" in node.flags:
        return "not_responding"
    return node.state.lower()


def _age_s(now: datetime, then: datetime | None) -> float:
    return 0.0 if then is None else max((now - then).total_seconds(), 0.0)


def controller_status(hb: db.Heartbeat | None, config: Config, now: datetime,
                      seen: Sequence[db.ControllerSeen] = ()) -> ControllerStatus:
    stale_after_s = config.controller.heartbeat_stale_s
    instances = tuple(ControllerInstance(c.host, c.pid, c.role, c.since, _age_s(now, c.seen_at))
                      for c in seen)
    if hb is None:
        return ControllerStatus(False, None, "", "", None, None, stale_after_s, instances)
    age_s = _age_s(now, hb.at)
    return ControllerStatus(age_s <= stale_after_s, hb.pid, hb.host, hb.version, hb.at, age_s,
                            stale_after_s, instances)


def build_status(
    session: Session,
    config: Config,
    nodes: Sequence[Node] | None,
    now: datetime,
    *,
    slurm_error: str = "",
    all_jobs: bool = False,
    event_limit: int = STATUS_EVENTS,
    versions: SiteVersions | None = None,
    slurm_jobs: Sequence[SlurmJob] | None = None,
    cloud_vms: Sequence[VM] | None = None,
    vm_error: str = "",
) -> StatusReport:
    """The whole picture from the database and Slurm's nodes (None if sinfo failed), with
    the versions of Slurm and OpenNebula if they were read, Slurm's jobs (None: the
    database's last view of them) and OpenNebula's VMs (None: their states unknown)."""
    by_name = {n.name: n for n in nodes or ()}
    job_query = select(db.Job).order_by(db.Job.job_id)
    if not all_jobs:
        job_query = job_query.where(or_(
            db.Job.ended_at.is_(None), db.Job.ended_at >= now - timedelta(seconds=RECENT_JOBS_S)))
    job_rows = session.scalars(job_query).all()
    shown_job_ids = {j.job_id for j in job_rows}
    launches = session.scalars(
        select(db.Launch).where(or_(db.Launch.ended_at.is_(None),
                                    db.Launch.job_id.in_(shown_job_ids)))
        .order_by(db.Launch.id)).all()
    open_by_class = Counter(la.node_class for la in launches if la.is_open)

    classes = []
    for nc in config.node_classes:
        states: Counter[str] = Counter()
        if nodes is not None:
            for name in nc.node_names():
                node = by_name.get(name)
                states[node_state_label(node) if node else "hidden"] += 1
        classes.append(ClassStatus(
            nc.name, nc.policy, nc.partition, nc.template, nc.templates, nc.hostlist, nc.count,
            dict(sorted(states.items())), open_by_class[nc.name]))

    suspended = {r.node_name: r for r in session.scalars(select(db.Suspension))}

    def vm(la: db.Launch) -> VmStatus:
        node = by_name.get(la.node_name)
        slurm_state = node_state_label(node) if node else ("" if nodes is None else "hidden")
        row = suspended.get(la.node_name) if la.is_open else None
        state = la.state if row is None or row.vm_id != la.vm_id else (
            f"{la.state} (VM {row.state}: job {row.job_id} suspended"
            + (f" for job {row.by_job})" if row.by_job is not None else ")"))
        return VmStatus(la.node_name, la.node_class, la.job_id, la.vm_id, state, slurm_state,
                        la.ip or "", la.reason, _age_s(now, la.created_at), not la.is_open)

    slurm_job_state = {j.job_id: j.state for j in slurm_jobs or ()}
    jobs = []
    for row in job_rows:
        vms = tuple(vm(la) for la in launches if la.job_id == row.job_id)
        # Slurm's word when it was read (SUSPENDED at once), else the controller's last view
        jobs.append(JobStatus(row.job_id, row.user, slurm_job_state.get(row.job_id, row.state),
                              row.node_class or "",
                              row.template or "", row.nodes, row.exit_code,
                              _age_s(now, row.first_seen), vms))
    pool_vms = tuple(vm(la) for la in launches
                     if la.is_open and (la.job_id is None or la.job_id not in shown_job_ids))
    return StatusReport(
        generated_at=now,
        controller=controller_status(db.heartbeat(session), config, now,
                                     db.controllers_seen(session)),
        classes=tuple(classes),
        jobs=tuple(jobs),
        pool_vms=pool_vms,
        events=tuple(query_events(session, limit=event_limit)),
        slurm_error=slurm_error,
        slurm_version=versions.slurm if versions else "",
        opennebula_version=versions.opennebula if versions else "",
        opennebula_error=versions.opennebula_error if versions else "",
        backoffs=tuple(
            BackoffStatus(b.node_class, b.template, b.level, b.cause, b.reason, b.since,
                          b.until, max(0.0, (b.until - now).total_seconds()))
            for b in session.scalars(select(db.ClassBackoff).order_by(
                db.ClassBackoff.node_class, db.ClassBackoff.template))),
        unscheduled=tuple(query_unscheduled(session, now)),
        suspended_jobs=build_suspended(
            session, slurm_jobs, launches, cloud_vms, by_name if nodes is not None else None,
            now, frozenset(n for nc in config.node_classes for n in nc.node_names())),
        reservations=build_reservations(session, launches, cloud_vms,
                                        by_name if nodes is not None else None, now,
                                        all_=all_jobs),
        vm_error=vm_error,
    )


def query_events(
    session: Session, *, job_id: int | None = None, node_name: str | None = None,
    vm_id: int | None = None, kind: str | None = None, reservation_id: int | None = None,
    limit: int = 50,
) -> list[EventRow]:
    """The latest ``limit`` events (oldest first), optionally of one job, node, VM, kind
    (``vm`` also matches ``vm.stop``) and/or reservation."""
    query = select(db.Event).order_by(db.Event.at.desc(), db.Event.id.desc()).limit(limit)
    if job_id is not None:
        query = query.where(db.Event.job_id == job_id)
    if node_name is not None:
        query = query.where(db.Event.node_name == node_name)
    if vm_id is not None:
        query = query.where(db.Event.vm_id == vm_id)
    if kind:
        prefix = kind.rstrip(".")
        query = query.where(or_(db.Event.kind == prefix,
                                db.Event.kind.startswith(prefix + ".", autoescape=True)))
    if reservation_id is not None:
        # a reservation's events name it first: "reservation 3: ...", "reservation 3 ..."
        query = query.where(db.Event.kind.startswith("reservation.")).where(or_(
            db.Event.message.startswith(f"reservation {reservation_id}:"),
            db.Event.message.startswith(f"reservation {reservation_id} ")))
    rows = session.scalars(query).all()
    return [EventRow(e.at, e.kind, e.node_name, e.job_id, e.vm_id, e.message)
            for e in reversed(rows)]


# --- JSON -------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def status_to_json(report: StatusReport) -> dict[str, Any]:
    return dict(_jsonable(asdict(report)))


def events_to_json(events: Sequence[EventRow]) -> list[dict[str, Any]]:
    return [dict(_jsonable(asdict(e))) for e in events]
