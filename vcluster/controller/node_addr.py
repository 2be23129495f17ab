"""NodeAddr of the VMs a pass allocated, set in batches: one ``scontrol update`` for many nodes.

Each allocated VM's node must point at the VM's IP before its slurmd registers. Setting it
right after each allocation cost a VM read and an ``scontrol`` process per VM (~0.1 s on two
cores under a burst), which held back the next allocation: a burst of 1,000 one-node jobs
took ~100 s to request its VMs. The actor now queues the node here and flushes the queue
every few allocations (or a fraction of a second) and at the end of the pass, with one
``scontrol update NodeName=a,b NodeAddr=ip_a,ip_b NodeHostname=a,b`` (Slurm pairs the lists
in order) and one database transaction. A node whose update fails is left with ``ip`` unset,
and the next pass sets it alone (plan: a booting launch without an IP).

Under a burst even that cost ~90 ms per VM (a 1,000-job burst requested 11 VMs/s): each VM
was still read alone for its IP, and each allocation's result written in its own database
commit. The flush now reads the batch's VMs in one ranged pool read (``vm_range``) and writes
every queued allocation's result (VM id, ``booting``, ``vm.allocated``) with the NodeAddr in
its one transaction. The launch itself is committed ``allocating`` before its instantiate as
before; a crash before the flush leaves it so, and the next pass adopts the VM by its tags
(plan: AdoptVM), as for a crash between an instantiate and its result today.

The ``scontrol update`` itself runs on one worker thread, its result recorded there in its own
transaction, while the pass goes on booting: under a 1,000-job burst slurmctld, busy with the
jobs' submissions, prologs and a resume of 665 nodes, took 7 s to answer one update, and the
pass's boots waited for it. Updates keep their order (one worker); the pass waits for them
at its end up to ADDR_WAIT_S, then leaves them to finish in the background, and a later pass
plans no second update for a launch whose update is still in flight
(:meth:`AddrUpdates.inflight`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from vcluster import db
from vcluster.controller.ports import OnePort, SlurmPort
from vcluster.errors import VclusterError

log = logging.getLogger(__name__)

FLUSH_AT = 25
"""Queued nodes that make the actor flush before its next action."""
ADDR_WAIT_S = 1.0
"""How long the end of a pass waits for its NodeAddr updates, seconds."""
FLUSH_AFTER_S = 0.25
"""Seconds the oldest queued node may wait before the actor flushes."""


def set_node_addrs(slurm: SlurmPort, addrs: Sequence[tuple[str, str]]) -> None:
    """Point each node at its VM's IP: ``scontrol update NodeName=a,b NodeAddr=ip_a,ip_b
    NodeHostname=a,b`` in one call (Slurm pairs the lists in order, so the names stay a
    plain list, not a compressed hostlist)."""
    names = ",".join(name for name, _ in addrs)
    slurm.update_nodes(names, nodeaddr=",".join(ip for _, ip in addrs), nodehostname=names)


class AddrUpdates:
    """One worker thread for the passes' NodeAddr updates, and the launches whose update it
    has not finished (a pass must not plan a second update for them)."""

    def __init__(self) -> None:
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="vcluster-nodeaddr")
        self._lock = threading.Lock()
        self._inflight: set[int] = set()
        self._futures: list[Future[None]] = []

    def submit(self, launch_ids: list[int], update: Callable[[], None]) -> None:
        with self._lock:
            self._inflight.update(launch_ids)

        def run() -> None:
            try:
                update()
            except Exception:  # the next pass sets what is missing
                log.exception("setting NodeAddr of the VMs just allocated failed")
            finally:
                with self._lock:
                    self._inflight.difference_update(launch_ids)

        with self._lock:
            self._futures = [f for f in self._futures if not f.done()]
            self._futures.append(self._worker.submit(run))

    def inflight(self, launch_id: int) -> bool:
        with self._lock:
            return launch_id in self._inflight

    def wait(self, timeout_s: float | None = None) -> bool:
        """Until every update submitted so far is done, or ``timeout_s``; True if done."""
        with self._lock:
            futures = list(self._futures)
        _, left = wait(futures, timeout=timeout_s)
        return not left


@dataclass
class AddrBatch:
    """The nodes of VMs allocated in this pass whose NodeAddr is not set yet."""

    slurm: SlurmPort
    one: OnePort
    sessions: sessionmaker[Session]
    now: Callable[[], datetime]
    pending: list[tuple[int, str, int, int | None]] = field(default_factory=list)
    """(launch id, node name, VM id, job id), in allocation order."""
    since: float = 0.0
    allocated_at: dict[int, datetime] = field(default_factory=dict)
    """When each queued launch's VM was allocated (its ``vm_started_at`` until oned's)."""
    updates: AddrUpdates | None = None
    """Where the NodeAddr updates go (the actor's, kept across passes); None: a worker of
    this batch's own, waited for by :meth:`wait`."""

    def add(self, launch_id: int, node_name: str, vm_id: int, job_id: int | None = None) -> None:
        if not self.pending:
            self.since = time.monotonic()
        self.pending.append((launch_id, node_name, vm_id, job_id))
        self.allocated_at[launch_id] = self.now()

    def due(self) -> bool:
        return bool(self.pending) and (len(self.pending) >= FLUSH_AT
                                       or time.monotonic() - self.since >= FLUSH_AFTER_S)

    def flush(self) -> None:
        """Record the queued allocations (VM id, ``booting``, ``vm.allocated``) in one
        transaction, read their VMs' IPs in one ranged pool read, and hand the NodeAddr
        update to the worker: one ``scontrol`` call for the batch, its result recorded in
        one transaction there, while the pass goes on (:meth:`wait`)."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        allocated_at = {p[0]: self.allocated_at.pop(p[0], self.now()) for p in pending}
        with db.transaction(self.sessions) as s:  # rows read at once: no flush per row
            rows = {r.id: r for r in s.scalars(select(db.Launch).where(
                db.Launch.id.in_([p[0] for p in pending])))}
            for launch_id, node_name, vm_id, job_id in pending:
                row = rows.get(launch_id)
                if row is None or row.vm_id is not None:
                    continue
                at = allocated_at[launch_id]
                row.vm_id, row.vm_started_at = vm_id, at  # its result (this pass's)
                if row.state == "allocating":  # not closed by a later action meanwhile
                    row.state, row.reason, row.updated_at = "booting", "", at
                db.record_event(s, "vm.allocated", f"VM {vm_id} allocated",
                                node_name=node_name, job_id=job_id, vm_id=vm_id, at=at)
        found = self._read_ips(pending)
        if not found:
            return
        if self.updates is None:
            self.updates = AddrUpdates()
        self.updates.submit([launch_id for launch_id, _, _ in found],
                            lambda: self._set_and_record(found))

    def wait(self, timeout_s: float | None = None) -> None:
        """Until the NodeAddr updates handed to the worker are done and recorded, or
        ``timeout_s`` passed (then they finish in the background)."""
        if self.updates is not None:
            self.updates.wait(timeout_s)

    def _read_ips(self, pending: list[tuple[int, str, int, int | None]]
                  ) -> list[tuple[int, str, str]]:
        """(launch id, node, IP) of the queued VMs that have an IP."""
        ids = [vm_id for _, _, vm_id, _ in pending]
        try:
            ips = {v.vm_id: v.ips for v in self.one.vm_range(min(ids), max(ids))}
        except VclusterError as exc:
            log.warning("cannot read VMs %d to %d after allocating them: %s", min(ids),
                        max(ids), exc)
            return []
        found: list[tuple[int, str, str]] = []
        for launch_id, node_name, vm_id, _ in pending:
            if ips.get(vm_id):
                found.append((launch_id, node_name, ips[vm_id][0]))
            else:
                log.warning("VM %d of node %s has no IP yet (or is not listed): NodeAddr is "
                            "set next pass", vm_id, node_name)
        return found

    def _set_and_record(self, found: list[tuple[int, str, str]]) -> None:
        """On the worker: point the nodes at their VMs in one ``scontrol update``, then
        record each node's IP and ``node.addr`` in one transaction."""
        try:
            set_node_addrs(self.slurm, [(name, ip) for _, name, ip in found])
        except VclusterError as exc:  # the next pass sets each one alone
            log.warning("cannot set NodeAddr of %d node(s) (%s): %s", len(found),
                        ",".join(name for _, name, _ in found), exc)
            return
        at = self.now()
        with db.transaction(self.sessions) as s:
            rows = {r.id: r for r in s.scalars(select(db.Launch).where(
                db.Launch.id.in_([launch_id for launch_id, _, _ in found])))}
            for launch_id, _, ip in found:
                row = rows.get(launch_id)
                if row is None:
                    continue
                row.ip, row.updated_at = ip, at
                db.record_event(s, "node.addr", f"NodeAddr set to {ip}", node_name=row.node_name,
                                vm_id=row.vm_id, job_id=row.job_id, at=at)
