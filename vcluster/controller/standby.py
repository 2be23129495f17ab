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

Boot at allocation uses the same handover. PrologSlurmctld runs (and wakes the controller)
milliseconds after Slurm allocates a job's nodes, while they are still ``ALLOCATED`` and
``POWERED_DOWN``; Slurm's power-save pass marks them powering up and runs ResumeProgram
about a second later (more under load). A VM booted for such a node at once
(:class:`BootEarly`) is unnamed and tagged ``VCLUSTER_EARLY`` = node: it is handed to its
node only once Slurm shows it powering up, so its slurmd cannot register with slurmctld
before slurmctld expects it (the race that made booting from the prolog unsafe). A node
that a ready standby VM will serve gets no early VM; an early VM whose node went elsewhere
(the job cancelled before its resume) is terminated.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from vcluster.config import Config, NodeClass
from vcluster.controller.actions import (
    Action,
    BootEarly,
    BootStandby,
    BootVM,
    ClaimStandby,
    TerminateVM,
)
from vcluster.controller.observe import EARLY_FAILED_EVENT, LaunchView, Observed
from vcluster.one_vm import VM
from vcluster.slurm_parse import Node

STANDBY_TAG = "VCLUSTER_STANDBY"
"""USER_TEMPLATE (and CONTEXT) attribute naming the class of a standby VM."""
EARLY_TAG = "VCLUSTER_EARLY"
"""USER_TEMPLATE attribute naming the node a VM booted at allocation is meant for."""
AT_ALLOCATION_REASON = "handed over at allocation"
"""The reason of a launch opened by a handover at allocation (while Slurm still shows the
node powered down)."""


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
    early: dict[str, VM] = field(default_factory=dict)
    """Node name -> the unnamed VM booted for it at allocation."""
    promised: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    """Class -> ready standby VMs promised this pass to allocated nodes (no early VM)."""
    allocated: frozenset[str] = frozenset()
    """Nodes of jobs whose prolog request is not handled yet (allocated milliseconds ago)."""


def _retire(vm: VM, why: str, hard: bool = False) -> TerminateVM:
    return TerminateVM(vm.vm_id, "", f"standby VM {vm.vm_id} of class "
                       f"{vm.user_template.get(STANDBY_TAG, '?')} {why}", close_as="terminated",
                       hard=hard)


def _early_failed(vm: VM, node_name: str, event: str | None) -> TerminateVM:
    """A VM booted at its job's allocation failed before Slurm powered its node up: it goes
    (a power cut), and the failure is its job's (``EARLY_FAILED_EVENT``): the node still gets
    a VM when Slurm powers it up, and a job whose VMs keep failing is held after the same
    number of failed VMs whichever way they were booted."""
    job = vm.user_template.get("VCLUSTER_JOB", "")
    what = (f"failed to boot ({vm.state_name})" if event is not None
            else f"could not join: {vm.join_error}")
    return TerminateVM(vm.vm_id, node_name, f"vcluster: VM {vm.vm_id} booted early for {node_name} "
                       f"{what}", close_as="terminated", hard=True,
                       job_id=int(job) if job.isdigit() else None,
                       event_kind=EARLY_FAILED_EVENT)


def reserve_of(obs: Observed, config: Config,
               vm_event: Callable[[VM], str | None]) -> Reserve:
    """Sort this cluster's standby VMs: healthy ones by class, the rest to terminate.
    ``vm_event`` is the planner's: the ``on_vm_event`` key of a state vcluster did not ask
    for, None while the VM is as it should be."""
    reserve = Reserve(allocated=frozenset(
        n for r in obs.requests if r.kind == "prolog" for n in r.nodes))
    now_s = obs.now.timestamp()
    claimed = {la.vm_id for la in obs.launches if la.vm_id is not None}
    for vm in sorted(obs.vms.values(), key=lambda v: (v.start_time or now_s, v.vm_id)):
        if not is_standby(vm) or vm.is_terminating or vm.vm_id in claimed:
            continue
        class_name = vm.user_template[STANDBY_TAG]
        nc = next((c for c in config.node_classes if c.name == class_name), None)
        event = vm_event(vm)
        early_node = vm.user_template.get(EARLY_TAG, "")
        if nc is None:
            reserve.retire.append(_retire(vm, "belongs to no configured class"))
        elif (event is not None or vm.join_error) and early_node:
            reserve.retire.append(_early_failed(vm, early_node, event))
        elif event is not None:
            reserve.retire.append(_retire(vm, f"failed ({vm.state_name})", hard=True))
        elif vm.join_error:
            reserve.retire.append(_retire(vm, f"could not join: {vm.join_error}", hard=True))
        elif early_node and early_node not in reserve.early:
            reserve.early[early_node] = vm
        elif early_node:
            reserve.retire.append(_retire(vm, f"is a second VM booted early for {early_node}"))
        elif age_s(vm, now_s) > nc.standby_max_age_s:
            reserve.retire.append(_retire(vm, f"is older than standby_max_age_s "
                                          f"({nc.standby_max_age_s} s): replaced"))
        else:
            reserve.healthy[nc.name].append(vm)
            if is_claimable(vm):
                reserve.ready[nc.name].append(vm)
    return reserve


def claim(reserve: Reserve, nc: NodeClass, node_name: str, job_id: int | None,
          template: str, size: tuple[int, int] | None = None) -> ClaimStandby | None:
    """The VM booted early for this node, else a ready standby VM of ``nc``, or None (none
    ready, or the job wants another template than the class's, which standby VMs are booted
    from). A ready standby VM is preferred to an early VM still booting (which then goes)."""
    early = reserve.early.get(node_name)
    if early is not None and early.ips and (
            is_claimable(early) or template != nc.template or not reserve.ready[nc.name]):
        reserve.claimed.add(early.vm_id)
        del reserve.early[node_name]
        booted = (size[0], size[1], template) if size is not None else None
        return ClaimStandby(node_name, nc.name, early.vm_id, job_id, early.ips[0],
                            size=booted)  # booted at allocation with the job's size
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


def allocated_unpowered(node: Node) -> bool:
    """Allocated to a job, still powered down: Slurm's power-save pass has not run yet."""
    return (node.powered_down and not node.powering_up and not node.is_down
            and node.state in ("ALLOCATED", "MIXED"))


def at_allocation(reserve: Reserve, nc: NodeClass, node: Node, boot: BootVM,
                  handover: bool) -> ClaimStandby | BootEarly | None:
    """For a node the prolog said was just allocated: with ``handover`` (the site's
    ``slurm.handover_at_allocation``), a ready standby VM at once; else a VM booted early."""
    if (handover and boot.job_id is not None and allocated_unpowered(node)
            and node.name in reserve.allocated and boot.template == nc.template
            and reserve.ready[nc.name]):
        given = claim(reserve, nc, node.name, boot.job_id, boot.template,
                      (boot.cpus, boot.memory_mb))
        if given is not None:
            return dataclasses.replace(given, at_allocation=True)
    return boot_early(reserve, nc, node, boot)


def waits_for_power_up(launch: LaunchView, node: Node) -> bool:
    """A launch handed a VM at its job's allocation, whose node Slurm has not powered up
    yet: not a node powered down under its VM."""
    return (launch.state == "booting" and launch.reason == AT_ALLOCATION_REASON
            and allocated_unpowered(node))


def boot_early(reserve: Reserve, nc: NodeClass, node: Node, boot: BootVM) -> BootEarly | None:
    """A VM for an allocated node Slurm has not started powering up, when the prolog said
    its job was allocated (its request not yet handled), unless a VM was booted early for it
    already or a ready standby VM will serve it."""
    if (boot.job_id is None or not allocated_unpowered(node) or node.name in reserve.early
            or node.name not in reserve.allocated):
        return None
    if boot.template == nc.template and reserve.promised[nc.name] < len(reserve.ready[nc.name]):
        reserve.promised[nc.name] += 1
        return None
    return BootEarly(node.name, nc.name, boot.job_id, boot.cpus, boot.memory_mb,
                     boot.template)


def _early_misplaced(obs: Observed, node_name: str) -> str:
    """Why a VM booted early for ``node_name`` is no longer wanted, or ""."""
    if any(la.node_name == node_name for la in obs.launches):
        return "its node was served by another VM"
    node = obs.nodes.get(node_name)
    if node is None or node.is_down:
        return "its node is gone or DOWN"
    if node.powering_up or (node.powered_down and node.state in ("ALLOCATED", "MIXED")):
        return ""
    return "its node's job left it before it was powered up"


def _wanted(obs: Observed, nc: NodeClass) -> int:
    """K, or 0 while an admin drained the class (no new VMs)."""
    return 0 if nc.name in obs.drains else nc.standby


def plan_reserve(reserve: Reserve, obs: Observed, config: Config) -> list[Action]:
    """Terminate what is wrong or beyond K, boot what is missing; replacements of VMs
    handed out this pass are part of the deficit."""
    actions: list[Action] = list(reserve.retire)
    for node_name, vm in sorted(reserve.early.items()):
        why = _early_misplaced(obs, node_name)
        if why:
            actions.append(_retire(vm, f"booted early for {node_name}: {why}"))
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
            if is_standby(vm) and not vm.is_terminating and not vm.user_template.get(EARLY_TAG)]
