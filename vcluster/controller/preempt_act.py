"""Carrying out the preemption actions (:mod:`vcluster.controller.preempt`).

Why it exists apart: :class:`vcluster.controller.act.Actor` takes these handlers as a mixin,
so act.py stays about booting and ending VMs. The same rule as there: record the intent in
the database first, then call Slurm or OpenNebula, then record the result as an event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from vcluster import db
from vcluster.controller.actions import (
    DropSuspension,
    FinishResume,
    MarkStopped,
    MoveSuspendedVM,
    RestoreVM,
    StopVM,
    SuspendJob,
)
from vcluster.controller.ports import OnePort, SlurmPort
from vcluster.controller.preempt import REDELIVER_GAP_S, suspend_reason
from vcluster.errors import VclusterError

log = logging.getLogger(__name__)


class PreemptActs:
    """The handlers; the Actor provides the attributes below."""

    slurm: SlurmPort
    one: OnePort
    sessions: sessionmaker[Session]
    now: Callable[[], datetime]

    def _row(self, s: Session, node_name: str) -> db.Suspension | None:
        return s.get(db.Suspension, node_name)

    def _note(self, kind: str, message: str, node_name: str | None, job_id: int | None,
              vm_id: int | None = None) -> None:
        with db.transaction(self.sessions) as s:
            db.record_event(s, kind, message, node_name=node_name, job_id=job_id,
                            vm_id=vm_id, at=self.now())

    def _SuspendJob(self, a: SuspendJob) -> None:
        now = self.now()
        with db.transaction(self.sessions) as s:
            for name, vm_id in zip(a.node_names, a.vm_ids, strict=False):
                if self._row(s, name) is None:
                    s.add(db.Suspension(node_name=name, job_id=a.job_id, vm_id=vm_id,
                                        by_job=a.by_job, state="suspending", created_at=now,
                                        updated_at=now))
            db.record_event(s, "job.preempt", f"suspending job {a.job_id} for job "
                            f"{a.by_job}: {a.reason}", job_id=a.job_id, at=now)
        try:
            self.slurm.suspend(a.job_id)
        except VclusterError:
            # no suspension without Slurm's: the rows go (the plan drops them as well)
            with db.transaction(self.sessions) as s:
                s.execute(delete(db.Suspension).where(db.Suspension.job_id == a.job_id,
                                                      db.Suspension.state == "suspending"))
            raise

    def _StopVM(self, a: StopVM) -> None:
        now = self.now()
        with db.transaction(self.sessions) as s:
            row = self._row(s, a.node_name)
            if row is None:
                row = db.Suspension(node_name=a.node_name, job_id=a.job_id, vm_id=a.vm_id,
                                    by_job=a.by_job, created_at=now)
                s.add(row)
            row.state, row.updated_at = "stopping", now
        try:
            # DRAIN first: Slurm freed the job's CPUs and would place another job there
            self.slurm.update_nodes(a.node_name, state="DRAIN", reason=suspend_reason(a.job_id))
        except VclusterError as exc:
            log.warning("cannot drain node %s of suspended job %d: %s", a.node_name,
                        a.job_id, exc)
        self.one.action("stop", a.vm_id)
        self._note("vm.stop", f"job {a.job_id} suspended: VM {a.vm_id} stopped (memory saved, "
                   "host freed), node drained", a.node_name, a.job_id, a.vm_id)

    def _MarkStopped(self, a: MarkStopped) -> None:
        with db.transaction(self.sessions) as s:
            row = self._row(s, a.node_name)
            if row is not None:
                row.state, row.updated_at = "stopped", self.now()
            db.record_event(s, "vm.stopped", f"VM {a.vm_id} STOPPED {a.seconds:.1f} s after "
                            f"job {a.job_id}'s suspension began", node_name=a.node_name,
                            job_id=a.job_id, vm_id=a.vm_id, at=self.now())

    def _RestoreVM(self, a: RestoreVM) -> None:
        with db.transaction(self.sessions) as s:
            row = self._row(s, a.node_name)
            if row is not None:
                row.state, row.updated_at = "resuming", self.now()
        self.one.action("resume", a.vm_id)
        self._note("vm.restore", f"job {a.job_id} to run again: VM {a.vm_id} resumed",
                   a.node_name, a.job_id, a.vm_id)

    def _MoveSuspendedVM(self, a: MoveSuspendedVM) -> None:
        vm = self.one.vm(a.vm_id)
        need_cpu, need_mem_kb = int(round(vm.cpu * 100)), vm.memory_mb * 1024
        room = sorted((h for h in self.one.host_capacities()
                       if h.schedulable and h.name != vm.host
                       and h.max_cpu - h.cpu_usage >= need_cpu
                       and h.max_mem_kb - h.mem_usage_kb >= need_mem_kb),
                      key=lambda h: (h.cpu_usage - h.max_cpu, h.name))
        if not room:  # resumed where it is: a disabled host still runs the VMs it has
            self._note("vm.migrate.skipped", f"job {a.job_id}: VM {a.vm_id} stays on host "
                       f"{a.from_host} (not enabled): no enabled host has room "
                       "for it", a.node_name, a.job_id, a.vm_id)
            self._RestoreVM(RestoreVM(a.vm_id, a.node_name, a.job_id))
            return
        target = room[0]
        try:
            self.one.migrate(a.vm_id, target.host_id, live=False)
        except VclusterError as exc:  # refused (rights, state): resumed where it is
            self._note("vm.migrate.skipped", f"job {a.job_id}: VM {a.vm_id} stays on host "
                       f"{a.from_host}: {exc}", a.node_name, a.job_id, a.vm_id)
            self._RestoreVM(RestoreVM(a.vm_id, a.node_name, a.job_id))
            return
        self._note("vm.migrated", f"job {a.job_id}: VM {a.vm_id} ({vm.state_name}) migrated "
                   f"cold from {a.from_host} (not enabled) to {target.name}, to be resumed "
                   "there", a.node_name, a.job_id, a.vm_id)

    def _moved(self, a: FinishResume) -> list[tuple[str, int, str, str]]:
        """(node, VM, old host, new host) of the VMs back on another host: their last two
        history records differ (a resume of a STOPPED VM or a migration adds one)."""
        moved = []
        for node, vm_id in a.stopped_vms:
            try:
                vm = self.one.vm(vm_id)
            except VclusterError as exc:  # only the event is lost
                log.warning("cannot read VM %d's hosts: %s", vm_id, exc)
                continue
            if vm.previous_host and vm.previous_host != vm.host:
                moved.append((node, vm_id, vm.previous_host, vm.host))
        return moved

    def _FinishResume(self, a: FinishResume) -> None:
        if a.redeliver:
            # Slurm resumed the job while its VMs were stopped: slurmd never got the message
            # and the job's processes are still stopped. Say it again in two steps: suspend
            # now, the resume REDELIVER_GAP_S later (the plan's next step, rows marked as
            # suspended by vcluster for the job itself); sent together slurmd may apply the
            # resume first. The DRAIN stays until then.
            with db.transaction(self.sessions) as s:
                for row in s.scalars(select(db.Suspension).where(
                        db.Suspension.job_id == a.job_id)):
                    row.by_job, row.updated_at = a.job_id, self.now()
            self.slurm.suspend(a.job_id)
            self._note("job.redeliver", f"job {a.job_id} resumed by Slurm while its VMs were "
                       f"stopped (slurmd never got it): VMs back {a.seconds:.1f} s after their "
                       f"resume, job suspended again, to be resumed in {REDELIVER_GAP_S:g} s",
                       None, a.job_id)
            return
        moved = self._moved(a)
        if a.node_names:
            try:
                self.slurm.update_nodes(list(a.node_names), state="RESUME")
            except VclusterError as exc:  # the plan lifts it later (_lift_drains)
                log.warning("cannot lift the DRAIN of %s: %s", ",".join(a.node_names), exc)
        if a.slurm_resume:
            self.slurm.resume(a.job_id)
        with db.transaction(self.sessions) as s:
            s.execute(delete(db.Suspension).where(db.Suspension.job_id == a.job_id))
            for node, vm_id, old, new in moved:
                db.record_event(s, "vm.migrated", f"job {a.job_id}: VM {vm_id} resumed on "
                                f"host {new}, suspended on {old}", node_name=node,
                                job_id=a.job_id, vm_id=vm_id, at=self.now())
            how = "resumed by vcluster" if a.slurm_resume else "resumed by Slurm"
            db.record_event(s, "job.resumed", f"job {a.job_id} running again ({how}): VMs "
                            f"back {a.seconds:.1f} s after their resume", job_id=a.job_id,
                            at=self.now())

    def _DropSuspension(self, a: DropSuspension) -> None:
        with db.transaction(self.sessions) as s:
            s.execute(delete(db.Suspension).where(
                db.Suspension.node_name.in_(a.node_names)))
            for name in a.node_names:
                db.record_event(s, "suspension.dropped", f"job {a.job_id}: {a.reason}",
                                node_name=name, job_id=a.job_id, at=self.now())
