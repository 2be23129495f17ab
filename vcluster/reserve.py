"""Advance reservations: admission control and the lead time of a reservation's boots.

Why it exists: a user who needs N nodes at a known time T (a course, a demo, a deadline run)
should learn at once whether the cloud can hold them, and find working nodes at T rather
than waiting out a boot. As Haizea's admission control did, ``vcluster reserve`` accepts a
reservation only if its VMs fit on OpenNebula's hosts from T to its end next to the VMs
other accepted reservations will boot then; otherwise it is refused with one line naming
what is missing. Accepted reservations become Slurm reservations on nodes of the class; the
controller boots their VMs ``lead_s`` ahead of T (:mod:`vcluster.controller.reserve_plan`),
the lead coming from the boot times vcluster measured for the class.

The capacity model is deliberately conservative: what a host uses now (CPU_USAGE,
MEM_USAGE) is assumed still used at T, and reservations whose VMs are not booted yet are
added on top (once booted, their VMs are in the usage). VMs are packed onto hosts first fit,
largest first, as oned's scheduler places each VM on one host.

The pure part (:func:`admit`, :func:`lead_time_s`) is tested as tables; the database and
Slurm calls below it are used by the CLI (:mod:`vcluster.cli.reserve`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from vcluster import db
from vcluster.config import Config, NodeClass
from vcluster.errors import SlurmCommandError, VclusterError
from vcluster.one_site import HostCapacity

if TYPE_CHECKING:
    from vcluster.slurm import Slurm

OPEN_STATES = ("accepted", "booting", "ready")
"""A reservation in these states holds nodes (and, until booted, cloud capacity)."""
DEFAULT_LEAD_S = 60.0
"""Lead time before any boot of the class was measured."""
LEAD_MARGIN_S = 10.0
"""Added to the slowest recent boot: Slurm's power-save pass, a controller pass, slurmd's
registration."""
ADMISSION_LOCK = 0x76637273
"""PostgreSQL advisory lock key: two ``vcluster reserve`` at once admit one after the other."""
LEAD_SAMPLES = 20
"""How many of the class's latest boots the lead is taken from."""


@dataclass(frozen=True)
class Wish:
    """What ``vcluster reserve`` asks for."""

    node_class: str
    count: int
    cpu_pct: int
    """OpenNebula CPU of one VM, in percent of a core (CPU = 1 is 100)."""
    memory_mb: int
    start: datetime
    end: datetime


@dataclass(frozen=True)
class Held:
    """Another reservation over the same window."""

    reservation_id: int
    node_class: str
    count: int
    cpu_pct: int
    memory_mb: int
    booted: bool
    """Its VMs are booted (or booting): the hosts' usage counts them already."""


@dataclass(frozen=True)
class Decision:
    accepted: bool
    reason: str


def wish_for(nc: NodeClass, count: int, start: datetime, end: datetime) -> Wish:
    """A class's VMs are booted at the class's size when powered up without a job."""
    return Wish(nc.name, count, nc.cpus * 100, nc.memory_mb, start, end)


def _fit(free: list[list[int]], vms: Iterable[tuple[int, int]]) -> int:
    """Place (cpu_pct, mem_kb) VMs first fit onto ``free`` [cpu, mem] hosts; how many fit."""
    placed = 0
    for cpu, mem in vms:
        for host in free:
            if host[0] >= cpu and host[1] >= mem:
                host[0] -= cpu
                host[1] -= mem
                placed += 1
                break
    return placed


def _when(t: datetime) -> str:
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def admit(wish: Wish, class_nodes: int, hosts: Sequence[HostCapacity],
          others: Sequence[Held]) -> Decision:
    """Accept ``wish`` if the class has the nodes and the hosts the VMs from start to end."""
    window = f"from {_when(wish.start)} to {_when(wish.end)}"
    if wish.count < 1:
        return Decision(False, "refused: a reservation needs at least one node")
    if wish.end <= wish.start:
        return Decision(False, "refused: the reservation ends before it starts")
    same = [h for h in others if h.node_class == wish.node_class]
    taken = sum(h.count for h in same)
    if taken + wish.count > class_nodes:
        ids = ", ".join(str(h.reservation_id) for h in same)
        return Decision(False, f"refused: class {wish.node_class} has {class_nodes} nodes, "
                        f"{taken} of them reserved {window}" + (f" (reservations {ids})"
                        if ids else "") + f"; {wish.count} asked")
    up = [h for h in hosts if h.schedulable]
    if not up:
        listed = ", ".join(f"{h.name} {h.state}" for h in hosts) or "none the user can see"
        return Decision(False, f"refused: no OpenNebula host can take VMs (hosts: {listed})")
    free = [[h.max_cpu - h.cpu_usage, h.max_mem_kb - h.mem_usage_kb] for h in up]
    pending = sorted(((h.cpu_pct, h.memory_mb * 1024) for h in others if not h.booted
                      for _ in range(h.count)), reverse=True)
    held_cpu = sum(c for c, _ in pending)
    held_mem = sum(m for _, m in pending)
    if _fit(free, pending) < len(pending):
        # already over-committed (a host left, usage grew): nothing more fits
        free = [[0, 0] for _ in up]
    mine = [(wish.cpu_pct, wish.memory_mb * 1024)] * wish.count
    cpu_only = _fit([[c, 1 << 62] for c, _ in free], mine)
    mem_only = _fit([[1 << 62, m] for _, m in free], mine)
    placed = _fit(free, mine)
    if placed == wish.count:
        return Decision(True, f"accepted: {wish.count} VMs of class {wish.node_class} fit "
                        f"on the cloud's hosts {window}")
    missing = [what for what, n in (("CPU", cpu_only), ("memory", mem_only))
               if n < wish.count] or ["room on a single host"]
    others_text = (f", after {len(pending)} VMs of other reservations "
                   f"({held_cpu}% CPU, {held_mem // 1024} MB)") if pending else ""
    return Decision(False, f"refused: not enough {' and '.join(missing)}: the cloud can hold "
                    f"{placed} of the {wish.count} VMs of class {wish.node_class} "
                    f"({wish.cpu_pct}% CPU, {wish.memory_mb} MB each) {window}: its hosts "
                    f"have {sum(h.max_cpu - h.cpu_usage for h in up)}% CPU and "
                    f"{sum(h.max_mem_kb - h.mem_usage_kb for h in up) // 1024} MB free"
                    f"{others_text}")


def lead_time_s(boot_times_s: Sequence[float]) -> float:
    """How long before its start a reservation's VMs are booted: the slowest of the class's
    recent boots (request to working node) plus a margin, or a default before any."""
    if not boot_times_s:
        return DEFAULT_LEAD_S
    return round(max(boot_times_s) + LEAD_MARGIN_S, 1)


# --- database ---------------------------------------------------------------------------------


def measured_boots_s(session: Session, node_class: str, limit: int = LEAD_SAMPLES
                     ) -> list[float]:
    """Seconds from launch (the resume request recorded) to ``node.up`` of the class's
    latest boots."""
    rows = session.execute(
        select(db.Launch.created_at, db.Event.at)
        .join(db.Event, (db.Event.vm_id == db.Launch.vm_id) & (db.Event.kind == "node.up"))
        .where(db.Launch.node_class == node_class)
        .order_by(db.Event.at.desc()).limit(limit)).all()
    return [max(0.0, (up - created).total_seconds()) for created, up in rows]


def overlapping(session: Session, start: datetime, end: datetime) -> list[db.Reservation]:
    """Open reservations whose window meets [start, end)."""
    return list(session.scalars(
        select(db.Reservation).where(db.Reservation.state.in_(OPEN_STATES),
                                     db.Reservation.start < end, db.Reservation.end > start)
        .order_by(db.Reservation.id)))


def held_of(rows: Iterable[db.Reservation]) -> list[Held]:
    return [Held(r.id, r.node_class, r.node_count, r.cpu_pct, r.memory_mb,
                 booted=r.state != "accepted") for r in rows]


def to_dict(r: db.Reservation) -> dict[str, object]:
    return {"id": r.id, "slurm_name": r.slurm_name, "node_class": r.node_class,
            "nodes": r.nodes, "node_count": r.node_count, "users": r.users,
            "start": r.start.isoformat(), "end": r.end.isoformat(), "lead_s": r.lead_s,
            "state": r.state, "reason": r.reason,
            "powered_up_at": r.powered_up_at.isoformat() if r.powered_up_at else None,
            "ready_at": r.ready_at.isoformat() if r.ready_at else None,
            "ended_at": r.ended_at.isoformat() if r.ended_at else None}


def slurm_create_argv(name: str, nc: NodeClass, count: int, start: datetime, end: datetime,
                      users: str) -> list[str]:
    """``scontrol create reservation`` for ``count`` nodes of the class (Slurm picks them
    among the class's nodes by its feature; times in slurmctld's local time)."""
    def local(t: datetime) -> str:
        return t.astimezone().strftime("%Y-%m-%dT%H:%M:%S")

    return ["scontrol", "create", "reservation", f"ReservationName={name}",
            f"StartTime={local(start)}", f"EndTime={local(end)}", f"NodeCnt={count}",
            f"PartitionName={nc.partition}", f"Features={nc.name}", f"Users={users}"]


# --- making and cancelling one ----------------------------------------------------------------


@dataclass(frozen=True)
class Made:
    reservation: dict[str, object]
    accepted: bool
    reason: str


def _slurm_nodes_of(text: str) -> str:
    """``Nodes=`` of ``scontrol show reservation NAME``."""
    match = re.search(r"(?:^|\s)Nodes=(\S+)", text)
    return match.group(1) if match and match.group(1) != "(null)" else ""


def make(sessions: sessionmaker[Session], slurm: Slurm, config: Config,
         hosts: Sequence[HostCapacity], nc: NodeClass, count: int, start: datetime,
         end: datetime, users: str, *, now: datetime) -> Made:
    """Admit, record, and create the Slurm reservation; a refusal is recorded too."""
    # whole seconds, as Slurm keeps them (a start rounded up never falls before now)
    start = start.replace(microsecond=0) + timedelta(seconds=1 if start.microsecond else 0)
    end = end.replace(microsecond=0) + timedelta(seconds=1 if end.microsecond else 0)
    wish = wish_for(nc, count, start, end)
    with db.transaction(sessions) as s:  # admission and insert in one write transaction
        if s.get_bind().dialect.name == "postgresql":  # SQLite's BEGIN IMMEDIATE serializes
            s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADMISSION_LOCK})
        decision = admit(wish, len(nc.node_names()), hosts, held_of(overlapping(s, start, end)))
        lead_s = lead_time_s(measured_boots_s(s, nc.name))
        row = db.Reservation(node_class=nc.name, node_count=count, nodes="",
                             cpu_pct=wish.cpu_pct, memory_mb=wish.memory_mb, users=users,
                             start=start, end=end, lead_s=lead_s, reason=decision.reason,
                             state="accepted" if decision.accepted else "refused",
                             created_at=now)
        s.add(row)
        s.flush()
        row.slurm_name = f"{config.controller.cluster_name}-r{row.id}"
        rid, name = row.id, row.slurm_name
        db.record_event(s, "reservation." + ("accepted" if decision.accepted else "refused"),
                        f"reservation {rid}: {decision.reason}", at=now)
    if decision.accepted:
        try:
            slurm.run(slurm_create_argv(name, nc, count, start, end, users))
            shown = slurm.run(["scontrol", "show", "reservation", name]).stdout
            nodes, reason = _slurm_nodes_of(shown), decision.reason
        except SlurmCommandError as exc:
            nodes, reason = "", f"refused: Slurm would not create the reservation: {exc}"
        with db.transaction(sessions) as s:
            done = s.get(db.Reservation, rid)
            assert done is not None
            done.nodes, done.reason = nodes, reason
            if not nodes:
                done.state = "refused"
                db.record_event(s, "reservation.refused", f"reservation {rid}: {reason}",
                                at=now)
            made = to_dict(done)
        return Made(made, bool(nodes), reason)
    with db.transaction(sessions) as s:
        refused = s.get(db.Reservation, rid)
        assert refused is not None
        return Made(to_dict(refused), False, decision.reason)


def cancel(sessions: sessionmaker[Session], slurm: Slurm, reservation_id: int, *,
           now: datetime) -> dict[str, object]:
    """Cancel an open reservation: Slurm's is deleted, the controller powers its nodes down.

    Slurm refuses to delete a reservation a job waits or runs in (and ending it now would
    kill the running ones, TIMEOUT): such a cancel is refused, naming the jobs, and nothing
    changes."""
    with db.transaction(sessions) as s:
        row = s.get(db.Reservation, reservation_id)
        if row is None:
            raise VclusterError(f"no reservation {reservation_id} (see `vcluster reserve list`)")
        if row.state not in OPEN_STATES:
            raise VclusterError(f"reservation {reservation_id} is {row.state}: nothing to "
                                "cancel")
        name, was, ended_at = row.slurm_name, row.state, row.ended_at
    jobs = _jobs_in(slurm, name)
    if jobs:
        raise VclusterError(_in_use(reservation_id, name, jobs))
    with db.transaction(sessions) as s:
        row = s.get(db.Reservation, reservation_id)
        assert row is not None
        row.state = "cancelled"
        if row.powered_up_at is None:
            row.ended_at = now
        db.record_event(s, "reservation.cancelled", f"reservation {reservation_id} "
                        "cancelled", at=now)
    try:
        slurm.run(["scontrol", "delete", f"ReservationName={name}"])
    except SlurmCommandError as exc:
        if IN_USE in str(exc):  # a job came between: back to what it was
            with db.transaction(sessions) as s:
                row = s.get(db.Reservation, reservation_id)
                assert row is not None
                row.state, row.ended_at = was, ended_at
                db.record_event(s, "reservation.cancel_refused", f"reservation "
                                f"{reservation_id}: {IN_USE}", at=now)
            raise VclusterError(_in_use(reservation_id, name, _jobs_in(slurm, name))) \
                from exc
        if "Invalid reservation name" not in str(exc):  # gone already (it ended)
            raise
    with db.transaction(sessions) as s:
        row = s.get(db.Reservation, reservation_id)
        assert row is not None
        return to_dict(row)


IN_USE = "Requested reservation is in use"
"""slurmctld's refusal to delete a reservation a job waits or runs in (ESLURM_RESERVATION_BUSY:
any job of it not finished)."""


def _jobs_in(slurm: Slurm, name: str) -> list[str]:
    """The unfinished jobs of a Slurm reservation (squeue's default states: pending,
    running, suspended, completing)."""
    if not name:
        return []
    out = slurm.run(["squeue", "--noheader", f"--reservation={name}", "--format=%i"]).stdout
    return out.split()


def _in_use(reservation_id: int, name: str, jobs: list[str]) -> str:
    listed = ", ".join(jobs) if jobs else "some"
    return (f"reservation {reservation_id} not cancelled: job(s) {listed} wait or run in it "
            f"and Slurm deletes no reservation in use; cancel them (scancel) or let them "
            f"end (squeue --reservation={name}), then cancel it again")


def listing(sessions: sessionmaker[Session], *, all_: bool) -> list[dict[str, object]]:
    with db.transaction(sessions) as s:
        query = select(db.Reservation).order_by(db.Reservation.start, db.Reservation.id)
        if not all_:
            query = query.where(db.Reservation.state.in_(OPEN_STATES))
        return [to_dict(r) for r in s.scalars(query)]
