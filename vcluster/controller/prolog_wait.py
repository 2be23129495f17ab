"""The prologs' shared wait: one read of Slurm for every job whose prolog waits for its nodes.

Why it exists apart from :mod:`vcluster.controller.hook_server`: the socket takes requests and
answers them; this decides when a waiting prolog's nodes are up (or one is DOWN, or the
controller gave up one of its VMs, or time ran out). The prologs of all jobs starting at once
share one ``scontrol show node`` every :data:`~vcluster.hook_steps.PROLOG_POLL_S` and one
database read for launches given up, instead of one poll loop per hook process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from sqlalchemy import select as sql_select
from sqlalchemy.orm import Session, sessionmaker

from vcluster import db
from vcluster.errors import VclusterError
from vcluster.hook_steps import PROLOG_POLL_S, HookEnv, node_wait_state
from vcluster.slurm_parse import Node, compress_hostlist

log = logging.getLogger("vcluster.hooks")

MIN_POLL_GAP_S = 0.05
"""A prolog that starts waiting triggers a read of Slurm at once, but reads come at most
this often (50 prologs at once: a handful of reads, not 50), seconds."""
FAST_POLL_S = 0.1
FAST_WAIT_S = 3.0
"""While some wait is younger than FAST_WAIT_S, reads come every FAST_POLL_S instead of
every ``poll_s``: a job given standby VMs has its nodes up a second or two after its
allocation, and each read saved is time off its start. A job whose VMs boot costs at most
FAST_WAIT_S / FAST_POLL_S reads more (shared by every wait), seconds."""
COST_FACTOR = 10.0
"""Reads take at most 1 / COST_FACTOR of the time: the gap after a read is at least
COST_FACTOR times what it took. A read of a few nodes takes milliseconds, so small jobs keep
FAST_POLL_S; a burst's 1,000 waiting prologs made each read ``scontrol show node`` of 1,000
nodes (0.6 MB that slurmctld packs under its node lock, 33 ms of parsing here under the GIL),
ten times a second, while slurmctld and the controller's pass were the burst's bottleneck.
The gap this adds is at most MAX_COST_GAP_S: a read that was slow because slurmctld was
(7 s, answering a NodeAddr update) must not leave a job's nodes unread for a minute."""
MAX_COST_GAP_S = 1.0

class WaitSlurm(Protocol):
    """What the shared prolog wait reads from Slurm (:class:`vcluster.slurm.Slurm` has it)."""

    def show_nodes(self, names: Sequence[str]) -> list[Node]: ...

@dataclass
class _Wait:
    job_id: int
    pending: list[str]
    started: float
    since: datetime
    limit_s: float
    gone: Callable[[], bool]
    result: tuple[float, list[str]] | None = None
    done: threading.Event = field(default_factory=threading.Event)
    """Set once ``result`` is: each hook thread sleeps on its own, so settling one wait (or
    a new one arriving) wakes one thread, not every waiting prolog (1,000 jobs starting at
    once made a shared condition's wake-ups quadratic and starved the controller's pass)."""


@dataclass
class NodeWaits:
    """Every waiting prolog's nodes, read from Slurm in one command per poll."""

    slurm: WaitSlurm
    sessions: sessionmaker[Session]
    poll_s: float = PROLOG_POLL_S
    min_gap_s: float = MIN_POLL_GAP_S
    fast_poll_s: float = FAST_POLL_S
    fast_wait_s: float = FAST_WAIT_S
    cost_factor: float = COST_FACTOR
    max_cost_gap_s: float = MAX_COST_GAP_S
    monotonic: Callable[[], float] = time.monotonic
    waits: list[_Wait] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    _poller: threading.Thread | None = None
    _new: bool = False
    _last_poll: float = float("-inf")
    _last_cost: float = 0.0
    """How long the last read took (Slurm and the database), seconds."""

    def register(self, env: HookEnv, job_id: int, nodes: Sequence[str],
                 gone: Callable[[], bool] = lambda: False) -> _Wait:
        wait = _Wait(job_id, list(nodes), self.monotonic(), env.now(),
                     env.config.controller.prolog_wait_s, gone)
        with self.cond:
            self.waits.append(wait)
            self._new = True
            self.cond.notify_all()
        return wait

    def wait(self, env: HookEnv, job_id: int, nodes: Sequence[str], *,
             gone: Callable[[], bool] = lambda: False) -> tuple[float, list[str]]:
        """Block until the job's nodes are up, one is DOWN, the controller gave up one of
        its VMs, the hook went away, or ``prolog_wait_s`` passed: (seconds, pending)."""
        wait = self.register(env, job_id, nodes, gone)
        with self.cond:  # only the poller waits on it
            if self._poller is None:
                self._poller = threading.Thread(target=self._run, name="prolog-wait",
                                                daemon=True)
                self._poller.start()
        wait.done.wait()
        assert wait.result is not None
        return wait.result

    def _run(self) -> None:
        while True:
            with self.cond:
                if not self.waits:
                    self._poller = None
                    return
                while True:
                    gap_s = self.next_gap_s(self._new)
                    left_s = self._last_poll + gap_s - self.monotonic()
                    if left_s <= 0:
                        break
                    self.cond.wait(left_s)
                self._new = False
            try:
                self.poll_once()
            except Exception:  # the waits end at their limit; never leave a prolog hanging
                log.exception("reading the waiting prologs' nodes failed")

    def gap_s(self) -> float:
        """Seconds between two reads now (FAST_POLL_S while a wait is young)."""
        young = self.monotonic() - self.fast_wait_s
        return min(self.poll_s, self.fast_poll_s) if any(
            w.started > young for w in self.waits) else self.poll_s

    def next_gap_s(self, new_wait: bool) -> float:
        """Seconds from the last read's start to the next one: MIN_POLL_GAP_S after a new
        wait arrived, else :meth:`gap_s`; never less than COST_FACTOR times the last read,
        up to MAX_COST_GAP_S."""
        return max(self.min_gap_s if new_wait else self.gap_s(),
                   min(self.cost_factor * self._last_cost, self.max_cost_gap_s))

    def poll_once(self) -> None:
        """One read of Slurm and of the database; settle every wait it decides."""
        self._last_poll = self.monotonic()
        try:
            self._poll()
        finally:
            self._last_cost = max(0.0, self.monotonic() - self._last_poll)

    def _poll(self) -> None:
        with self.cond:
            waits = list(self.waits)
        if not waits:
            return
        names = sorted({n for w in waits for n in w.pending})
        try:
            nodes: dict[str, Node] | None = {n.name: n for n in self.slurm.show_nodes(names)}
        except VclusterError as exc:
            log.debug("reading nodes %s failed: %s", compress_hostlist(names), exc)
            nodes = None
        failed = self._failed_launches({w.job_id for w in waits}, min(w.since for w in waits))
        now = self.monotonic()
        with self.cond:
            for wait in waits:
                wait.result = self._settle(wait, nodes, failed, now)
                if wait.result is not None:
                    wait.done.set()
            self.waits = [w for w in self.waits if w.result is None]

    @staticmethod
    def _settle(wait: _Wait, nodes: dict[str, Node] | None,
                failed: dict[int, datetime], now: float) -> tuple[float, list[str]] | None:
        waited_s = now - wait.started
        if nodes is not None:
            still = []
            for name in wait.pending:
                verdict = node_wait_state(nodes.get(name))
                if verdict == "down":
                    log.warning("job %d: node %s is DOWN (%s)", wait.job_id, name,
                                nodes[name].reason)
                    return waited_s, [name]
                if verdict == "pending":
                    still.append(name)
            wait.pending = still
        if not wait.pending or waited_s >= wait.limit_s or wait.gone():
            return waited_s, wait.pending
        if (ended := failed.get(wait.job_id)) is not None and ended >= wait.since:
            return waited_s, wait.pending
        return None

    def _failed_launches(self, job_ids: set[int], since: datetime) -> dict[int, datetime]:
        """{job: when its last VM was given up} for VMs given up since ``since``."""
        try:
            with self.sessions() as s:
                rows = s.execute(sql_select(db.Launch.job_id, db.Launch.ended_at).where(
                    db.Launch.job_id.in_(job_ids), db.Launch.state == "failed",
                    db.Launch.ended_at >= since)).all()
        except Exception as exc:  # the waits go on; Slurm's states still end them
            log.warning("cannot read failed launches for the waiting prologs: %s", exc)
            return {}
        failed: dict[int, datetime] = {}
        for job_id, ended_at in rows:
            if job_id is not None and ended_at is not None:
                failed[job_id] = max(ended_at, failed.get(job_id, ended_at))
        return failed
