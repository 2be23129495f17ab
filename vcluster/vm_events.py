"""Unscheduled events: a VM that reached a state vcluster did not ask for, as people see it.

Why it exists: when a VM is powered off, suspended, stopped, undeployed or terminated behind
vcluster's back, or its host goes OFFLINE, the admin asks four things: what was seen, which
rule of which node class applied, what vcluster did, and how long the job took to recover.
The controller writes that as two events (``vm.lost`` when it acts, ``vm.recovered`` when the
job has a working node again); this module words both, and pairs them back into one row for
``vcluster status`` (words and reading live side by side, so they cannot drift apart).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from vcluster import db

RESUMED_REASON = "VM resumed after an unscheduled event"
"""The reason of a launch whose VM vcluster resumed, until it is RUNNING again (then it is
marked up, which records the recovery)."""
WINDOW_S = 86400.0
"""``vcluster status`` shows the unscheduled events of the last day."""
LIMIT = 20
"""... at most this many, the latest."""
_LOST = re.compile(r"^VM (?P<vm>\S+) seen (?P<seen>.+?) \(not asked by vcluster\); rule "
                   r"(?P<event>\w+)=(?P<rule>\w+)(?: \(class (?P<cls>[^)]*)\))?: (?P<done>.+)$")
_RECOVERED = re.compile(r" on (?P<on>.+?), [\d.]+ s after VM (?P<vm>\S+) was lost "
                        r"\(recovery (?P<s>[\d.]+) s\)$")


def lost_message(vm_id: int | None, seen: str, event: str, rule: str, node_class: str,
                 done: str) -> str:
    """``VM 7 seen POWEROFF (not asked by vcluster); rule POWEROFF=fail (class small): node
    set DOWN (job 12 requeued by Slurm), VM terminated``."""
    return (f"VM {vm_id} seen {seen} (not asked by vcluster); rule {event}={rule} "
            f"(class {node_class}): {done}")


@dataclass(frozen=True)
class Unscheduled:
    """One unscheduled event and what became of it."""

    at: datetime
    node_name: str
    job_id: int | None
    vm_id: int | None
    seen: str
    """The VM's state (``POWEROFF``) or its host's (``on host h1 OFFLINE``)."""
    event: str
    """The ``on_vm_event`` key (``POWEROFF``, ``HOST_OFFLINE``)."""
    rule: str
    """``fail``, ``resume`` or ``keep``."""
    node_class: str
    done: str
    recovery_s: float | None = None
    """From the event to the job having a working node again (the VM resumed, or the job
    started on a fresh VM); None while it has not."""
    recovered_on: str = ""
    """``VM 9`` (a fresh VM) or ``VM 7`` (the same VM, resumed)."""


def query_unscheduled(session: Session, now: datetime, *, window_s: float = WINDOW_S,
                      limit: int = LIMIT) -> list[Unscheduled]:
    """The latest ``limit`` unscheduled events of the last ``window_s`` (oldest first), each
    with its recovery if its job recovered since."""
    rows = session.scalars(select(db.Event).where(
        db.Event.at >= now - timedelta(seconds=window_s),
        db.Event.kind.in_((db.VM_LOST_EVENT, db.VM_RECOVERED_EVENT)))
        .order_by(db.Event.at, db.Event.id)).all()
    found: list[Unscheduled] = []
    waiting: dict[int, list[int]] = {}  # job id -> indexes in found not yet recovered
    for row in rows:
        if row.kind == db.VM_LOST_EVENT:
            match = _LOST.match(row.message)
            if match is None:
                continue
            found.append(Unscheduled(
                row.at, row.node_name or "", row.job_id, row.vm_id, match["seen"],
                match["event"], match["rule"], match["cls"] or "", match["done"]))
            if row.job_id is not None and match["rule"] != "keep":  # kept: nothing to recover
                waiting.setdefault(row.job_id, []).append(len(found) - 1)
            continue
        recovered = _RECOVERED.search(row.message)
        if recovered is None or row.job_id is None:
            continue
        for i in waiting.pop(row.job_id, []):
            lost = found[i]
            found[i] = Unscheduled(**{**lost.__dict__, "recovery_s": round(
                (row.at - lost.at).total_seconds(), 1), "recovered_on": recovered["on"]})
    return found[-limit:]


def recovery_text(u: Unscheduled, now: datetime) -> str:
    """``34.2 s, on VM 9`` or ``not yet (12 s)``; ``-`` for a VM that served no job."""
    if u.rule == "keep":
        return "none needed (kept)"
    if u.recovery_s is not None:
        return f"{u.recovery_s:.1f} s, on {u.recovered_on}"
    if u.job_id is None:
        return "-"
    return f"not yet ({(now - u.at).total_seconds():.0f} s)"


def unscheduled_lines(events: Sequence[Unscheduled], now: datetime) -> list[str]:
    """One line per event, as ``vcluster status`` prints them under "Unscheduled events"."""
    return [f"{u.at:%Y-%m-%d %H:%M:%S} {u.node_name} job {_opt(u.job_id)} VM {u.vm_id}: "
            f"seen {u.seen}; rule {u.event}={u.rule} (class {u.node_class}); {u.done}; "
            f"recovery {recovery_text(u, now)}" for u in events]


def unscheduled_to_json(events: Sequence[Unscheduled]) -> list[dict[str, object]]:
    """For ``--json``: times ISO 8601 UTC, recovery in seconds (null: not yet)."""
    return [{**u.__dict__, "at": u.at.isoformat()} for u in events]


def _opt(value: int | None) -> str:
    return "-" if value is None else str(value)
