"""NodeAddr of the VMs a pass allocated, set in batches: one ``scontrol update`` for many nodes.

Each allocated VM's node must point at the VM's IP before its slurmd registers. Setting it
right after each allocation cost a VM read and an ``scontrol`` process per VM (~0.1 s on two
cores under a burst), which held back the next allocation: a burst of 1,000 one-node jobs
took ~100 s to request its VMs. The actor now queues the node here and flushes the queue
every few allocations (or a fraction of a second) and at the end of the pass, with one
``scontrol update NodeName=a,b NodeAddr=ip_a,ip_b NodeHostname=a,b`` (Slurm pairs the lists
in order) and one database transaction. A node whose update fails is left with ``ip`` unset,
and the next pass sets it alone (plan: a booting launch without an IP).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from vcluster import db
from vcluster.controller.ports import OnePort, SlurmPort
from vcluster.errors import VclusterError

log = logging.getLogger(__name__)

FLUSH_AT = 25
"""Queued nodes that make the actor flush before its next action."""
FLUSH_AFTER_S = 0.25
"""Seconds the oldest queued node may wait before the actor flushes."""


@dataclass
class AddrBatch:
    """The nodes of VMs allocated in this pass whose NodeAddr is not set yet."""

    slurm: SlurmPort
    one: OnePort
    sessions: sessionmaker[Session]
    now: Callable[[], datetime]
    pending: list[tuple[int, str, int]] = field(default_factory=list)
    """(launch id, node name, VM id), in allocation order."""
    since: float = 0.0

    def add(self, launch_id: int, node_name: str, vm_id: int) -> None:
        if not self.pending:
            self.since = time.monotonic()
        self.pending.append((launch_id, node_name, vm_id))

    def due(self) -> bool:
        return bool(self.pending) and (len(self.pending) >= FLUSH_AT
                                       or time.monotonic() - self.since >= FLUSH_AFTER_S)

    def flush(self) -> None:
        """Read each VM's IP, then point every node at its VM in one ``scontrol`` call."""
        pending, self.pending = self.pending, []
        found: list[tuple[int, str, str]] = []
        for launch_id, node_name, vm_id in pending:
            try:
                ips = self.one.vm(vm_id).ips
            except VclusterError as exc:
                log.warning("cannot read VM %d after allocating it: %s", vm_id, exc)
                continue
            if ips:
                found.append((launch_id, node_name, ips[0]))
        if not found:
            return
        names = ",".join(name for _, name, _ in found)
        try:
            self.slurm.update_nodes(names, nodeaddr=",".join(ip for _, _, ip in found),
                                    nodehostname=names)
        except VclusterError as exc:  # the next pass sets each one alone
            log.warning("cannot set NodeAddr of %d node(s) (%s): %s", len(found), names, exc)
            return
        with db.transaction(self.sessions) as s:
            for launch_id, node_name, ip in found:
                row = s.get(db.Launch, launch_id)
                if row is None:
                    continue
                row.ip, row.updated_at = ip, self.now()
                db.record_event(s, "node.addr", f"NodeAddr set to {ip}", node_name=node_name,
                                vm_id=row.vm_id, job_id=row.job_id, at=self.now())
