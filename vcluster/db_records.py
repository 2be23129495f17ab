"""Small records and reads of the state database shared by hooks, controller and status.

Why it exists apart from :mod:`vcluster.db`: that module opens, migrates and checks the
database; these are the few rows everyone writes or reads the same way (events, the
heartbeat, the controllers' rows, the wake notification). Import them from :mod:`vcluster.db`.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from vcluster import __version__
from vcluster.db_models import (
    ControllerSeen,
    Event,
    Heartbeat,
    HookRequest,
    Launch,
    utcnow,
)

log = logging.getLogger("vcluster.db")


def record_event(
    session: Session, kind: str, message: str, *, node_name: str | None = None,
    job_id: int | None = None, vm_id: int | None = None, at: datetime | None = None,
) -> Event:
    ev = Event(kind=kind, message=message, node_name=node_name, job_id=job_id, vm_id=vm_id,
               at=at or utcnow())
    session.add(ev)
    log.info("event %s node=%s job=%s vm=%s: %s", kind, node_name, job_id, vm_id, message)
    return ev


VM_LOST_EVENT = "vm.lost"
"""A VM reached a state vcluster did not ask for: what was seen, which rule, what was done."""
VM_RECOVERED_EVENT = "vm.recovered"
"""The job of a lost VM has a working node again: how long recovery took."""
RECOVERY_WINDOW_S = 86400.0
"""A VM lost longer ago than this is not looked for when its job's node comes up."""


def record_recovery(session: Session, job_id: int, on: str, *, at: datetime,
                    node_name: str | None = None, vm_id: int | None = None) -> Event | None:
    """If a VM of the job was lost (``vm.lost``) since the job last recovered, record how
    long it took until the job had a working node again (``on``: "VM 7", "nodes vc-[1-2]").
    The controller's node-up and the prolog's wait both call it: a rerun that ends before
    the controller's next pass is seen only by the prolog. Only the last day of events is
    read (through the index on ``at``): it runs on a job's start."""
    last = session.scalars(select(Event).where(
        Event.at >= at - timedelta(seconds=RECOVERY_WINDOW_S), Event.job_id == job_id,
        Event.kind.in_((VM_LOST_EVENT, VM_RECOVERED_EVENT)))
        .order_by(Event.at.desc(), Event.id.desc()).limit(1)).first()
    if last is None or last.kind != VM_LOST_EVENT:
        return None
    took_s = (at - last.at).total_seconds()
    return record_event(session, VM_RECOVERED_EVENT, f"job {job_id} has a working node again "
                        f"on {on}, {took_s:.1f} s after VM {last.vm_id} was lost (recovery "
                        f"{took_s:.1f} s)", node_name=node_name, vm_id=vm_id, job_id=job_id,
                        at=at)


def beat(session: Session, *, at: datetime | None = None) -> Heartbeat:
    hb = session.get(Heartbeat, 1)
    now = at or utcnow()
    if hb is None:
        hb = Heartbeat(id=1, pid=os.getpid(), host=socket.gethostname(), at=now,
                       version=__version__)
        session.add(hb)
    else:
        hb.pid, hb.host, hb.at, hb.version = os.getpid(), socket.gethostname(), now, __version__
    return hb


def heartbeat(session: Session) -> Heartbeat | None:
    return session.get(Heartbeat, 1)


def open_launches(session: Session) -> Sequence[Launch]:
    return session.scalars(select(Launch).where(Launch.ended_at.is_(None))
                           .order_by(Launch.id)).all()


def unhandled_requests(session: Session) -> Sequence[HookRequest]:
    return session.scalars(select(HookRequest).where(HookRequest.handled_at.is_(None))
                           .order_by(HookRequest.id)).all()


CONTROLLER_FORGET_S = 86400.0
"""A controller row not rewritten for this long is deleted (its process is long gone)."""


def see_controller(session: Session, role: str, since: datetime, *,
                   at: datetime | None = None) -> None:
    """This process's row: its role, since when, seen now. Rows of controllers gone for
    :data:`CONTROLLER_FORGET_S` are deleted."""
    now = at or utcnow()
    host, pid = socket.gethostname(), os.getpid()
    row = session.get(ControllerSeen, (host, pid))
    if row is None:
        session.add(ControllerSeen(host=host, pid=pid, role=role, since=since, seen_at=now,
                                   version=__version__))
    else:
        row.role, row.since, row.seen_at = role, since, now
    session.execute(delete(ControllerSeen).where(
        ControllerSeen.seen_at < now - timedelta(seconds=CONTROLLER_FORGET_S)))


def forget_controller(session: Session) -> None:
    """This process stops: its row goes."""
    session.execute(delete(ControllerSeen).where(
        ControllerSeen.host == socket.gethostname(), ControllerSeen.pid == os.getpid()))


def controllers_seen(session: Session) -> Sequence[ControllerSeen]:
    """Every controller's row, the leader first, then the most recently seen."""
    return session.scalars(select(ControllerSeen).order_by(
        ControllerSeen.role, ControllerSeen.seen_at.desc())).all()


def wake_channel(cluster_name: str) -> str:
    """The PostgreSQL notification channel that wakes the controllers of ``cluster_name``
    (a name of letters, digits, '_', '.', '-': safe inside double quotes)."""
    return f"vcluster_wake:{cluster_name}"[:63]


def notify_wake(session: Session, cluster_name: str) -> None:
    """With PostgreSQL, wake the controllers on every host when this transaction commits
    (:mod:`vcluster.controller.pg_wake`); nothing with SQLite (one host: ``wake.sock``)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_notify(wake_channel(cluster_name), "")))
