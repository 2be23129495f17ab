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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
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
FLUSH_AFTER_S = 0.25
"""Seconds the oldest queued node may wait before the actor flushes."""


def set_node_addrs(slurm: SlurmPort, addrs: Sequence[tuple[str, str]]) -> None:
    """Point each node at its VM's IP: ``scontrol update NodeName=a,b NodeAddr=ip_a,ip_b
    NodeHostname=a,b`` in one call (Slurm pairs the lists in order, so the names stay a
    plain list, not a compressed hostlist)."""
    names = ",".join(name for name, _ in addrs)
    slurm.update_nodes(names, nodeaddr=",".join(ip for _, ip in addrs), nodehostname=names)


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

    def add(self, launch_id: int, node_name: str, vm_id: int, job_id: int | None = None) -> None:
        if not self.pending:
            self.since = time.monotonic()
        self.pending.append((launch_id, node_name, vm_id, job_id))
        self.allocated_at[launch_id] = self.now()

    def due(self) -> bool:
        return bool(self.pending) and (len(self.pending) >= FLUSH_AT
                                       or time.monotonic() - self.since >= FLUSH_AFTER_S)

    def flush(self) -> None:
        """Record the queued allocations, read their VMs' IPs in one ranged pool read, point
        every node at its VM in one ``scontrol`` call, and record it all in one transaction."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        allocated_at = {p[0]: self.allocated_at.pop(p[0], self.now()) for p in pending}
        found = self._set_addrs(pending)
        with db.transaction(self.sessions) as s:  # rows read at once: no flush per row
            rows = {r.id: r for r in s.scalars(select(db.Launch).where(
                db.Launch.id.in_([p[0] for p in pending])))}
            for launch_id, node_name, vm_id, job_id in pending:
                row = rows.get(launch_id)
                if row is None:
                    continue
                at = allocated_at[launch_id]
                if row.vm_id is None:  # its result (the pass that allocated it)
                    row.vm_id, row.vm_started_at = vm_id, at
                    if row.state == "allocating":  # not closed by a later action meanwhile
                        row.state, row.reason, row.updated_at = "booting", "", at
                    db.record_event(s, "vm.allocated", f"VM {vm_id} allocated",
                                    node_name=node_name, job_id=job_id, vm_id=vm_id, at=at)
                ip = found.get(launch_id)
                if ip is not None:
                    row.ip, row.updated_at = ip, self.now()
                    db.record_event(s, "node.addr", f"NodeAddr set to {ip}",
                                    node_name=node_name, vm_id=row.vm_id, job_id=row.job_id,
                                    at=self.now())

    def _set_addrs(self, pending: list[tuple[int, str, int, int | None]]) -> dict[int, str]:
        """{launch id: IP} of the queued nodes whose NodeAddr Slurm took."""
        ids = [vm_id for _, _, vm_id, _ in pending]
        try:
            ips = {v.vm_id: v.ips for v in self.one.vm_range(min(ids), max(ids))}
        except VclusterError as exc:
            log.warning("cannot read VMs %d to %d after allocating them: %s", min(ids),
                        max(ids), exc)
            return {}
        found: list[tuple[int, str, str]] = []
        for launch_id, node_name, vm_id, _ in pending:
            if ips.get(vm_id):
                found.append((launch_id, node_name, ips[vm_id][0]))
            else:
                log.warning("VM %d of node %s has no IP yet (or is not listed): NodeAddr is "
                            "set next pass", vm_id, node_name)
        if not found:
            return {}
        try:
            set_node_addrs(self.slurm, [(name, ip) for _, name, ip in found])
        except VclusterError as exc:  # the next pass sets each one alone
            log.warning("cannot set NodeAddr of %d node(s) (%s): %s", len(found),
                        ",".join(name for _, name, _ in found), exc)
            return {}
        return {launch_id: ip for launch_id, _, ip in found}
