"""Act: carry out the planner's actions, each on its own, recording every step.

Why it exists: this is the only place the controller changes the world. Each action is
isolated (an exception is logged and recorded as an event; the next action still runs) and
follows "record intent, commit, call the outside system, record the result": no database
transaction is held across an XML-RPC or scontrol call. Temporary OpenNebula errors leave a
launch ``requested`` for the planner to retry after its backoff; permanent ones give the
node up with a reason Slurm shows (``vcluster: ...``), so Slurm requeues the job.
A run of boots goes out ``controller.boot_concurrency`` at once (:mod:`boot_pool`): only
their OpenNebula calls leave this thread, each after its intent is committed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from vcluster import db
from vcluster.config import Config
from vcluster.controller import join_tokens
from vcluster.controller.actions import (
    Action,
    AdoptVM,
    BackoffNodes,
    BootEarly,
    BootStandby,
    BootVM,
    ClaimStandby,
    ClearBackoff,
    ClearReason,
    CloseLaunch,
    FailNode,
    HoldJob,
    MarkHandled,
    MarkUp,
    NoteKept,
    PowerDown,
    RequeueJob,
    ResetNode,
    ResumeVM,
    SetBackoff,
    SetDrain,
    SetNodeAddr,
    StartNow,
    TerminateVM,
    Unplaceable,
    UpsertJob,
)
from vcluster.controller.backoff import capacity_cause
from vcluster.controller.boot_pool import BootPool, BootSteps, run_inline
from vcluster.controller.node_addr import ADDR_WAIT_S, AddrBatch, AddrUpdates, set_node_addrs
from vcluster.controller.observe import UNPLACEABLE_EVENT
from vcluster.controller.ports import OnePort, SlurmPort
from vcluster.controller.preempt_act import PreemptActs
from vcluster.controller.standby_act import (
    boot_early_steps,
    boot_standby_steps,
    claim_standby,
    claim_standbys,
)
from vcluster.errors import OneNotFound, VclusterError
from vcluster.metrics import Metrics
from vcluster.one_vm import VM
from vcluster.slurm_parse import compress_hostlist
from vcluster.vm_events import RESUMED_REASON, lost_message
from vcluster.vmtemplate import GuestContext, bootstrap_script_bytes, worker_vm_extra

log = logging.getLogger(__name__)

LOST_EVENT = db.VM_LOST_EVENT
SLURM_REASON_MAX = 200
"""Longest node reason or AdminComment vcluster gives Slurm; events keep the whole text."""
_ELIDED = " ... "


def slurm_reason(text: str, limit: int = SLURM_REASON_MAX) -> str:
    """``text`` within ``limit`` characters for Slurm: its start (what failed) and its end
    (where oned's message says what to do: "Set NETWORK_UNAME or NETWORK_UID") are kept, the
    middle is elided."""
    if len(text) <= limit:
        return text
    head = limit // 3
    return text[:head].rstrip() + _ELIDED + text[len(text) - (limit - head - len(_ELIDED)):]


@dataclass
class ActResult:
    done: int = 0
    failed: int = 0


def _epoch(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


_BOOTS = (BootVM, BootStandby, BootEarly)


def _run_kind(action: Action) -> type | None:
    """What makes consecutive actions one group (None: the action stays alone)."""
    if isinstance(action, _BOOTS):
        return BootVM
    return type(action) if isinstance(action, (UpsertJob, ClaimStandby)) else None


def _runs(actions: Iterable[Action]) -> list[list[Action]]:
    """The actions in order: each consecutive run of UpsertJob (written in one transaction),
    of ClaimStandby (:func:`standby_act.claim_standbys`) or of boots (:mod:`boot_pool`) as
    one group, every other action alone."""
    groups: list[list[Action]] = []
    for action in actions:
        kind = _run_kind(action)
        if groups and kind is not None and _run_kind(groups[-1][0]) is kind:
            groups[-1].append(action)
        else:
            groups.append([action])
    return groups


def _record_lifetime(row: db.Launch, vm: VM | None, now: datetime) -> None:
    """An ending launch's VM lifetime and host: OpenNebula's STIME/ETIME when it has them
    (ETIME is 0 until the VM is DONE: then the terminate just sent ends it, ``now``)."""
    if vm is not None:
        row.vm_started_at = _epoch(vm.start_time or None) or row.vm_started_at
        row.host = vm.host or row.host
    if row.vm_id is not None and row.vm_started_at is not None:
        row.vm_ended_at = _epoch(vm.end_time or None) if vm is not None else None
        row.vm_ended_at = row.vm_ended_at or now


class Actor(PreemptActs):
    """Carries out actions against Slurm, OpenNebula and the database (the preemption
    actions' handlers come from :class:`PreemptActs`)."""

    def __init__(self, config: Config, sessions: sessionmaker[Session], slurm: SlurmPort,
                 one: OnePort, guest: GuestContext, *, guest_script: bytes | None = None,
                 now: Callable[[], datetime] = db.utcnow, metrics: Metrics | None = None,
                 one_client: Callable[[], OnePort] | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        """``one_client`` makes the OpenNebula client of each boot worker (a pass's boots go
        out ``controller.boot_concurrency`` at once, :mod:`boot_pool`); None: the workers
        share ``one``, which must then be thread-safe (the tests' fakes). ``monotonic``
        and ``sleep`` pace the boots that carry a ``not_before_s``."""
        self.config = config
        self.sessions = sessions
        self.slurm = slurm
        self.one = one
        self.guest = guest
        self.metrics = metrics
        self._guest_script = guest_script
        self.now = now
        self._template_ids: dict[str, int] = {}
        self._addrs: AddrBatch | None = None
        concurrency = config.controller.boot_concurrency
        self._boot_pool = None if concurrency <= 1 else BootPool(
            concurrency, one_client or (lambda: one), monotonic=monotonic, sleep=sleep)
        self._monotonic = monotonic
        self._sleep = sleep
        self._addr_updates = AddrUpdates()
        self._started = 0.0

    # --- the pass ------------------------------------------------------------------------------

    def act(self, actions: Iterable[Action]) -> ActResult:
        result = ActResult()
        self._addrs = AddrBatch(self.slurm, self.one, self.sessions, self.now,
                                updates=self._addr_updates)
        self._started = self._monotonic()  # the boots' not_before_s count from here
        try:
            for group in _runs(actions):
                if len(group) > 1 and isinstance(group[0], UpsertJob) and self._upsert_jobs(
                        group):
                    result.done += len(group)
                    continue
                claims = [a for a in group if isinstance(a, ClaimStandby)]
                if len(claims) > 1 and (counts := claim_standbys(self, claims)) is not None:
                    result.done += counts[0]
                    result.failed += counts[1]
                    continue
                if len(group) > 1 and isinstance(group[0], _BOOTS) and self._boot_pool:
                    self._boot_pool.run(group, self._boot_steps,
                                        lambda a, exc: self._count(a, result, exc),
                                        self._flush_addrs_if_due, not_before=self._slot)
                    continue
                for action in group:
                    self._wait_for_slot(action)
                    self._act_one(action, result)
                    self._flush_addrs_if_due()
        finally:
            self._flush_addrs()
            self._addrs.wait(ADDR_WAIT_S)  # the NodeAddr updates handed to the worker
            self._addrs = None
        return result

    def _slot(self, action: Action) -> float:
        """When a boot may go out (monotonic clock): its ``not_before_s`` after act began."""
        return self._started + getattr(action, "not_before_s", 0.0)

    def _wait_for_slot(self, action: Action) -> None:
        while (left := self._slot(action) - self._monotonic()) > 0:
            self._flush_addrs_if_due()
            self._sleep(min(left, 0.05))

    def _act_one(self, action: Action, result: ActResult) -> None:
        handler = getattr(self, "_" + type(action).__name__)
        try:
            handler(action)
        except Exception as exc:  # isolation: one failure does not stop the pass
            self._count(action, result, exc)
            return
        self._count(action, result, None)

    def _count(self, action: Action, result: ActResult, exc: Exception | None) -> None:
        """An action's end: done, or failed with ``exc`` (logged, and an event says so)."""
        if exc is None:
            result.done += 1
            return
        result.failed += 1
        log.error("action %s failed", action, exc_info=exc)
        self._event_safely("action.failed", f"{type(action).__name__} failed: {exc}",
                           node_name=getattr(action, "node_name", None))

    def _boot_steps(self, action: Action) -> BootSteps:
        if isinstance(action, BootStandby):
            return boot_standby_steps(self, action)
        if isinstance(action, BootEarly):
            return boot_early_steps(self, action)
        assert isinstance(action, BootVM)
        return self._boot_vm(action)

    def _flush_addrs_if_due(self) -> None:
        if self._addrs is not None and self._addrs.due():
            self._flush_addrs()

    def _upsert_jobs(self, group: list[Action]) -> bool:
        """A run of job rows in one transaction (a burst's 1,000 new jobs were 1,000
        commits); False if it failed, and then each is written alone (isolation)."""
        try:
            with db.transaction(self.sessions) as s:
                ids = [a.job_id for a in group if isinstance(a, UpsertJob)]
                known: dict[int, db.Job] = {}
                for i in range(0, len(ids), 500):  # read at once: no flush per row
                    known.update((j.job_id, j) for j in s.scalars(
                        select(db.Job).where(db.Job.job_id.in_(ids[i:i + 500]))))
                for a in group:
                    assert isinstance(a, UpsertJob)
                    self._upsert_job(s, a, self.now(), known.get(a.job_id), looked_up=True)
        except Exception as exc:
            log.warning("writing %d job rows at once failed (each is written alone): %s",
                        len(group), exc)
            return False
        return True

    def _flush_addrs(self) -> None:
        """NodeAddr of the VMs allocated since the last flush (:mod:`node_addr`)."""
        if self._addrs is None:
            return
        try:
            self._addrs.flush()
        except Exception:  # the next pass sets what is missing
            log.exception("setting NodeAddr of the VMs just allocated failed")

    def _event_safely(self, kind: str, message: str, *, node_name: str | None = None,
                      job_id: int | None = None) -> None:
        try:
            with db.transaction(self.sessions) as s:
                db.record_event(s, kind, message, node_name=node_name, job_id=job_id,
                                at=self.now())
        except Exception:
            log.exception("cannot record event %s: %s", kind, message)

    def _launch(self, s: Session, launch_id: int) -> db.Launch:
        row = s.get(db.Launch, launch_id)
        if row is None:
            raise LookupError(f"launch {launch_id} vanished")
        return row

    def _taken_over(self, launch_id: int) -> str:
        """What another command did to an open launch since the pass read it ('' if
        nothing): the plan fails a node only for a launch it saw open and not terminating,
        and ``vcluster drain-host`` (or an admin's terminate) records its intent on the
        launch before it terminates the VM, so a VM seen gone or shutting down may be
        that command's work, not a death."""
        with self.sessions() as s:
            row = s.get(db.Launch, launch_id)
            if row is None or row.ended_at is not None:
                return "its launch was closed"
            if row.state == "terminating":
                return f"its VM is being terminated ({row.reason})"
        return ""

    def _vm_record(self, launch_id: int | None, vm_id: int | None) -> VM | None:
        """The launch's VM as OpenNebula last knew it (its STIME, ETIME and host for usage
        accounting), read outside any transaction; None if there is none or it is unreadable."""
        if vm_id is None and launch_id is not None:
            with self.sessions() as s:
                vm_id = self._launch(s, launch_id).vm_id
        if vm_id is None:
            return None
        try:
            return self.one.vm(vm_id)
        except VclusterError as exc:
            log.info("VM %d unreadable for usage accounting (times from vcluster's clock): %s",
                     vm_id, exc)
            return None

    def _close(self, launch_id: int | None, state: str, reason: str, kind: str,
               node_name: str, vm_id: int | None = None, job_id: int | None = None) -> None:
        ending = launch_id is not None and state in ("terminated", "failed")
        vm = self._vm_record(launch_id, vm_id) if ending else None
        boot_failure: tuple[str, str] | None = None
        with db.transaction(self.sessions) as s:
            if launch_id is not None:
                row = self._launch(s, launch_id)
                if state == "failed" and row.state not in ("up", "terminating", "failed"):
                    boot_failure = (row.node_class, "allocate" if row.vm_id is None else "boot")
                row.state, row.reason, row.updated_at = state, reason, self.now()
                job_id = row.job_id if row.job_id is not None else job_id
                if ending:
                    row.ended_at = self.now()
                    _record_lifetime(row, vm, self.now())
            db.record_event(s, kind, reason, node_name=node_name, vm_id=vm_id, job_id=job_id,
                            at=self.now())
        if boot_failure is not None and self.metrics is not None:
            self.metrics.boot_failed(*boot_failure)

    # --- booting -----------------------------------------------------------------------------

    def _template_id(self, name: str) -> int:
        if name not in self._template_ids:
            self._template_ids[name] = self.one.template_id(name)
        return self._template_ids[name]

    def _BootVM(self, a: BootVM) -> None:
        run_inline(self._boot_vm(a), self.one)

    def _boot_vm(self, a: BootVM) -> BootSteps:
        """The steps of a boot (:mod:`boot_pool`): intent committed, then the instantiate
        (yielded: made on whichever client runs it), then its result recorded."""
        now = self.now()
        try:
            with db.transaction(self.sessions) as s:
                if a.launch_id is None:
                    row = db.Launch(node_name=a.node_name, node_class=a.node_class,
                                    job_id=a.job_id, state="allocating", attempts=1,
                                    reason="", created_at=now, updated_at=now)
                    s.add(row)
                    s.flush()
                else:
                    row = self._launch(s, a.launch_id)
                    row.state, row.attempts, row.updated_at = "allocating", row.attempts + 1, now
                    row.job_id = row.job_id if a.job_id is None else a.job_id
                row.cpus, row.memory_mb, row.template = a.cpus, a.memory_mb, a.template
                launch_id, attempt = row.id, row.attempts
                join_token = join_tokens.issue(s, launch_id=row.id, node_name=a.node_name,
                                               now=now,
                                               ttl_s=self.config.controller.resume_timeout_s)
                db.record_event(s, "vm.allocating",
                                f"attempt {attempt}: {a.cpus} CPUs, {a.memory_mb} MB from "
                                f"template {a.template}", node_name=a.node_name,
                                job_id=a.job_id, at=now)
        except IntegrityError:
            log.warning("node %s already has an open launch; not booting a second VM",
                        a.node_name)
            return
        try:
            if self._guest_script is None:
                self._guest_script = bootstrap_script_bytes()
            node_class = self.config.node_class(a.node_class)
            extra = worker_vm_extra(
                node_class=node_class, node_name=a.node_name, job_id=a.job_id,
                cluster=self.config.controller.cluster_name, cpus=a.cpus,
                memory_mb=a.memory_mb, context=self.guest, join_token=join_token,
                guest_script=self._guest_script)
            template_id = self._template_id(a.template)
            vm_id = yield lambda one: one.instantiate(template_id, a.node_name, extra)
        except VclusterError as exc:
            if isinstance(exc, OneNotFound):
                self._template_ids.pop(a.template, None)
            self._boot_failed(a, launch_id, attempt, exc)
            return
        if self.metrics is not None:
            self.metrics.launched(a.node_class)
        if self._addrs is not None:  # recorded with the others of the pass, NodeAddr set in
            self._addrs.add(launch_id, a.node_name, vm_id, a.job_id)  # one scontrol call
            return
        with db.transaction(self.sessions) as s:
            row = self._launch(s, launch_id)
            row.vm_id, row.state, row.reason, row.updated_at = vm_id, "booting", "", self.now()
            row.vm_started_at = self.now()  # oned's STIME replaces it when the launch ends
            db.record_event(s, "vm.allocated", f"VM {vm_id} allocated", node_name=a.node_name,
                            job_id=a.job_id, vm_id=vm_id, at=self.now())
        try:
            ips = self.one.vm(vm_id).ips
        except VclusterError as exc:
            log.warning("cannot read VM %d after allocating it: %s", vm_id, exc)
            return
        if ips:
            self._SetNodeAddr(SetNodeAddr(launch_id, a.node_name, ips[0]))

    def _boot_failed(self, a: BootVM, launch_id: int, attempt: int, exc: VclusterError) -> None:
        retries = 1 + len(self.config.opennebula.retry_delays_s)
        if capacity_cause(str(exc)) is not None:  # the plan backs the class off
            with db.transaction(self.sessions) as s:
                row = self._launch(s, launch_id)
                row.state, row.reason, row.updated_at = "requested", str(exc), self.now()
                db.record_event(s, "vm.allocate_refused", f"attempt {attempt}: {exc}",
                                node_name=a.node_name, job_id=a.job_id, at=self.now())
            return
        if exc.temporary and attempt < retries:
            with db.transaction(self.sessions) as s:
                row = self._launch(s, launch_id)
                row.state, row.reason, row.updated_at = "requested", str(exc), self.now()
                db.record_event(s, "vm.allocate_retry", f"attempt {attempt}/{retries} failed: "
                                f"{exc}", node_name=a.node_name, job_id=a.job_id, at=self.now())
            return
        self._FailNode(FailNode(a.node_name, f"vcluster: cannot boot a VM: {exc}", launch_id,
                                None, a.job_id))

    def _AdoptVM(self, a: AdoptVM) -> None:
        now = self.now()
        with db.transaction(self.sessions) as s:
            if a.launch_id is None:
                s.add(db.Launch(node_name=a.node_name, node_class=a.node_class, job_id=a.job_id,
                                vm_id=a.vm_id, state=a.state, ip=a.ip, attempts=1, reason="",
                                created_at=now, updated_at=now))
                how = "rebuilt the launch map from the VM's tags"
            else:
                row = self._launch(s, a.launch_id)
                row.vm_id, row.state, row.updated_at = a.vm_id, a.state, now
                how = "found the VM of an interrupted allocation"
            db.record_event(s, "vm.adopted", f"VM {a.vm_id}: {how}", node_name=a.node_name,
                            job_id=a.job_id, vm_id=a.vm_id, at=now)

    def _SetNodeAddr(self, a: SetNodeAddr) -> None:
        if self._addr_updates.inflight(a.launch_id):
            log.debug("NodeAddr of %s is being set (an earlier pass's batch)", a.node_name)
            return
        set_node_addrs(self.slurm, [(a.node_name, a.ip)])
        with db.transaction(self.sessions) as s:
            row = self._launch(s, a.launch_id)
            row.ip, row.updated_at = a.ip, self.now()
            db.record_event(s, "node.addr", f"NodeAddr set to {a.ip}", node_name=a.node_name,
                            vm_id=row.vm_id, job_id=row.job_id, at=self.now())

    def _MarkUp(self, a: MarkUp) -> None:
        with db.transaction(self.sessions) as s:
            row = self._launch(s, a.launch_id)
            resumed = row.reason == RESUMED_REASON
            row.state, row.updated_at = "up", self.now()
            node_class, allocated_at = row.node_class, row.vm_started_at
            if resumed:
                row.reason = ""
            db.record_event(s, "node.up", f"VM {a.vm_id} RUNNING again after its resume"
                            if resumed else f"node up {a.boot_s:.1f} s after its launch",
                            node_name=a.node_name, vm_id=a.vm_id, job_id=row.job_id,
                            at=self.now())
            job_id = row.job_id
            if resumed:  # the job its node served when the VM was lost
                job_id = s.scalars(select(db.Event.job_id).where(
                    db.Event.kind == LOST_EVENT, db.Event.vm_id == a.vm_id)
                    .order_by(db.Event.id.desc()).limit(1)).first()
            if job_id is not None:
                db.record_recovery(s, job_id, f"VM {a.vm_id}", at=self.now(),
                                   node_name=a.node_name, vm_id=a.vm_id)
        if self.metrics is not None and not resumed:
            boot_s = None if allocated_at is None else (
                self.now() - allocated_at).total_seconds()
            self.metrics.node_up(node_class, boot_s=boot_s, ready_s=a.boot_s)

    def _BootStandby(self, a: BootStandby) -> None:
        run_inline(boot_standby_steps(self, a), self.one)

    def _BootEarly(self, a: BootEarly) -> None:
        run_inline(boot_early_steps(self, a), self.one)

    def _ClaimStandby(self, a: ClaimStandby) -> None:
        claim_standby(self, a)

    # --- ending ------------------------------------------------------------------------------

    def _TerminateVM(self, a: TerminateVM) -> None:
        self.one.terminate(a.vm_id, hard=a.hard)
        kind = a.event_kind or ("vm.terminated" if a.close_as != "failed" else "vm.failed")
        verb = "terminate-hard" if a.hard else "terminate"
        self._close(a.launch_id, a.close_as, a.reason, kind, a.node_name, a.vm_id, a.job_id)
        log.info("VM %d (%s): %s sent: %s", a.vm_id, a.node_name, verb, a.reason)

    def _CloseLaunch(self, a: CloseLaunch) -> None:
        self._close(a.launch_id, a.state, a.reason, "launch.closed", a.node_name)

    def _FailNode(self, a: FailNode, close_as: str = "failed", kind: str = "node.failed"
                  ) -> None:
        if a.launch_id is not None and (taken := self._taken_over(a.launch_id)):
            log.info("node %s not failed (%s): %s since this pass read it", a.node_name,
                     a.reason, taken)
            return
        reason = slurm_reason(a.reason)
        slurm_error = ""
        try:
            # DOWN first, while the VM's processes may still run: Slurm requeues the node's
            # job for a node failure, so it never ends FAILED because its VM is torn down.
            self.slurm.update_nodes(a.node_name, state="DOWN", reason=reason)
        except VclusterError as exc:
            slurm_error = f" (could not tell Slurm: {exc})"
            log.warning("cannot set node %s down: %s", a.node_name, exc)
        if a.vm_id is not None:
            try:  # nothing of a failed node's VM is worth a clean shutdown: a power cut
                self.one.terminate(a.vm_id, hard=True)
            except VclusterError as exc:  # the orphan sweep terminates it later
                log.warning("cannot terminate VM %d of failed node %s: %s", a.vm_id,
                            a.node_name, exc)
        if not slurm_error:
            try:
                # POWER_DOWN_FORCE returns the node to the powered-down pool (reason kept)
                # so it can be resumed again.
                self.slurm.update_nodes(a.node_name, state="POWER_DOWN_FORCE", reason=reason)
            except VclusterError as exc:
                slurm_error = f" (could not power it down: {exc})"
                log.warning("cannot power node %s down: %s", a.node_name, exc)
        if a.event:
            vm_id = a.vm_id
            if vm_id is None and a.launch_id is not None:  # gone: its launch still names it
                with self.sessions() as s:
                    vm_id = self._launch(s, a.launch_id).vm_id
            job = f"job {a.job_id} requeued by Slurm" if a.job_id is not None else "no job"
            self._event(LOST_EVENT, lost_message(
                vm_id, a.seen, a.event, "fail", self._class_name(a.node_name),
                f"node set DOWN ({job}), VM terminated"), a.node_name, a.job_id, vm_id)
        self._close(a.launch_id, close_as, a.reason + slurm_error, kind, a.node_name, a.vm_id,
                    job_id=a.job_id)

    def _ResumeVM(self, a: ResumeVM) -> None:
        self.one.action("resume", a.vm_id)
        job_id = a.job_id
        if a.launch_id is not None:
            with db.transaction(self.sessions) as s:
                row = self._launch(s, a.launch_id)
                job_id = job_id if job_id is not None else row.job_id
                # booting again: the pass that sees it RUNNING marks it up, and that records
                # how long its job went without a working node
                row.state, row.reason, row.updated_at = "booting", RESUMED_REASON, self.now()
        self._event(LOST_EVENT, lost_message(a.vm_id, a.seen, a.event, "resume",
                                             self._class_name(a.node_name), "VM resumed"),
                    a.node_name, job_id, a.vm_id)

    def _NoteKept(self, a: NoteKept) -> None:
        message = lost_message(a.vm_id, a.seen, a.event, "keep", self._class_name(a.node_name),
                               "VM and job left running")
        with db.transaction(self.sessions) as s:
            last = s.scalars(select(db.Event.message).where(
                db.Event.kind == LOST_EVENT, db.Event.vm_id == a.vm_id)
                .order_by(db.Event.id.desc()).limit(1)).first()
            if last != message:
                db.record_event(s, LOST_EVENT, message, node_name=a.node_name,
                                job_id=a.job_id, vm_id=a.vm_id, at=self.now())

    def _class_name(self, node_name: str) -> str:
        nc = self.config.class_of_node(node_name)
        return nc.name if nc else "?"

    def _event(self, kind: str, message: str, node_name: str, job_id: int | None,
               vm_id: int | None) -> None:
        with db.transaction(self.sessions) as s:
            db.record_event(s, kind, message, node_name=node_name, job_id=job_id, vm_id=vm_id,
                            at=self.now())

    def _ClearReason(self, a: ClearReason) -> None:
        # RESUME lifts the drain of the prolog's POWER_DOWN_ASAP and its reason; the node
        # stays powered down
        self.slurm.update_nodes(a.node_name, state="RESUME")
        self._event_safely("node.reason_cleared", f"cleared stale reason {a.reason!r}",
                           node_name=a.node_name)

    def _PowerDown(self, a: PowerDown) -> None:
        self.slurm.update_nodes(list(a.node_names), state=a.state)
        log.info("asked Slurm to power down %s (%s): %s", compress_hostlist(a.node_names),
                 a.state, a.reason)
        for name in a.node_names:
            self._event_safely("node.power_down", a.reason, node_name=name)

    def _ResetNode(self, a: ResetNode) -> None:
        if a.state == "RESUME":
            self.slurm.update_nodes(a.node_name, state="RESUME")
            message = f"returned to service, powered down (was DOWN: {a.reason})"
        else:
            self.slurm.update_nodes(a.node_name, state=a.state,
                                    reason=slurm_reason(a.reason))
            message = f"powering down (DOWN: {a.reason})"
        self._event_safely("node.reset", message, node_name=a.node_name)

    # --- bookkeeping ---------------------------------------------------------------------------

    def _UpsertJob(self, a: UpsertJob) -> None:
        with db.transaction(self.sessions) as s:
            self._upsert_job(s, a, self.now())

    @staticmethod
    def _upsert_job(s: Session, a: UpsertJob, now: datetime, row: db.Job | None = None, *,
                    looked_up: bool = False) -> None:
        """Write one job row; ``looked_up``: ``row`` is the row read already (None: new)."""
        if not looked_up:
            row = s.get(db.Job, a.job_id)
        if row is None:
            row = db.Job(job_id=a.job_id, first_seen=now, user=a.user, state=a.state,
                         nodes=a.nodes, account=a.account)
            s.add(row)
        if a.gone:
            row.ended_at = row.ended_at or now
            return
        row.state, row.nodes, row.exit_code = a.state, a.nodes, a.exit_code
        row.user = a.user or row.user
        row.account = a.account or row.account
        row.node_class = a.node_class or row.node_class
        row.template = a.template or row.template
        row.started_at = _epoch(a.started_at) or row.started_at
        row.ended_at = _epoch(a.ended_at)

    def _StartNow(self, a: StartNow) -> None:
        self.slurm.update_job(a.job_id, StartTime="now")
        try:  # AdminComment: users see why (fsub --wait, scontrol show job); Comment is theirs
            self.slurm.update_job(a.job_id, AdminComment=slurm_reason(a.reason))
        except VclusterError as exc:  # eligible is what matters; the event keeps the reason
            log.warning("job %d made eligible, but its AdminComment was refused: %s",
                        a.job_id, exc)
        self._event_safely("job.start_now", f"job {a.job_id} eligible now: {a.reason}",
                           job_id=a.job_id)

    def _RequeueJob(self, a: RequeueJob) -> None:
        self.slurm.requeue(a.job_id)
        self._event_safely("job.requeued", f"job {a.job_id} requeued: {a.reason}",
                           job_id=a.job_id)

    def _HoldJob(self, a: HoldJob) -> None:
        self.slurm.hold(a.job_id)
        try:
            self.slurm.update_job(a.job_id, AdminComment=slurm_reason(a.reason))
        except VclusterError as exc:  # held is what matters; the reason is in the event log
            log.warning("job %d held, but its AdminComment was refused: %s", a.job_id, exc)
        self._event_safely("job.held", f"job {a.job_id} held: {a.reason}; release it with "
                           f"`scontrol release {a.job_id}` once the cause is fixed",
                           job_id=a.job_id)

    def _SetDrain(self, a: SetDrain) -> None:
        # `vcluster drain`/`undrain` may have changed the table since this pass read it
        # (they write it before telling Slurm): act only where it still says the same.
        with self.sessions() as s:
            drained = set(s.scalars(select(db.Drain.target)))
        names = [n for n in a.node_names if a.drain == bool(
            {n, getattr(self.config.class_of_node(n), "name", "")} & drained)]
        if not names:
            return
        if a.drain:
            self.slurm.update_nodes(names, state="DRAIN", reason=slurm_reason(a.reason))
        else:
            self.slurm.update_nodes(names, state="RESUME")
        for name in names:
            self._event_safely("node.drain" if a.drain else "node.undrain",
                               a.reason if a.drain else "drain lifted: DRAIN cleared",
                               node_name=name)

    # --- capacity back-off ---------------------------------------------------------------------

    def _Unplaceable(self, a: Unplaceable) -> None:
        # as a failed node (DOWN: Slurm requeues the job; back to the powered-down pool), but
        # the launch closes "terminated": the job's VM did not fail, its class has no room
        self._FailNode(FailNode(a.node_name, a.reason, a.launch_id, a.vm_id, a.job_id),
                       close_as="terminated", kind=UNPLACEABLE_EVENT)
        if self.metrics is not None and a.cause != "backoff":
            self.metrics.boot_failed(a.node_class, a.cause)

    def _SetBackoff(self, a: SetBackoff) -> None:
        now = self.now()
        with db.transaction(self.sessions) as s:
            row = s.get(db.ClassBackoff, (a.node_class, a.template))
            if row is None:
                row = db.ClassBackoff(node_class=a.node_class, template=a.template, since=now)
                s.add(row)
            row.level, row.cause, row.reason, row.until = a.level, a.cause, a.reason, a.until
            db.record_event(s, "class.backoff", f"class {a.node_class}: template {a.template} "
                            f"backed off (#{a.level}, {a.cause}) until "
                            f"{a.until:%Y-%m-%dT%H:%M:%S}Z: {a.reason}", at=now)
        log.warning("class %s: template %s backed off (#%d) until %s: %s", a.node_class,
                    a.template, a.level, a.until, a.reason)

    def _ClearBackoff(self, a: ClearBackoff) -> None:
        with db.transaction(self.sessions) as s:
            row = s.get(db.ClassBackoff, (a.node_class, a.template))
            if row is not None:
                s.delete(row)
            db.record_event(s, "class.recovered", f"class {a.node_class}: template "
                            f"{a.template} back in service: {a.reason}", at=self.now())
        log.info("class %s: template %s back in service: %s", a.node_class, a.template,
                 a.reason)

    def _BackoffNodes(self, a: BackoffNodes) -> None:
        if a.drain:
            self.slurm.update_nodes(list(a.node_names), state="DRAIN",
                                    reason=slurm_reason(a.reason))
        else:
            self.slurm.update_nodes(list(a.node_names), state="RESUME")
        for name in a.node_names:
            self._event_safely("node.backoff" if a.drain else "node.backoff_lifted", a.reason,
                               node_name=name)

    def _MarkHandled(self, a: MarkHandled) -> None:
        with db.transaction(self.sessions) as s:
            s.execute(update(db.HookRequest).where(db.HookRequest.id.in_(a.request_ids))
                      .values(handled_at=self.now()))
