"""Observe: one consistent picture of the database, Slurm and OpenNebula, or none at all.

Why it exists: the planner must never act on half a picture (a VM missing from a failed
listing would look like an orphan's absence; a node missing from a failed ``sinfo`` would
look powered down). So every read happens here, in a fixed order, and any failure raises
:class:`PictureIncomplete`, which makes the loop skip the pass.

Order matters: the database is read first, then Slurm (its nodes, then its jobs) and
OpenNebula's VMs at the same time, Slurm on a thread of its own. A launch or hook request in
the picture therefore existed before Slurm was read, so Slurm's node states already reflect
it; and every VM the controller booted before this pass is in the listing. Between Slurm and
OpenNebula no order holds anyway (a VM may change while Slurm is read, and the other way
round), so the plan relies on none: reading them together saves a pass the shorter of the
two waits. Slurm's two reads stay one after the other: parsed at the same time, the jobs and
the nodes of 10,000 nodes (24.11's JSON) took 111 MB at peak instead of 81 MB, and the
pass must stay under 150 MB; OpenNebula's listing is streamed and adds little beside them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from vcluster import db
from vcluster.config import Config
from vcluster.controller.boot_rate import boot_window_s
from vcluster.controller.ports import OnePort, SlurmPort
from vcluster.errors import VclusterError
from vcluster.one_vm import VM
from vcluster.slurm_parse import Job, Node, expand_hostlist

log = logging.getLogger(__name__)

BOOT_EVENT = "vm.allocating"
"""The event act records as it sends a VM allocation: the boot-rate limit counts them."""
BOOT_EVENTS = (BOOT_EVENT, "vm.standby_booted", "vm.early_booted")
"""Every allocation's event (a job's VM, a standby VM, a VM booted at allocation)."""
UNPLACEABLE_EVENT = "node.unplaceable"
"""The event of a node given back because OpenNebula could not place its class's VM."""
EARLY_FAILED_EVENT = "vm.early_failed"
"""The event of a VM booted at its job's allocation that failed before its node was handed
it: a failed VM of that job (counted towards its hold) though it had no launch."""

CONTROLLER_DOWN_WHY = "the controller was not running when Slurm asked for its nodes"
"""Why a job was requeued whose resume the hook refused (no controller)."""
JOB_MEMORY_S = 86400.0
"""Ended job rows this recent are compared with squeue (Slurm keeps ended jobs MinJobAge)."""


class PictureIncomplete(VclusterError):
    """A read failed; the pass is skipped rather than acting on half a picture."""

    temporary = True


@dataclass(frozen=True)
class LaunchView:
    """An open row of the launch map, as read at the start of the pass."""

    id: int
    node_name: str
    node_class: str
    job_id: int | None
    vm_id: int | None
    state: str
    ip: str | None
    reason: str
    attempts: int
    created_at: datetime
    updated_at: datetime
    template: str | None = None

    @classmethod
    def of(cls, row: db.Launch) -> LaunchView:
        return cls(row.id, row.node_name, row.node_class, row.job_id, row.vm_id, row.state,
                   row.ip, row.reason, row.attempts, row.created_at, row.updated_at,
                   row.template)


@dataclass(frozen=True)
class RequestView:
    """An unhandled hook request."""

    id: int
    kind: str
    nodes: tuple[str, ...]
    job_ids: tuple[int, ...]
    payload: Mapping[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class JobRecord:
    """A job row vcluster keeps, not yet ended."""

    job_id: int
    state: str
    nodes: str
    template: str | None
    ended: bool = False


@dataclass(frozen=True)
class DrainView:
    """A node class or node an admin drained (``vcluster drain``)."""

    target: str
    kind: str
    reason: str
    by: str


@dataclass(frozen=True)
class BackoffView:
    """A class's template OpenNebula could not place (the ``class_backoff`` table)."""

    node_class: str
    template: str
    level: int
    cause: str
    reason: str
    since: datetime
    until: datetime


@dataclass(frozen=True)
class SuspensionView:
    """A VM vcluster stopped (or is stopping, or bringing back) for its suspended job."""

    node_name: str
    job_id: int
    vm_id: int
    by_job: int | None
    state: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Observed:
    """Everything one pass of the planner looks at."""

    now: datetime
    jobs: Mapping[int, Job] = field(default_factory=dict)
    nodes: Mapping[str, Node] = field(default_factory=dict)
    """This config's nodes that Slurm shows (powered-down CLOUD nodes may be hidden)."""
    vms: Mapping[int, VM] = field(default_factory=dict)
    """VMs not DONE tagged ``VCLUSTER_CLUSTER`` = this cluster."""
    host_states: Mapping[str, str] = field(default_factory=dict)
    """OpenNebula's hosts: {name: state name}; empty when the user may not list them."""
    launches: tuple[LaunchView, ...] = ()
    requests: tuple[RequestView, ...] = ()
    last_resume_at: Mapping[str, datetime] = field(default_factory=dict)
    """Per node, when Slurm last asked to resume it (recent requests, handled or not)."""
    last_failure_at: Mapping[str, datetime] = field(default_factory=dict)
    """Per node, when its last launch failed (recent ones)."""
    last_served_at: Mapping[str, datetime] = field(default_factory=dict)
    """Per node, when its last launch for a job ended with its job (recent ones)."""
    failed_jobs: Mapping[int, datetime] = field(default_factory=dict)
    requeue_why: Mapping[int, str] = field(default_factory=dict)
    """Why Slurm requeued a job of ``failed_jobs`` whose VM did not fail (its resume refused
    while the controller was down, its class unplaceable), in a few words."""
    """Per job, when a launch for it last failed (recent ones): Slurm requeued it."""
    job_failures: Mapping[int, tuple[int, str]] = field(default_factory=dict)
    """Per job, how many of its launches failed recently, and the last reason."""
    known_jobs: Mapping[int, JobRecord] = field(default_factory=dict)
    """Job rows not ended, or ended within JOB_MEMORY_S."""
    read_s: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """How long the reads took, seconds: the database, Slurm, OpenNebula (its VMs; Slurm's
    and OpenNebula's overlap)."""
    drains: Mapping[str, DrainView] = field(default_factory=dict)
    """Drained node classes and nodes, by class or node name."""
    backoffs: Mapping[tuple[str, str], BackoffView] = field(default_factory=dict)
    """Backed-off templates, by (node class, template)."""
    recent_boots: tuple[tuple[datetime, str], ...] = ()
    """(when, node class) of every VM allocation sent within the boot-rate window."""
    suspensions: Mapping[str, SuspensionView] = field(default_factory=dict)
    """VMs vcluster stopped for suspended jobs, by node name."""


def read_database(session: Session, config: Config, now: datetime) -> dict[str, Any]:
    """The database part of the picture (one read transaction)."""
    window_start = now - timedelta(seconds=config.controller.resume_timeout_s * 2)
    L = db.Launch  # noqa: N806 - columns, not ORM objects: a pass reads 4,000 rows at 10,000 nodes
    launches = tuple(LaunchView(*row) for row in session.execute(
        select(L.id, L.node_name, L.node_class, L.job_id, L.vm_id, L.state, L.ip, L.reason,
               L.attempts, L.created_at, L.updated_at, L.template)
        .where(L.ended_at.is_(None)).order_by(L.id)))
    requests = tuple(
        RequestView(r.id, r.kind, tuple(expand_hostlist(r.nodes)), tuple(r.job_ids or ()),
                    dict(r.payload or {}), r.created_at)
        for r in db.unhandled_requests(session)
    )
    last_resume: dict[str, datetime] = {}
    for r in session.scalars(select(db.HookRequest).where(
            db.HookRequest.kind == "resume", db.HookRequest.created_at >= window_start)):
        for name in expand_hostlist(r.nodes):
            last_resume[name] = max(r.created_at, last_resume.get(name, r.created_at))
    last_failure: dict[str, datetime] = {}
    failed_jobs: dict[int, datetime] = {}
    failure_count: dict[int, int] = {}
    last_reason: dict[int, str] = {}
    requeue_why: dict[int, str] = {}
    for row in session.scalars(select(db.Launch).where(
            db.Launch.state == "failed", db.Launch.ended_at >= window_start)):
        if row.ended_at is not None:
            last_failure[row.node_name] = max(row.ended_at,
                                              last_failure.get(row.node_name, row.ended_at))
            if row.job_id is not None:
                if row.ended_at >= failed_jobs.get(row.job_id, row.ended_at):
                    last_reason[row.job_id] = row.reason
                failed_jobs[row.job_id] = max(row.ended_at,
                                              failed_jobs.get(row.job_id, row.ended_at))
                failure_count[row.job_id] = failure_count.get(row.job_id, 0) + 1
    last_served = {name: ended for name, ended in session.execute(
        select(db.Launch.node_name, func.max(db.Launch.ended_at))
        .where(db.Launch.state == "terminated", db.Launch.job_id.is_not(None),
               db.Launch.ended_at >= window_start)
        .group_by(db.Launch.node_name)) if ended is not None}
    early_failed: set[tuple[int, int | None]] = set()
    for ev in session.scalars(select(db.Event).where(
            db.Event.kind == EARLY_FAILED_EVENT, db.Event.at >= window_start,
            db.Event.job_id.is_not(None))):
        assert ev.job_id is not None  # one failure per VM, however often it was said
        if (ev.job_id, ev.vm_id) not in early_failed:
            early_failed.add((ev.job_id, ev.vm_id))
            failure_count[ev.job_id] = failure_count.get(ev.job_id, 0) + 1
            if ev.job_id not in last_reason or ev.at >= failed_jobs.get(ev.job_id, ev.at):
                last_reason[ev.job_id] = ev.message
    for ev in session.scalars(select(db.Event).where(
            db.Event.kind == db.RESUME_REFUSED_EVENT, db.Event.at >= window_start,
            db.Event.job_id.is_not(None))):
        assert ev.job_id is not None
        failed_jobs[ev.job_id] = max(ev.at, failed_jobs.get(ev.job_id, ev.at))
        requeue_why[ev.job_id] = CONTROLLER_DOWN_WHY
    for ev in session.scalars(select(db.Event).where(
            db.Event.kind == UNPLACEABLE_EVENT, db.Event.at >= window_start,
            db.Event.job_id.is_not(None))):
        assert ev.job_id is not None  # requeued by an unplaceable VM: not a failure of its own
        failed_jobs[ev.job_id] = max(ev.at, failed_jobs.get(ev.job_id, ev.at))
        requeue_why[ev.job_id] = ev.message.removeprefix("vcluster: ")
    rate_start = now - timedelta(seconds=boot_window_s(config))
    recent_boots = tuple((ev.at, ev.node_name or "") for ev in session.scalars(
        select(db.Event).where(db.Event.kind.in_(BOOT_EVENTS), db.Event.at >= rate_start)))
    recent = now - timedelta(seconds=JOB_MEMORY_S)
    J = db.Job  # noqa: N806
    known_jobs = {
        job_id: JobRecord(job_id, state, nodes, template, ended_at is not None)
        for job_id, state, nodes, template, ended_at in session.execute(
            select(J.job_id, J.state, J.nodes, J.template, J.ended_at).where(
                or_(J.ended_at.is_(None), J.ended_at >= recent)))
    }
    return {"launches": launches, "requests": requests, "last_resume_at": last_resume,
            "last_failure_at": last_failure, "last_served_at": last_served,
            "failed_jobs": failed_jobs,
            "requeue_why": requeue_why,
            "job_failures": {j: (n, last_reason.get(j, "")) for j, n in failure_count.items()},
            "known_jobs": known_jobs,
            "backoffs": {(b.node_class, b.template): BackoffView(
                b.node_class, b.template, b.level, b.cause, b.reason, b.since, b.until)
                for b in session.scalars(select(db.ClassBackoff))},
            "recent_boots": tuple(
                (at, nc.name) for at, name in recent_boots
                if (nc := config.class_of_node(name)) is not None),
            "drains": {d.target: DrainView(d.target, d.kind, d.reason, d.by)
                       for d in session.scalars(select(db.Drain))},
            "suspensions": {r.node_name: SuspensionView(r.node_name, r.job_id, r.vm_id,
                                                        r.by_job, r.state, r.created_at,
                                                        r.updated_at)
                            for r in session.scalars(select(db.Suspension))}}


def _read_slurm(slurm: SlurmPort) -> tuple[list[Job], list[Node], float]:
    """Slurm's nodes, then its jobs, and how long the two took. In this order a node the
    first read shows allocated has its job in the second (unless that job ended between):
    read the other way, a job allocated between the reads left its node powering up for
    no known job, and the node got a VM of the class's size with no job tag (a requeued
    job on 24.11, while a busy slurmctld took 5 s to answer)."""
    started = time.monotonic()
    nodes = slurm.nodes()
    return slurm.jobs(), nodes, time.monotonic() - started


def observe(config: Config, sessions: sessionmaker[Session], slurm: SlurmPort, one: OnePort,
            now: datetime) -> Observed:
    """Read the whole picture; raise PictureIncomplete if any part cannot be read."""
    started = time.monotonic()
    try:
        with sessions() as session:
            from_db = read_database(session, config, now)
    except Exception as exc:  # SQLAlchemy errors, a corrupt hostlist in a row
        raise PictureIncomplete(f"cannot read the state database: {exc}") from exc
    database_s = time.monotonic() - started
    # Slurm and OpenNebula at the same time: each read mostly waits for its server (a busy
    # slurmctld, a pool listing), and one after the other a pass waited for both.
    with ThreadPoolExecutor(1, thread_name_prefix="vcluster-observe") as pool:
        slurm_read = pool.submit(_read_slurm, slurm)
        one_failed: VclusterError | None = None
        vms: dict[int, VM] = {}
        listing = time.monotonic()
        try:
            vms = {v.vm_id: v for v in one.vms(cluster=config.controller.cluster_name)}
        except VclusterError as exc:
            one_failed = exc
        one_s = time.monotonic() - listing
        try:
            job_list, node_list, slurm_s = slurm_read.result()
        except VclusterError as exc:
            raise PictureIncomplete(f"cannot read Slurm: {exc}") from exc
    jobs = {j.job_id: j for j in job_list}
    nodes = {n.name: n for n in node_list if config.class_of_node(n.name) is not None}
    if one_failed is not None:
        raise PictureIncomplete(f"cannot read OpenNebula: {one_failed}") from one_failed
    try:
        host_states = one.host_states()
    except VclusterError as exc:  # hosts only add events: the pass goes on without them
        log.warning("cannot read OpenNebula's hosts (their OFFLINE/ERROR states are not "
                    "seen this pass): %s", exc)
        host_states = {}
    return Observed(now=now, jobs=jobs, nodes=nodes, vms=vms, host_states=host_states,
                    read_s=(database_s, slurm_s, one_s), **from_db)
