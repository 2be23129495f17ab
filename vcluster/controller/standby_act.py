"""Standby VMs, acting side: boot one for the reserve or for an allocated node, hand one
to a node.

Why it exists apart from :mod:`act`: the two actions follow act's rules (record intent,
commit, call the outside system, record the result) but touch nothing else there; keeping
them here keeps act.py small. The :class:`~vcluster.controller.act.Actor` dispatches to
these functions.

The handover's order is what keeps it safe: the launch row first (the VM is no longer an
unclaimed standby VM for the next pass), then Slurm's NodeAddr, and only then the node name
in the VM's user template. The VM's slurmd starts when it reads that name through OneGate,
so it never registers before slurmctld knows the node's address. An interrupted handover
leaves a booting launch whose VM is still unnamed: the planner redoes it
(:func:`vcluster.controller.standby.reclaim`).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from vcluster import db
from vcluster.controller import join_tokens
from vcluster.controller.actions import BootEarly, BootStandby, ClaimStandby
from vcluster.controller.boot_pool import BootSteps
from vcluster.controller.node_addr import set_node_addrs
from vcluster.controller.standby import AT_ALLOCATION_REASON, STANDBY_TAG
from vcluster.errors import OneNotFound, VclusterError
from vcluster.vmtemplate import bootstrap_script_bytes, worker_vm_extra

if TYPE_CHECKING:
    from vcluster.controller.act import Actor

log = logging.getLogger(__name__)

BOOT_BACKOFF_S = 30.0
"""After a failed standby boot, the class boots no standby VM for this long: a missing
template must not become one refused allocation every pass."""


def _unbound_token(actor: Actor, what: str) -> str:
    """The one-time join token of a VM booted with no node (its munge key at boot)."""
    with db.transaction(actor.sessions) as s:
        return join_tokens.issue_unbound(s, what=what, now=actor.now(),
                                         ttl_s=actor.config.controller.resume_timeout_s)


def _bind(actor: Actor, token: str, vm_id: int) -> None:
    with db.transaction(actor.sessions) as s:
        join_tokens.bind(s, token, vm_id)


def _forget(actor: Actor, token: str) -> None:
    try:
        with db.transaction(actor.sessions) as s:
            join_tokens.forget(s, token)
    except Exception as exc:  # it expires anyway
        log.warning("cannot drop an unused join token: %s", exc)


def boot_standby_steps(actor: Actor, a: BootStandby) -> BootSteps:
    """A standby VM's boot in steps (:mod:`boot_pool`): its token, the instantiate
    (yielded), then its result."""
    backoff: dict[str, float] = actor.__dict__.setdefault("_standby_backoff", {})
    if time.monotonic() < backoff.get(a.node_class, 0.0):
        return
    cluster = actor.config.controller.cluster_name
    token = _unbound_token(actor, f"standby:{a.node_class}")
    try:
        if actor._guest_script is None:
            actor._guest_script = bootstrap_script_bytes()
        extra = worker_vm_extra(
            node_class=actor.config.node_class(a.node_class), node_name="", job_id=None,
            cluster=cluster, cpus=a.cpus, memory_mb=a.memory_mb, context=actor.guest,
            join_token=token, guest_script=actor._guest_script, standby_class=a.node_class)
        template_id = actor._template_id(a.template)
        vm_id = yield lambda one: one.instantiate(template_id,
                                                  f"{cluster}-standby-{a.node_class}", extra)
        _bind(actor, token, vm_id)
    except VclusterError as exc:
        _forget(actor, token)
        if isinstance(exc, OneNotFound):
            actor._template_ids.pop(a.template, None)
        backoff[a.node_class] = time.monotonic() + BOOT_BACKOFF_S
        actor._event_safely("vm.standby_failed", f"cannot boot a standby VM of class "
                            f"{a.node_class} (next try in {BOOT_BACKOFF_S:.0f} s): {exc}")
        return
    backoff.pop(a.node_class, None)
    actor._event_safely("vm.standby_booted", f"standby VM {vm_id} of class {a.node_class} "
                        f"allocated ({a.cpus} CPUs, {a.memory_mb} MB, template {a.template})")
    log.info("standby VM %d of class %s allocated", vm_id, a.node_class)


def boot_early_steps(actor: Actor, a: BootEarly) -> BootSteps:
    """A VM's boot at its job's allocation in steps (:mod:`boot_pool`). A failure is only
    logged: Slurm's resume comes within seconds and boots as usual."""
    cluster = actor.config.controller.cluster_name
    token = _unbound_token(actor, f"early:{a.node_name}")
    try:
        if actor._guest_script is None:
            actor._guest_script = bootstrap_script_bytes()
        extra = worker_vm_extra(
            node_class=actor.config.node_class(a.node_class), node_name="", job_id=a.job_id,
            cluster=cluster, cpus=a.cpus, memory_mb=a.memory_mb, context=actor.guest,
            join_token=token, guest_script=actor._guest_script, standby_class=a.node_class,
            early_node=a.node_name)
        template_id = actor._template_id(a.template)
        vm_id = yield lambda one: one.instantiate(template_id, a.node_name, extra)
        _bind(actor, token, vm_id)
    except VclusterError as exc:
        _forget(actor, token)
        if isinstance(exc, OneNotFound):
            actor._template_ids.pop(a.template, None)
        log.warning("cannot boot a VM for %s at allocation (its resume will): %s",
                    a.node_name, exc)
        return
    actor._event_safely("vm.early_booted", f"VM {vm_id} allocated for job {a.job_id} at its "
                        f"allocation ({a.cpus} CPUs, {a.memory_mb} MB from template "
                        f"{a.template}); handed to the node once Slurm powers it up",
                        node_name=a.node_name, job_id=a.job_id)


def _open_launch(actor: Actor, s: Session, a: ClaimStandby, now: datetime) -> None:
    """The claimed VM's launch row and its event (a claim with no launch yet)."""
    nc = actor.config.node_class(a.node_class)
    cpus, memory_mb, template = a.size or (nc.cpus, nc.memory_mb, nc.template)
    s.add(db.Launch(node_name=a.node_name, node_class=a.node_class, job_id=a.job_id,
                    vm_id=a.vm_id, state="booting", ip=a.ip, attempts=1,
                    reason=AT_ALLOCATION_REASON if a.at_allocation else "",
                    created_at=now, updated_at=now, cpus=cpus, memory_mb=memory_mb,
                    template=template, vm_started_at=now))
    db.record_event(s, "vm.standby_claimed", f"standby VM {a.vm_id} handed to the node (no "
                    "boot)", node_name=a.node_name, job_id=a.job_id, vm_id=a.vm_id, at=now)


def _name_the_vm(actor: Actor, a: ClaimStandby) -> None:
    actor.one.update_user_template(a.vm_id, {
        "VCLUSTER_NODE": a.node_name,
        "VCLUSTER_JOB": "" if a.job_id is None else str(a.job_id),
        STANDBY_TAG: a.node_class,
        # slurmd must report a boot time (whole seconds) not before Slurm's power-up request,
        # which precedes this moment: the guest starts it in a later second
        "VCLUSTER_HANDED_AT": str(int(actor.now().timestamp())),
    })


def _addr_message(a: ClaimStandby) -> str:
    return f"NodeAddr set to {a.ip}; standby VM {a.vm_id} told its node name"


def claim_standby(actor: Actor, a: ClaimStandby) -> None:
    if a.launch_id is None:
        try:
            with db.transaction(actor.sessions) as s:
                _open_launch(actor, s, a, actor.now())
        except IntegrityError:
            log.warning("node %s already has an open launch; standby VM %d stays in reserve",
                        a.node_name, a.vm_id)
            return
    set_node_addrs(actor.slurm, [(a.node_name, a.ip)])
    _name_the_vm(actor, a)
    actor._event_safely("node.addr", _addr_message(a), node_name=a.node_name, job_id=a.job_id)
    if actor.metrics is not None and a.launch_id is None:
        actor.metrics.launched(a.node_class)


CLAIM_CHUNK = 100
"""Nodes per ``scontrol update`` of a batch of claims (its argv stays a few KB)."""


def claim_standbys(actor: Actor, claims: list[ClaimStandby]) -> tuple[int, int] | None:
    """A pass's run of claims (a burst's VMs booted at allocation, handed over as Slurm
    powers their nodes up): the launch rows in one transaction, NodeAddr in one ``scontrol
    update`` per CLAIM_CHUNK nodes, each VM told its name, the events in one transaction.
    One at a time, 887 claims took a pass of 16.5 s (an scontrol process and two commits
    each). The order per node is the single claim's: row, NodeAddr, then the name. Returns
    (done, failed); None if the rows could not be written together (nothing was: the
    caller claims one at a time, each alone)."""
    now = actor.now()
    try:
        with db.transaction(actor.sessions) as s:
            for a in claims:
                if a.launch_id is None:
                    _open_launch(actor, s, a, now)
    except Exception as exc:
        log.warning("opening %d claims at once failed (each is claimed alone): %s",
                    len(claims), exc)
        return None
    named: list[ClaimStandby] = []
    failed: list[tuple[ClaimStandby, str]] = []
    busy = ""  # slurmctld timed out or is unreachable: the rest waits for the next pass
    for i in range(0, len(claims), CLAIM_CHUNK):
        chunk = claims[i:i + CLAIM_CHUNK]
        if busy:
            failed.extend((a, busy) for a in chunk)
            continue
        try:
            set_node_addrs(actor.slurm, [(a.node_name, a.ip) for a in chunk])
            ready = chunk
        except VclusterError as exc:
            log.warning("cannot set NodeAddr of %d claimed node(s) at once: %s", len(chunk), exc)
            if getattr(exc, "temporary", False):
                # one node at a time would wait as long again for each node (a burst's
                # overloaded slurmctld stalled a pass 20 s so): the next pass redoes them
                busy = f"{exc} (retried next pass)"
                failed.extend((a, busy) for a in chunk)
                continue
            ready = []  # each alone: one bad node must not fail the others
            for a in chunk:
                try:
                    set_node_addrs(actor.slurm, [(a.node_name, a.ip)])
                    ready.append(a)
                except VclusterError as one_exc:
                    failed.append((a, str(one_exc)))
        for a in ready:
            try:
                _name_the_vm(actor, a)
                named.append(a)
            except VclusterError as exc:
                failed.append((a, str(exc)))
    try:
        with db.transaction(actor.sessions) as s:
            for a in named:
                db.record_event(s, "node.addr", _addr_message(a), node_name=a.node_name,
                                job_id=a.job_id, at=now)
            for a, why in failed:  # the planner redoes an unnamed claim (standby.reclaim)
                db.record_event(s, "action.failed", f"ClaimStandby failed: {why}",
                                node_name=a.node_name, at=now)
    except Exception:
        log.exception("cannot record the events of %d claims", len(claims))
    for a, why in failed:
        log.error("action %s failed: %s", a, why)
    if actor.metrics is not None:
        for a in claims:
            if a.launch_id is None:
                actor.metrics.launched(a.node_class)
    return len(named), len(failed)
