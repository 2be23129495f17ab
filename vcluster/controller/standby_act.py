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
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError

from vcluster import db
from vcluster.controller import join_tokens
from vcluster.controller.actions import BootEarly, BootStandby, ClaimStandby
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


def boot_standby(actor: Actor, a: BootStandby) -> None:
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
        vm_id = actor.one.instantiate(actor._template_id(a.template),
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


def boot_early(actor: Actor, a: BootEarly) -> None:
    """A failure is only logged: Slurm's resume comes within seconds and boots as usual."""
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
        vm_id = actor.one.instantiate(actor._template_id(a.template), a.node_name, extra)
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


def _open_claim(actor: Actor, a: ClaimStandby) -> bool:
    """The handover's launch row (a redone handover has one already); False if the node
    has another open launch (the VM stays in reserve)."""
    if a.launch_id is not None:
        return True
    now = actor.now()
    nc = actor.config.node_class(a.node_class)
    cpus, memory_mb, template = a.size or (nc.cpus, nc.memory_mb, nc.template)
    try:
        with db.transaction(actor.sessions) as s:
            s.add(db.Launch(node_name=a.node_name, node_class=a.node_class,
                            job_id=a.job_id, vm_id=a.vm_id, state="booting", ip=a.ip,
                            attempts=1,
                            reason=AT_ALLOCATION_REASON if a.at_allocation else "",
                            created_at=now, updated_at=now,
                            cpus=cpus, memory_mb=memory_mb, template=template,
                            vm_started_at=now))
            db.record_event(s, "vm.standby_claimed", f"standby VM {a.vm_id} handed to "
                            f"the node (no boot)", node_name=a.node_name,
                            job_id=a.job_id, vm_id=a.vm_id, at=now)
    except IntegrityError:
        log.warning("node %s already has an open launch; standby VM %d stays in reserve",
                    a.node_name, a.vm_id)
        return False
    return True


def _name_vm(actor: Actor, a: ClaimStandby) -> None:
    """Tell the VM its node name (its NodeAddr is set): the guest starts slurmd."""
    actor.one.update_user_template(a.vm_id, {
        "VCLUSTER_NODE": a.node_name,
        "VCLUSTER_JOB": "" if a.job_id is None else str(a.job_id),
        STANDBY_TAG: a.node_class,
        # slurmd must report a boot time (whole seconds) not before Slurm's power-up request,
        # which precedes this moment: the guest starts it in a later second
        "VCLUSTER_HANDED_AT": str(int(actor.now().timestamp())),
    })
    actor._event_safely("node.addr", f"NodeAddr set to {a.ip}; standby VM {a.vm_id} told "
                        "its node name", node_name=a.node_name, job_id=a.job_id)
    if actor.metrics is not None and a.launch_id is None:
        actor.metrics.launched(a.node_class)


def claim_standby(actor: Actor, a: ClaimStandby) -> None:
    if not _open_claim(actor, a):
        return
    actor.slurm.update_nodes(a.node_name, nodeaddr=a.ip, nodehostname=a.node_name)
    _name_vm(actor, a)


def claim_standbys(actor: Actor, group: list[ClaimStandby],
                   guarded: Callable[[ClaimStandby, Callable[[], object]], bool]) -> int:
    """Several handovers in one pass (50 jobs allocated at once): their launch rows, then
    every node's NodeAddr in ONE ``scontrol update NodeName=a,b NodeAddr=ip_a,ip_b`` (Slurm
    pairs the lists in order), then each VM's name. One scontrol per node cost ~0.14 s each
    on two busy cores and held the pass (14 handovers: 1.9 s) and every VM boot after it.
    Same order per node as :func:`claim_standby`; if the joint update fails, each node is
    set alone, so one bad node fails only its own handover (redone next pass). ``guarded``
    runs one step of one action with act's isolation (False: it failed, and was counted).
    Returns the handovers done."""
    opened: list[ClaimStandby] = []
    done = 0
    for a in group:
        open_ok: list[bool] = []
        if guarded(a, partial(_open_into, actor, a, open_ok)):
            if open_ok[0]:
                opened.append(a)
            else:
                done += 1  # left in reserve, as claim_standby does
    if not opened:
        return done
    names = ",".join(a.node_name for a in opened)
    try:
        actor.slurm.update_nodes(names, nodeaddr=",".join(a.ip for a in opened),
                                 nodehostname=names)
        addressed = opened
    except VclusterError as exc:
        log.warning("cannot set NodeAddr of %d handed-over node(s) at once (each alone): %s",
                    len(opened), exc)
        addressed = [a for a in opened if guarded(a, partial(
            actor.slurm.update_nodes, a.node_name, nodeaddr=a.ip, nodehostname=a.node_name))]
    for a in addressed:
        if guarded(a, partial(_name_vm, actor, a)):
            done += 1
    return done


def _open_into(actor: Actor, a: ClaimStandby, out: list[bool]) -> None:
    out.append(_open_claim(actor, a))
