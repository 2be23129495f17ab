"""Standby VMs: booted, never-used VMs a node class keeps in reserve (planning side).

Why it exists: a real VM boots in 30-90 s, and that boot sits on the job's path. A class with
``standby = K`` keeps K VMs booted with no node name (USER_TEMPLATE ``VCLUSTER_STANDBY`` =
class, ``VCLUSTER_NODE`` = ""); when Slurm resumes a node of the class, the planner hands it
a ready standby VM instead of booting one (:class:`ClaimStandby`): the controller sets
NodeAddr, then writes the node name into the VM's user template, where the VM's guest script
reads it through OneGate and starts slurmd as that node. A replacement boots in the same
pass. A standby VM never ran a job: once named it is an ordinary launch, terminated when its
job ends, so per-job isolation is kept.

The reserve lives only in OpenNebula's tags (no database rows): a VM is standby while it is
tagged ``VCLUSTER_STANDBY`` and has no node name. Those VMs are never orphans; one that
failed, left RUNNING behind vcluster's back, grew older than ``standby_max_age_s``, or is
beyond the class's K (K lowered, class drained or removed) is terminated, and the deficit is
booted again. All of it is pure: :mod:`plan` calls in here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from vcluster.config import Config, NodeClass
from vcluster.controller.actions import Action, BootStandby, ClaimStandby, TerminateVM
from vcluster.controller.observe import LaunchView, Observed
from vcluster.one_vm import VM

STANDBY_TAG = "VCLUSTER_STANDBY"
"""USER_TEMPLATE (and CONTEXT) attribute naming the class of a standby VM."""


def is_standby(vm: VM) -> bool:
    """Tagged standby and not yet handed to a node."""
    tags = vm.user_template
    return bool(tags.get(STANDBY_TAG)) and not tags.get("VCLUSTER_NODE")


def age_s(vm: VM, now_s: float) -> float:
    """Seconds since oned started the VM (STIME); 0 when it has no STIME yet."""
    return max(0.0, now_s - vm.start_time) if vm.start_time else 0.0


def is_claimable(vm: VM) -> bool:
    """Booted and contextualized (READY through OneGate where its CONTEXT asks), with an IP."""
    return vm.is_running and bool(vm.ips) and (vm.is_ready or not vm.wants_ready)


@dataclass
class Reserve:
    """The standby VMs of one pass: what may be handed out and what is wrong."""

    ready: dict[str, list[VM]] = field(default_factory=lambda: defaultdict(list))
    """Class -> claimable standby VMs, oldest first."""
    healthy: dict[str, list[VM]] = field(default_factory=lambda: defaultdict(list))
    """Class -> standby VMs booting or ready (what counts towards K)."""
    retire: list[TerminateVM] = field(default_factory=list)
    claimed: set[int] = field(default_factory=set)


def _retire(vm: VM, why: str, hard: bool = False) -> TerminateVM:
    return TerminateVM(vm.vm_id, "", f"standby VM {vm.vm_id} of class "
                       f"{vm.user_template.get(STANDBY_TAG, '?')} {why}", close_as="terminated",
                       hard=hard)


def reserve_of(obs: Observed, config: Config,
               vm_event: Callable[[VM], str | None]) -> Reserve:
    """Sort this cluster's standby VMs: healthy ones by class, the rest to terminate.
    ``vm_event`` is the planner's: the ``on_vm_event`` key of a state vcluster did not ask
    for, None while the VM is as it should be."""
    reserve = Reserve()
    now_s = obs.now.timestamp()
    claimed = {la.vm_id for la in obs.launches if la.vm_id is not None}
    for vm in sorted(obs.vms.values(), key=lambda v: (v.start_time or now_s, v.vm_id)):
        if not is_standby(vm) or vm.is_terminating or vm.vm_id in claimed:
            continue
        class_name = vm.user_template[STANDBY_TAG]
        nc = next((c for c in config.node_classes if c.name == class_name), None)
        event = vm_event(vm)
        if nc is None:
            reserve.retire.append(_retire(vm, "belongs to no configured class"))
        elif event is not None:
            reserve.retire.append(_retire(vm, f"failed ({vm.state_name})", hard=True))
        elif age_s(vm, now_s) > nc.standby_max_age_s:
            reserve.retire.append(_retire(vm, f"is older than standby_max_age_s "
                                          f"({nc.standby_max_age_s} s): replaced"))
        else:
            reserve.healthy[nc.name].append(vm)
            if is_claimable(vm):
                reserve.ready[nc.name].append(vm)
    return reserve


def claim(reserve: Reserve, nc: NodeClass, node_name: str, job_id: int | None,
          template: str) -> ClaimStandby | None:
    """A ready standby VM of ``nc`` for a powering-up node, or None (none ready, or the job
    wants another template than the class's, which standby VMs are booted from)."""
    if template != nc.template or not reserve.ready[nc.name]:
        return None
    vm = reserve.ready[nc.name].pop(0)
    reserve.healthy[nc.name].remove(vm)
    reserve.claimed.add(vm.vm_id)
    return ClaimStandby(node_name, nc.name, vm.vm_id, job_id, vm.ips[0])


def reclaim(launch: LaunchView, vm: VM) -> ClaimStandby | None:
    """A booting launch whose standby VM was not told its node name (the handover was
    interrupted): redo it."""
    if not is_standby(vm) or not vm.ips:
        return None
    return ClaimStandby(launch.node_name, launch.node_class, vm.vm_id, launch.job_id,
                        launch.ip or vm.ips[0], launch.id)


def _wanted(obs: Observed, nc: NodeClass) -> int:
    """K, or 0 while an admin drained the class (no new VMs)."""
    return 0 if nc.name in obs.drains else nc.standby


def plan_reserve(reserve: Reserve, obs: Observed, config: Config) -> list[Action]:
    """Terminate what is wrong or beyond K, boot what is missing; replacements of VMs
    handed out this pass are part of the deficit."""
    actions: list[Action] = list(reserve.retire)
    for nc in config.node_classes:
        healthy = reserve.healthy.get(nc.name, [])
        wanted = _wanted(obs, nc)
        why = ("is not kept: the class is drained" if nc.name in obs.drains
               else f"is beyond the class's standby = {wanted}")
        for vm in healthy[:max(0, len(healthy) - wanted)]:  # the oldest go first
            actions.append(_retire(vm, why))
        actions += [BootStandby(nc.name, nc.template, nc.cpus, nc.memory_mb)
                    for _ in range(wanted - len(healthy))]
    return actions


def describe(vms: list[VM], config: Config, now_s: float) -> list[dict[str, object]]:
    """The standby VMs as ``vcluster status`` shows them (class, VM, state, ready, age)."""
    return [{"node_class": vm.user_template.get(STANDBY_TAG, ""), "vm_id": vm.vm_id,
             "state": vm.state_name, "ready": is_claimable(vm), "age_s": age_s(vm, now_s)}
            for vm in sorted(vms, key=lambda v: v.vm_id)
            if is_standby(vm) and not vm.is_terminating]
