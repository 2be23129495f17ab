"""Reservations in the controller's pass: boot ahead, keep up, release at the end.

Why it exists: a job submitted into a reservation must start at its start time, not a boot
later. At ``start - lead_s`` the controller asks Slurm to power the reserved nodes up
(``scontrol update State=POWER_UP``): Slurm runs ResumeProgram as for any resume, and the
VMs boot and join through the usual path, so they are IDLE nodes inside the reservation at
its start, and Slurm starts the reservation's pending jobs on them at once. While the
reservation lasts its nodes are *held*: the plan's power-down of idle per-job nodes spares
them (Slurm's own idle SuspendTime still applies; the lead keeps idle time before the start
short); a node that went down before the start (a VM failed) is powered up again; after the
start, Slurm powers nodes up for the reservation's jobs as for any job.
At its end (or when cancelled) its nodes are powered down with ``POWER_DOWN_ASAP`` (a job
still running finishes first), and Slurm's suspend hook terminates their VMs.

:func:`plan_reservations` is pure (tested as a table); :func:`run_reservations` reads the
database and Slurm, and carries the steps out one by one, recording each as an event.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from vcluster import db
from vcluster.controller.actions import Action, PowerDown
from vcluster.controller.ports import SlurmPort
from vcluster.errors import VclusterError
from vcluster.slurm_parse import Node, compress_hostlist, expand_hostlist

log = logging.getLogger(__name__)

_WORKING = frozenset({"IDLE", "ALLOCATED", "MIXED"})
_NOT_WORKING_FLAGS = frozenset({"POWERED_DOWN", "POWERING_UP", "POWERING_DOWN",
                                "NOT_RESPONDING"})


@dataclass(frozen=True)
class ReservationView:
    reservation_id: int
    slurm_name: str
    nodes: tuple[str, ...]
    start: datetime
    end: datetime
    lead_s: float
    state: str
    powered_up: bool


@dataclass(frozen=True)
class Step:
    kind: Literal["power_up", "ready", "release", "finish"]
    reservation_id: int
    nodes: tuple[str, ...]
    message: str
    failures: str = ""
    """Why nodes it powered up already went down (Slurm's reasons): they boot again."""


def working(node: Node | None) -> bool:
    """A node slurmd serves: jobs can start on it now."""
    return node is not None and node.state in _WORKING and not node.flags & _NOT_WORKING_FLAGS


def _down(node: Node | None) -> bool:
    """Powered down and not changing (a node Slurm does not list is a hidden powered-down
    CLOUD node: 22.05 without PrivateData=cloud)."""
    return node is None or (node.powered_down and not node.powering_up
                            and not node.powering_down)


def _reason(node: Node | None) -> str:
    return node.reason if node is not None else ""


def plan_reservations(now: datetime, rows: Sequence[ReservationView],
                      nodes: Mapping[str, Node | None]) -> list[Step]:
    steps: list[Step] = []
    for r in rows:
        if r.state == "cancelled" or now >= r.end:
            if r.powered_up:
                why = "cancelled" if r.state == "cancelled" else "ended"
                steps.append(Step("release", r.reservation_id, r.nodes,
                                  f"reservation {r.reservation_id} {why}: powering "
                                  f"{compress_hostlist(r.nodes)} down"))
            else:
                steps.append(Step("finish", r.reservation_id, (), f"reservation "
                                  f"{r.reservation_id} ended with no VM booted"))
            continue
        if now < r.start - timedelta(seconds=r.lead_s):
            continue
        # Before the start, every node must come up; after it, Slurm powers a node up for
        # the reservation's next job as for any job (a per-job node goes down after its job).
        down = tuple(n for n in r.nodes if _down(nodes.get(n))) if now < r.start else ()
        if not down and r.state == "accepted":  # its nodes are up already, or past its start
            steps.append(Step("power_up", r.reservation_id, (), f"reservation "
                              f"{r.reservation_id}: " + (
                                  "its nodes are up already, nothing to boot" if now < r.start
                                  else "started before any boot (the controller was away): "
                                  "Slurm powers its nodes up for its jobs")))
        elif down:
            late = (now - r.start).total_seconds()
            when = f"{-late:.0f} s before its start" if late < 0 else \
                f"{late:.0f} s after its start"
            # powered up before and down again: their VMs failed (the reason is kept)
            failures = "; ".join(f"{n}: {reason}" for n in down
                                 if r.powered_up and (reason := _reason(nodes.get(n))))
            steps.append(Step("power_up", r.reservation_id, down,
                              f"reservation {r.reservation_id}: booting "
                              f"{compress_hostlist(down)} {when} (lead {r.lead_s:.0f} s)"
                              + (f"; again after a failure: {failures}" if failures else ""),
                              failures))
        elif r.state == "booting" and all(working(nodes.get(n)) for n in r.nodes) \
                and r.powered_up:
            ahead = (r.start - now).total_seconds()
            steps.append(Step("ready", r.reservation_id, r.nodes,
                              f"reservation {r.reservation_id}: {compress_hostlist(r.nodes)} "
                              f"working {ahead:.1f} s before its start"))
    return steps


def held_nodes(now: datetime, rows: Sequence[ReservationView]) -> frozenset[str]:
    """Nodes the controller must not power down as idle: those of reservations being kept."""
    return frozenset(n for r in rows if r.state in ("booting", "ready") and now < r.end
                     for n in r.nodes)


def spare_held(actions: list[Action], held: frozenset[str]) -> list[Action]:
    """The plan's actions without power-downs of held nodes."""
    if not held:
        return actions
    kept: list[Action] = []
    for a in actions:
        if isinstance(a, PowerDown):
            names = tuple(n for n in a.node_names if n not in held)
            if names:
                kept.append(replace(a, node_names=names))
        else:
            kept.append(a)
    return kept


# --- I/O --------------------------------------------------------------------------------------


def _views(session: Session) -> list[ReservationView]:
    rows = session.scalars(select(db.Reservation).where(
        db.Reservation.ended_at.is_(None),
        db.Reservation.state.in_(("accepted", "booting", "ready", "cancelled")))).all()
    return [ReservationView(r.id, r.slurm_name, tuple(expand_hostlist(r.nodes)) if r.nodes else (),
                            r.start, r.end, r.lead_s, r.state, r.powered_up_at is not None)
            for r in rows]


def run_reservations(sessions: sessionmaker[Session], slurm: SlurmPort,
                     now: datetime) -> frozenset[str]:
    """Carry out this pass's reservation steps; the nodes held this pass."""
    with db.transaction(sessions) as s:
        rows = _views(s)
    if not rows:
        return frozenset()
    names = {n for r in rows for n in r.nodes}
    by_name: dict[str, Node | None] = dict.fromkeys(names)
    if names:
        by_name.update({n.name: n for n in slurm.nodes() if n.name in names})
    for step in plan_reservations(now, rows, by_name):
        try:
            _carry_out(sessions, slurm, step, now)
        except VclusterError as exc:
            log.warning("%s: failed: %s", step.message, exc)
    for r in rows:
        if r.state in ("booting", "ready") and 0 <= (r.start - now).total_seconds() <= \
                KICK_HORIZON_S and (r.slurm_name, r.start) not in _kicks:
            _kicks[(r.slurm_name, r.start)] = _kick_at_start(slurm, r, now)
    return held_nodes(now, rows)


KICK_HORIZON_S = 30.0
"""How long before a reservation's start the controller sets its start-time kick."""
_kicks: dict[tuple[str, datetime], threading.Timer] = {}
"""The kicks set and not yet fired, by reservation (a pass sets one once)."""


def _kick_at_start(slurm: SlurmPort, r: ReservationView, now: datetime) -> threading.Timer:
    """slurmctld notices a reservation's start in its background loop (every 5 s) and only
    then schedules; a job waiting for the reservation would start up to 5 s late. Any
    successful reservation update runs a scheduling pass: one at the start time starts the
    reservation's jobs at once."""
    def kick() -> None:
        _kicks.pop((r.slurm_name, r.start), None)
        try:
            slurm.update_reservation(r.slurm_name,
                                     EndTime=r.end.astimezone().strftime("%Y-%m-%dT%H:%M:%S"))
            log.info("reservation %d started: Slurm asked to schedule its jobs",
                     r.reservation_id)
        except VclusterError as exc:
            log.warning("reservation %d: start-time scheduling kick failed: %s",
                        r.reservation_id, exc)

    delay_s = max(0.0, (r.start - now).total_seconds()) + KICK_DELAY_S
    timer = threading.Timer(delay_s, kick)
    timer.daemon = True
    timer.start()
    return timer


KICK_DELAY_S = 0.05
"""After the start second: Slurm compares whole seconds (start_time <= now)."""


def _carry_out(sessions: sessionmaker[Session], slurm: SlurmPort, step: Step,
               now: datetime) -> None:
    if step.kind == "power_up":
        # recorded first: a controller that dies after asking Slurm finds the reservation
        # booting (its nodes held) on restart, and asks again only for nodes still down
        _record(sessions, step, now)
        if step.nodes:
            slurm.update_nodes(list(step.nodes), state="POWER_UP")
        log.info("%s", step.message)
        return
    if step.kind == "release":
        slurm.update_nodes(list(step.nodes), state="POWER_DOWN_ASAP",
                           reason=f"vcluster: reservation {step.reservation_id} over")
    log.info("%s", step.message)
    _record(sessions, step, now)


def _record(sessions: sessionmaker[Session], step: Step, now: datetime) -> None:
    with db.transaction(sessions) as s:
        row = s.get(db.Reservation, step.reservation_id)
        if row is None:
            return
        if step.kind == "power_up":
            row.powered_up_at = row.powered_up_at or now
            if row.state in ("accepted", "ready"):
                row.state = "booting"
            if step.failures:  # seen in `vcluster reserve list` and `vcluster status`
                row.reason = f"booting again after a failure at {now:%H:%M:%S} UTC: " \
                    f"{step.failures}"
        elif step.kind == "ready":
            row.state, row.ready_at = "ready", row.ready_at or now
        else:
            row.ended_at = now
            if row.state != "cancelled":
                row.state = "ended"
        db.record_event(s, f"reservation.{step.kind}", step.message, at=now)
