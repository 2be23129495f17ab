"""The controller's loop: a pass when a hook wakes it, and every ``interval_s`` anyway.

Why it exists: it ties observe, plan and act together and owns the daemon's lifecycle. A
pass writes the heartbeat (hooks refuse when it is stale), reads the whole picture (or
skips the pass if any read fails), plans, and acts. While VMs are booting the next pass
comes sooner (``BUSY_INTERVAL_S``) so NodeAddr is set and boots are noticed promptly. Only
one controller may run per state directory (an flock'ed ``controller.lock``); with PostgreSQL
several may run on different hosts, and only the leader (:mod:`vcluster.controller.leader`)
runs passes: it checks it still leads before each step, the others stand by.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Result, delete
from sqlalchemy.orm import Session, sessionmaker

from vcluster import __version__, db, public_status
from vcluster.config import Config
from vcluster.controller.act import Actor, ActResult
from vcluster.controller.actions import Action, BootVM, MarkHandled, UpsertJob
from vcluster.controller.boot_rate import total_limit
from vcluster.controller.leader import HeartbeatWatch, Leadership, SoleLeader
from vcluster.controller.observe import Observed, PictureIncomplete, observe
from vcluster.controller.plan import plan
from vcluster.controller.ports import OnePort, SlurmPort
from vcluster.controller.reserve_plan import run_reservations, spare_held
from vcluster.errors import VclusterError
from vcluster.metrics import Metrics
from vcluster.public_status import ControllerStatus
from vcluster.wake import WakeListener

log = logging.getLogger(__name__)

BUSY_INTERVAL_S = 1.0
LEAD_EVENT = "controller.lead"
DEPOSE_EVENT = "controller.depose"
PRUNE_EVERY_S = 3600.0
HANDLED_REQUEST_KEEP_S = 7 * 86400.0
_BOOKKEEPING = (UpsertJob, MarkHandled)
_TRANSITIONAL = frozenset({"requested", "allocating", "booting", "terminating"})


def _deleted(result: Result[Any]) -> int:
    """Rows a DELETE removed (``rowcount`` lives on the CursorResult it returns)."""
    return int(getattr(result, "rowcount", 0) or 0)


class AlreadyRunning(VclusterError):
    """Another controller holds this state directory's lock."""


@dataclass
class PassReport:
    actions: list[Action] = field(default_factory=list)
    done: int = 0
    failed: int = 0
    skipped: str = ""
    """Why the pass was skipped (a read failed), or ""."""
    busy: bool = False
    """Launches are in flight: the next pass should come soon."""
    boots: int = 0
    """VM allocations this pass planned (BootVM)."""
    duration_s: float = 0.0
    standby: bool = False
    """Another controller leads: this one only stands by."""


class Controller:
    """One pass at a time over a consistent picture."""

    def __init__(self, config: Config, sessions: sessionmaker[Session], slurm: SlurmPort,
                 one: OnePort, actor: Actor, *,
                 now: Callable[[], datetime] = db.utcnow, metrics: Metrics | None = None,
                 leadership: Leadership | None = None) -> None:
        self.config = config
        self.leadership: Leadership = leadership or SoleLeader()
        self._role = ""
        self._role_since = now()
        self._watch = HeartbeatWatch()
        self.metrics = metrics
        self.sessions = sessions
        self.slurm = slurm
        self.one = one
        self.actor = actor
        self.now = now
        self._pruned_at = float("-inf")
        self._status_unwritable = False

    def beat(self) -> None:
        """The leader writes the heartbeat (hooks check it); with a shared database every
        controller also rewrites its own row (``vcluster status`` lists them)."""
        leading = self.leadership.leading
        now = self.now()
        try:
            with db.transaction(self.sessions) as s:
                if leading and self.leadership.shared and not self.leadership.holds_in(s):
                    leading = False  # deposed while it hung: the fence (see leader.py)
                role = "leader" if leading else "standby"
                if role != self._role:
                    self._role, self._role_since = role, now
                if leading:
                    db.beat(s, at=now)
                if self.leadership.shared:
                    db.see_controller(s, role, self._role_since, at=now)
        except Exception as exc:
            log.error("cannot write the heartbeat: %s", exc)
            return
        if self.metrics is not None:
            if leading:
                self.metrics.beat()
            self.metrics.leading(leading)
        # this host's controller lives (leading or standing by): what fsub here says
        self.publish(ControllerStatus(True, now, socket.gethostname(), os.getpid(), __version__))

    def publish(self, status: ControllerStatus) -> None:
        """Write the world-readable status file fsub reads (a failure is said once)."""
        path = self.config.controller.status_file
        if not path:
            return
        try:
            public_status.write(path, status)
        except OSError as exc:
            if not self._status_unwritable:
                log.warning("cannot write the status file %s (fsub cannot tell users when "
                            "the controller is down): %s", path, exc)
            self._status_unwritable = True
        else:
            self._status_unwritable = False

    def stopped(self) -> None:
        """Mark the status file stopped (the controller is stopping cleanly)."""
        self.publish(ControllerStatus(False, self.now(), socket.gethostname(), os.getpid(),
                                      __version__))

    def lead(self) -> bool:
        """Keep or take the lead; on taking it, say so (log, event, heartbeat)."""
        was = self.leadership.leading
        leading = self.leadership.lead()
        if not leading and self.leadership.shared and self._watch_leader():
            leading = self.leadership.lead()
        if leading != was or not self._role:
            self._took(leading)
        return leading

    def _watch_leader(self) -> bool:
        """A leader that wrote no heartbeat for ``leader_lease_s`` hangs: end its lock
        session, so that this controller (or another standby) takes the lead; whether it
        was ended."""
        lease_s = self.config.controller.leader_lease_s
        try:
            with self.sessions() as s:
                hb = db.heartbeat(s)
                beat = None if hb is None else (hb.host, hb.pid, hb.at)
        except Exception as exc:
            log.warning("cannot read the leader's heartbeat: %s", exc)
            return False
        silent_s = self._watch.silent_for_s(beat)
        if silent_s < lease_s or not self.leadership.depose():
            return False
        self._watch.reset()
        who = "the leader" if beat is None else f"the leader ({beat[0]} pid {beat[1]})"
        message = (f"{who} wrote no heartbeat for {silent_s:.1f} s (controller."
                   f"leader_lease_s {lease_s:g}): its lock's database session was ended, "
                   "so that a standby leads")
        log.warning("%s", message)
        try:
            with db.transaction(self.sessions) as s:
                db.record_event(s, DEPOSE_EVENT, message, at=self.now())
        except Exception as exc:
            log.error("cannot record ending the hung leader's session: %s", exc)
        return True

    def _took(self, leading: bool) -> None:
        if not self.leadership.shared:
            self.beat()
            return
        if not leading:
            log.info("standing by: another controller leads")
            self.beat()
            return
        try:
            with db.transaction(self.sessions) as s:
                last = db.heartbeat(s)
                before = (f" (the last leader's heartbeat, {last.host} pid {last.pid}, is "
                          f"{(self.now() - last.at).total_seconds():.1f} s old)"
                          if last is not None else "")
                message = f"controller {socket.gethostname()} pid {os.getpid()} leads{before}"
                s.execute(delete(db.ControllerSeen).where(
                    db.ControllerSeen.role == "leader",
                    (db.ControllerSeen.host != socket.gethostname())
                    | (db.ControllerSeen.pid != os.getpid())))
                db.record_event(s, LEAD_EVENT, message, at=self.now())
            log.info("%s", message)
        except Exception as exc:
            log.error("cannot record taking the lead: %s", exc)
        self.beat()

    def run_pass(self) -> PassReport:
        if not self.lead():
            return PassReport(standby=True)
        report = self._run_pass()
        if self.metrics is not None:
            self.metrics.pass_done(report.duration_s, skipped=bool(report.skipped))
        return report

    def _run_pass(self) -> PassReport:
        started = time.monotonic()
        self.beat()
        try:
            observed: Observed = observe(self.config, self.sessions, self.slurm, self.one,
                                         self.now())
        except PictureIncomplete as exc:
            log.warning("skipping this pass: %s", exc)
            return PassReport(skipped=str(exc), busy=True,
                              duration_s=time.monotonic() - started)
        observed_s = time.monotonic() - started
        if self.metrics is not None:
            self.metrics.picture(observed, self.config)
        try:
            actions = plan(observed, self.config)
        except Exception as exc:  # a bug must not kill the daemon: log it, try next pass
            log.exception("planning failed; skipping this pass")
            return PassReport(skipped=f"planning failed: {exc}",
                              duration_s=time.monotonic() - started)
        try:
            held = run_reservations(self.sessions, self.slurm, self.now())
        except VclusterError as exc:  # reservations wait a pass; the rest goes on
            log.warning("reservations: %s", exc)
            held = frozenset()
        actions = spare_held(actions, held)
        acting = time.monotonic()
        result = self._act(actions)
        acted_s = time.monotonic() - acting
        report = PassReport(
            actions=actions, done=result.done, failed=result.failed,
            busy=any(la.state in _TRANSITIONAL for la in observed.launches)
            or any(isinstance(a, BootVM) for a in actions),
            boots=sum(isinstance(a, BootVM) for a in actions),
            duration_s=time.monotonic() - started)
        names = action_summary(actions)
        level = logging.INFO if any(not isinstance(a, _BOOKKEEPING) for a in actions) \
            else logging.DEBUG
        log.log(level, "pass: %d actions (%d failed) in %.3f s (observe %.3f, act %.3f; reads: "
                "database %.3f, Slurm %.3f, OpenNebula %.3f): %s", len(actions), result.failed,
                report.duration_s, observed_s, acted_s, *observed.read_s,
                names or "nothing to do")
        self.beat()
        if time.monotonic() - self._pruned_at > PRUNE_EVERY_S:
            self.prune()
        return report

    def _act(self, actions: list[Action]) -> ActResult:
        """Act on ``actions``; with several controllers, one step at a time while this one
        still leads (the fence: a leader that lost its lock stops at once)."""
        if not self.leadership.shared:
            return self.actor.act(actions)
        result = ActResult()
        for i, action in enumerate(actions):
            if not self.leadership.leads():
                log.warning("lost the lead: %d of %d actions left to the new leader",
                            len(actions) - i, len(actions))
                self._took(False)
                break
            step = self.actor.act([action])
            result.done += step.done
            result.failed += step.failed
        return result

    def prune(self) -> None:
        """Forget handled hook requests older than HANDLED_REQUEST_KEEP_S, events, ended
        launches and ended jobs older than ``controller.history_days``, and expired join
        tokens."""
        self._pruned_at = time.monotonic()
        now = self.now()
        cutoff = now - timedelta(seconds=HANDLED_REQUEST_KEEP_S)
        history = now - timedelta(days=self.config.controller.history_days)
        try:
            with db.transaction(self.sessions) as s:
                counts = {what: _deleted(s.execute(statement)) for what, statement in (
                    ("hook requests", delete(db.HookRequest).where(
                        db.HookRequest.handled_at.is_not(None),
                        db.HookRequest.handled_at < cutoff)),
                    ("events", delete(db.Event).where(db.Event.at < history)),
                    ("launches", delete(db.Launch).where(
                        db.Launch.ended_at.is_not(None), db.Launch.ended_at < history)),
                    ("jobs", delete(db.Job).where(
                        db.Job.ended_at.is_not(None), db.Job.ended_at < history)),
                    ("expired join tokens", delete(db.JoinToken).where(
                        db.JoinToken.expires_at < now)),
                )}
            if any(counts.values()):
                log.info("pruned %s", ", ".join(f"{n} {what}" for what, n in counts.items()))
        except Exception as exc:
            log.error("cannot prune old history: %s", exc)


class Heartbeater(threading.Thread):
    """Beats every ``period_s`` while the daemon lives, so a slow pass (OpenNebula timing
    out and being retried) does not make the hooks think the controller is gone. Every
    outside call has a timeout, so a pass cannot hang forever behind a live heartbeat."""

    def __init__(self, beat: Callable[[], None], period_s: float) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.beat = beat
        self.period_s = period_s
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.period_s):
            self.beat()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)


def run_loop(controller: Controller, listener: WakeListener | None, *, interval_s: float,
             stop: threading.Event, once: bool = False) -> int:
    """Run passes until ``stop`` is set (or once). Returns the number of passes run."""
    heart: Heartbeater | None = None
    if not once:
        settings = controller.config.controller
        heart = Heartbeater(controller.beat, min(  # a standby deposes a leader silent a lease
            interval_s, settings.heartbeat_stale_s / 4, settings.leader_lease_s / 3))
        heart.start()
    try:
        return _passes(controller, listener, interval_s, stop, once)
    finally:
        if heart is not None:
            heart.stop()


def _passes(controller: Controller, listener: WakeListener | None, interval_s: float,
            stop: threading.Event, once: bool) -> int:
    passes = 0
    while not stop.is_set():
        try:
            report = controller.run_pass()
        except Exception as exc:  # the daemon outlives a bug or a foreign exception
            log.exception("pass failed")
            report = PassReport(skipped=f"pass failed: {exc}", busy=True)
        passes += 1
        if once:
            break
        wait_s = next_pass_in_s(report, controller.config, interval_s)
        if report.standby:
            wait_s = controller.config.controller.leader_poll_s
        if listener is not None:
            listener.wait(wait_s)
        else:
            stop.wait(wait_s)
    return passes


def next_pass_in_s(report: PassReport, config: Config, interval_s: float) -> float:
    """Seconds from the end of a pass to the next. While busy, passes start BUSY_INTERVAL_S
    apart (a pass that sent a burst of boots took part of that time): boots held back by the
    rate limits go out when it allows. A pass that sent boots may have been cut by the total
    limit (the plan says only what goes out): the next starts once the bucket holds another
    burst (``burst / rate`` seconds) if that is sooner. A burst of 1,000 at 200/s, burst 100,
    took ten passes a second apart (100/s) where the limit allows 200/s; at worst this is
    one more pass over a picture with nothing left to boot."""
    if not report.busy:
        return interval_s
    wait_s = min(interval_s, BUSY_INTERVAL_S)
    rate, burst = total_limit(config)
    if report.boots:
        wait_s = min(wait_s, burst / rate)
    return max(0.0, wait_s - report.duration_s)


def acquire_lock(state_dir: str) -> IO[str]:
    """Hold ``state_dir/controller.lock`` for the life of the process, or raise."""
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    path = os.path.join(state_dir, "controller.lock")
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held until exit)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise AlreadyRunning(
            f"another vcluster controller (pid {holder}) is running on {state_dir}; stop it "
            "first, or give this one another controller.state_dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def action_summary(actions: Sequence[object]) -> str:
    """``BootVM x412, UpsertJob x345, MarkHandled``: each kind once, in first-seen order, with
    its count (a pass of a 1,000-job burst listed every action: a 20 KB log line)."""
    counts = Counter(type(a).__name__ for a in actions)
    return ", ".join(name if n == 1 else f"{name} x{n}" for name, n in counts.items())

