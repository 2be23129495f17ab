"""``vcluster cleanup``: find and remove what a crash or a hand-made change left behind.

Why it exists: the controller sweeps orphans on every pass, but an admin whose controller is
stopped (or who wants to see first) needs the same sweep by hand, with a dry run. Leftovers:

* an **orphan VM**: alive in OpenNebula, tagged with this cluster, that no open launch claims
  and that no allocation in flight may be about to claim -> terminated;
* a **stale launch**: open, its VM gone from OpenNebula -> closed as terminated; or never given
  a VM within ResumeTimeout -> closed as failed;
* a **stale hook request**: unhandled for longer than twice ResumeTimeout (Slurm gave up on it
  long ago) -> marked handled.

OpenNebula is read before the database, so a VM booted meanwhile by a running controller has
its launch row (written before the VM is allocated) in the database picture and is never taken
for an orphan; a launch younger than ``GRACE_S`` is never taken for stale. Finding is pure;
applying does each item on its own and says what happened.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from vcluster import db
from vcluster.config import Config
from vcluster.controller.ports import OnePort
from vcluster.controller.standby import STANDBY_TAG, is_standby
from vcluster.errors import VclusterError
from vcluster.one_vm import VM

GRACE_S = 120.0
"""Launches changed and VMs started more recently than this are left alone, seconds."""


@dataclass(frozen=True)
class Leftover:
    kind: str
    """``orphan_vm``, ``stale_launch`` or ``stale_request``."""
    action: str
    """What cleanup does: ``terminate``, ``close`` or ``mark handled``."""
    what: str
    """The thing, in words (``VM 42 (RUNNING, tagged vc-small-003)``)."""
    why: str
    vm_id: int | None = None
    launch_id: int | None = None
    close_as: str = ""
    request_id: int | None = None


def find_leftovers(config: Config, vms: Sequence[VM], launches: Sequence[db.Launch],
                   requests: Sequence[db.HookRequest], now: datetime) -> list[Leftover]:
    """Every leftover in the pictures (VMs listed before the database was read)."""
    grace = timedelta(seconds=GRACE_S)
    open_launches = [la for la in launches if la.is_open]
    claimed = {la.vm_id for la in open_launches if la.vm_id is not None}
    in_flight = {la.node_name for la in open_launches if la.vm_id is None}
    found: list[Leftover] = []
    classes = {nc.name for nc in config.node_classes}
    for vm in sorted(vms, key=lambda v: v.vm_id):
        tag = vm.user_template.get("VCLUSTER_NODE", "")
        if vm.vm_id in claimed or vm.is_terminating or vm.is_gone or tag in in_flight:
            continue
        if is_standby(vm) and vm.user_template.get(STANDBY_TAG) in classes:
            continue  # the controller's reserve: it replaces old or failed ones itself
        if vm.start_time and now.timestamp() - vm.start_time < GRACE_S:
            continue
        found.append(Leftover("orphan_vm", "terminate",
                              f"VM {vm.vm_id} ({vm.state_name}, tagged {tag or '?'})",
                              "no launch of vcluster's claims it", vm_id=vm.vm_id))
    listed = {vm.vm_id for vm in vms}
    resume_timeout = timedelta(seconds=config.controller.resume_timeout_s)
    for la in open_launches:
        if now - la.updated_at < grace:
            continue
        if la.vm_id is not None and la.vm_id not in listed:
            found.append(Leftover("stale_launch", "close",
                                  f"launch {la.id} of {la.node_name} ({la.state}, VM {la.vm_id})",
                                  "its VM is gone from OpenNebula", launch_id=la.id,
                                  close_as="terminated"))
        elif la.vm_id is None and now - la.created_at > resume_timeout:
            found.append(Leftover("stale_launch", "close",
                                  f"launch {la.id} of {la.node_name} ({la.state}, no VM)",
                                  f"no VM within ResumeTimeout "
                                  f"({config.controller.resume_timeout_s} s)",
                                  launch_id=la.id, close_as="failed"))
    for r in requests:
        if r.handled_at is None and now - r.created_at > 2 * resume_timeout:
            found.append(Leftover("stale_request", "mark handled",
                                  f"{r.kind} request {r.id} ({r.nodes or 'no nodes'})",
                                  "unhandled for longer than twice ResumeTimeout",
                                  request_id=r.id))
    return found


def remove(item: Leftover, sessions: sessionmaker[Session], one: OnePort, *, by: str,
           now: datetime) -> str:
    """Do what ``item.action`` says; "" on success, else why it failed."""
    try:
        if item.vm_id is not None:
            one.terminate(item.vm_id)
        with db.transaction(sessions) as s:
            if item.launch_id is not None:
                row = s.get(db.Launch, item.launch_id)
                if row is not None and row.is_open:
                    row.state, row.updated_at, row.ended_at = item.close_as, now, now
                    row.reason = f"vcluster cleanup: {item.why}"
                    if row.vm_id is not None and row.vm_started_at is not None:
                        row.vm_ended_at = row.vm_ended_at or now
            if item.request_id is not None:
                s.execute(update(db.HookRequest).where(db.HookRequest.id == item.request_id)
                          .values(handled_at=now))
            db.record_event(s, "admin.cleanup", f"{item.action} {item.what} ({by}): {item.why}",
                            vm_id=item.vm_id, at=now)
    except VclusterError as exc:
        return str(exc)
    return ""
