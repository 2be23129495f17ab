"""Plan, per launch: what each open launch of the map needs next (boot, adopt, mark up,
terminate, fail, resume), from its state, its node in Slurm and its VM in OpenNebula.

Why it exists: a launch's life (requested, allocating, booting, up, terminating) and the
VM events that can end it are the largest part of the plan; kept here, one launch's
decision reads apart from the pass over nodes and jobs in :mod:`vcluster.controller.plan`,
which calls :func:`_plan_launch` for every open launch. Pure, like the rest of the plan.
"""

from __future__ import annotations

from collections.abc import Mapping

from vcluster.config import Config, NodeClass
from vcluster.controller import standby
from vcluster.controller.actions import (
    Action,
    AdoptVM,
    BootVM,
    CloseLaunch,
    FailNode,
    MarkUp,
    NoteKept,
    ResumeVM,
    SetNodeAddr,
    TerminateVM,
)
from vcluster.controller.observe import LaunchView, Observed
from vcluster.controller.plan_jobs import _age_s, choose_template, vm_size
from vcluster.controller.preempt import held_by_suspension, under_suspended_job
from vcluster.one_vm import VM
from vcluster.slurm_parse import Job, Node
from vcluster.vm_events import RESUMED_REASON

TERMINATE_GRACE_S = 120.0
"""A VM still listed this long after its terminate is terminated again, hard."""
_BUSY_FLAGS = frozenset({"POWERING_UP", "POWERING_DOWN", "POWER_DOWN", "POWERED_DOWN",
                         "DRAIN", "COMPLETING"})
_EVENT_OF_STATE = {
    # settled states (oned's STATE, or LCM_STATE when ACTIVE)
    "POWEROFF": "POWEROFF", "SUSPENDED": "SUSPENDED", "STOPPED": "STOPPED",
    "UNDEPLOYED": "UNDEPLOYED", "DONE": "DONE", "UNKNOWN": "UNKNOWN",
    # on their way there: seen before the guest's processes are gone
    "SHUTDOWN_POWEROFF": "POWEROFF", "SAVE_SUSPEND": "SUSPENDED", "SAVE_STOP": "STOPPED",
    "EPILOG_STOP": "STOPPED", "SHUTDOWN_UNDEPLOY": "UNDEPLOYED",
    "EPILOG_UNDEPLOY": "UNDEPLOYED", "SHUTDOWN": "DONE", "EPILOG": "DONE",
    "CLEANUP_DELETE": "DONE", "CLEANUP_RESUBMIT": "DONE",  # recreated: the guest is lost
}
"""What a VM's state means when vcluster did not ask for it: the ``on_vm_event`` key."""
_CRASH_EVENTS = frozenset({"DONE", "UNKNOWN", "FAILURE"})
_EVENT_OF_HOST_STATE = {"OFFLINE": "HOST_OFFLINE", "ERROR": "HOST_ERROR",
                        "MONITORING_ERROR": "HOST_ERROR"}
"""The ``on_vm_event`` key of a running VM's host state (DISABLED: no new VMs, no event)."""


def _is_off(node: Node | None) -> bool:
    """Powered down or on its way (a node Slurm hides counts as powered down)."""
    return node is None or node.powered_down or node.powering_down or _power_down_pending(node)


def _power_down_pending(node: Node) -> bool:
    """IDLE with POWER_DOWN: no job holds it and Slurm powers it down within a second. A
    repeated power-down request (a late epilog) leaves a powered-down node
    ``IDLE+DRAIN+POWER_DOWN`` for a moment; a job cancelled while its node was powering up
    leaves it ``IDLE+DRAIN+POWER_DOWN+POWERING_UP``."""
    return node.state == "IDLE" and "POWER_DOWN" in node.flags and "COMPLETING" not in node.flags


def vm_event(vm: VM | None) -> str | None:
    """The ``on_vm_event`` key of the state of a VM vcluster believes booting or up, or None
    while that state is one vcluster asked for (or one that passes: a migration, a hotplug).
    A VM missing from the listing was terminated or deleted: ``DONE``."""
    if vm is None:
        return "DONE"
    event = _EVENT_OF_STATE.get(vm.state_name)
    if event is None and vm.is_failed:
        return "FAILURE"
    return event


def _boot(config: Config, nc: NodeClass, name: str, job: Job | None,
          launch_id: int | None = None) -> BootVM:
    cpus, memory_mb = vm_size(job, nc)
    return BootVM(name, nc.name, job.job_id if job else None, cpus, memory_mb,
                  choose_template(job, nc), launch_id)


def _not_working_reason(vm: VM, timeout_s: int) -> str:
    """Why ``vm`` was no working node within ResumeTimeout; how far it got says where to
    look: placement (PENDING, with the scheduler's message), contextualization (RUNNING, but
    no READY through OneGate although its CONTEXT asks for it), or slurmd (READY)."""
    head = f"vcluster: VM {vm.vm_id} was not a working node within {timeout_s} s (ResumeTimeout"
    stage = f", its join last reported at stage {vm.join_stage}" if vm.join_stage else ""
    if vm.awaiting_ready:
        gate = vm.context.get("ONEGATE_ENDPOINT") or "no ONEGATE_ENDPOINT"
        return (f"{head}; VM RUNNING but it never reported READY{stage}: its "
                f"contextualization failed or cannot reach OneGate at {gate})")
    if vm.is_running and vm.wants_ready:
        return (f"{head}; VM RUNNING and READY{stage}, but its slurmd did not register with "
                "slurmctld)")
    why = f"; {vm.sched_message}" if vm.sched_message else ""
    return f"{head}; VM {vm.state_name}{why})"


def _plan_launch(config: Config, obs: Observed, launch: LaunchView, node: Node | None,
                 tagged: list[VM], jobs_by_node: Mapping[str, Job],
                 given_up: set[str]) -> list[Action]:
    name, vm_id = launch.node_name, launch.vm_id
    nc = config.class_of_node(name)
    vm = obs.vms.get(vm_id) if vm_id is not None else None
    if nc is None:
        if vm_id is not None:
            return [TerminateVM(vm_id, name, "vcluster: node is in no configured node class",
                                launch.id, close_as="terminated")]
        return [CloseLaunch(launch.id, name, "terminated", "node is in no configured class")]
    if name in given_up:
        reason = "vcluster: Slurm gave the node up (not a working node within ResumeTimeout)"
        if vm_id is not None:
            return [TerminateVM(vm_id, name, reason, launch.id, close_as="failed")]
        return [CloseLaunch(launch.id, name, "failed", reason)]
    state, now = launch.state, obs.now

    if state == "terminating":
        if vm is None:
            return [CloseLaunch(launch.id, name, "terminated", launch.reason)]
        if _age_s(now, launch.updated_at) > TERMINATE_GRACE_S and vm_id is not None:
            return [TerminateVM(vm_id, name, launch.reason, launch.id, hard=True)]
        return []

    if state in ("requested", "allocating"):
        if tagged:
            vm0 = tagged[0]
            return [AdoptVM(name, nc.name, vm0.vm_id, launch.job_id, "booting",
                            vm0.ips[0] if vm0.ips else None, launch.id)]
        if _is_off(node):
            return [CloseLaunch(launch.id, name, "terminated",
                                "Slurm powered the node down before its VM was booted")]
        if state == "allocating" and _age_s(now, launch.updated_at) < (
                config.opennebula.timeout_s + 10):
            return []  # an allocation may still be in flight (or be adopted next pass)
        delays = config.opennebula.retry_delays_s
        if launch.attempts >= 1 + len(delays):
            return [FailNode(name, f"vcluster: no VM after {launch.attempts} attempts: "
                             f"{launch.reason}", launch.id, None, launch.job_id)]
        if launch.attempts and _age_s(now, launch.updated_at) < delays[launch.attempts - 1]:
            return []
        job = jobs_by_node.get(name) or (obs.jobs.get(launch.job_id) if launch.job_id else None)
        return [_boot(config, nc, name, job, launch.id)]

    if vm_id is None:  # booting and up launches have their VM, unless edited by hand
        return [CloseLaunch(launch.id, name, "failed", f"a {state} launch without a VM id")]
    if (_is_off(node) and not under_suspended_job(obs, node)
            and not (node is not None and standby.waits_for_power_up(launch, node))):
        if node is not None and node.is_down:
            # Slurm gave the node up (ResumeTimeout, SlurmdTimeout) and requeued its job
            # before ResumeFailProgram's request was seen: a failed launch all the same, so
            # that the requeued job is made eligible at once
            return [TerminateVM(vm_id, name, f"vcluster: Slurm gave the node up "
                                f"({node.reason or 'DOWN'})", launch.id, close_as="failed")]
        return [TerminateVM(vm_id, name, "Slurm powered the node down", launch.id)]
    assert node is not None
    job = obs.jobs.get(launch.job_id) if launch.job_id is not None else None
    job_ended = (nc.policy == "per-job" and job is not None and job.is_finished
                 and name not in jobs_by_node)
    if job_ended and state == "booting":  # a cancelled job's VM goes, whatever its state
        why = f"job {launch.job_id} ended before its VM was up"
        if vm is None:
            return [CloseLaunch(launch.id, name, "terminated", f"{why} (gone)")]
        return [TerminateVM(vm_id, name, f"{why} ({vm.state_name})", launch.id)]
    if vm is not None and not node.is_down and held_by_suspension(obs, launch):
        return []  # stopped for its suspended job: asked for by vcluster (preempt.py)
    event = vm_event(vm)
    if event is not None:
        # the up node of a job that completed or was cancelled is powered down through
        # Slurm (see _per_job_idle), which terminates its VM: no node failure, no requeue,
        # for a VM nobody needs (a job that ended FAILED as its VM went is requeued)
        if job_ended and job is not None and job.state not in ("FAILED", "NODE_FAIL"):
            return []
        return _plan_vm_event(nc, launch, vm_id, vm, event, _serving(launch, jobs_by_node))
    assert vm is not None
    host_state = obs.host_states.get(vm.host, "") if vm.host else ""
    host_event = _EVENT_OF_HOST_STATE.get(host_state)
    if host_event is not None and nc.vm_event_rule(host_event) == "fail":
        return [FailNode(name, f"vcluster: VM {vm_id}'s host {vm.host} is {host_state}",
                         launch.id, vm_id, _serving(launch, jobs_by_node), host_event,
                         f"on host {vm.host} {host_state}")]
    if host_event is not None:  # keep: said once (the act looks for its own event)
        return [NoteKept(vm_id, name, host_event, f"on host {vm.host} {host_state}",
                         _serving(launch, jobs_by_node))]
    if state == "booting":
        if node.is_down:
            return [TerminateVM(vm_id, name, f"Slurm set the node DOWN: {node.reason}",
                                launch.id, close_as="failed")]
        if vm.join_error:  # the guest said why it cannot join: no wait for ResumeTimeout
            return [FailNode(name, f"vcluster: VM {vm_id} could not join: {vm.join_error}",
                             launch.id, vm_id, launch.job_id)]
        if (handover := standby.reclaim(launch, vm)) is not None:
            return [handover]
        if not node.powering_up and not standby.waits_for_power_up(launch, node):
            if launch.reason == RESUMED_REASON and not vm.is_running:
                return []  # up once its resume has brought it back
            return [MarkUp(launch.id, name, vm_id, _age_s(now, launch.created_at))]
        if _age_s(now, launch.created_at) > config.controller.resume_timeout_s:
            return [FailNode(name, _not_working_reason(vm, config.controller.resume_timeout_s),
                             launch.id, vm_id, launch.job_id)]
        if launch.ip is None and vm.ips:
            return [SetNodeAddr(launch.id, name, vm.ips[0])]
        return []

    # state == "up"
    if node.is_down:
        return [TerminateVM(vm_id, name, f"Slurm set the node DOWN: {node.reason}",
                            launch.id, close_as="failed")]
    return []


def _serving(launch: LaunchView, jobs_by_node: Mapping[str, Job]) -> int | None:
    """The job a launch's node serves now (a pool node's may not be the one it was
    launched for)."""
    job = jobs_by_node.get(launch.node_name)
    return job.job_id if job is not None else launch.job_id


def _plan_vm_event(nc: NodeClass, launch: LaunchView, vm_id: int, vm: VM | None,
                   event: str, job_id: int | None) -> list[Action]:
    """A VM reached a state vcluster did not ask for: the class's rule for it. ``resume``
    waits for the state to settle (SAVE_SUSPEND, SHUTDOWN_POWEROFF), then resumes; ``fail``
    acts at once, before the guest's processes are gone where it can."""
    name, seen = launch.node_name, vm.state_name if vm else "gone"
    if nc.vm_event_rule(event) == "resume" and vm is not None:
        if seen in ("SUSPENDED", "POWEROFF"):
            return [ResumeVM(vm_id, name, event, seen, launch.id, job_id)]
        return []
    if event in _CRASH_EVENTS:
        what = "failed to boot" if launch.state == "booting" else "died"
        reason = f"vcluster: VM {vm_id} {what} ({seen})"
    else:
        reason = f"vcluster: VM {vm_id} {seen} behind vcluster's back"
    return [FailNode(name, reason, launch.id, vm_id if vm else None, job_id, event, seen)]


def _per_job_idle(config: Config, launch: LaunchView, node: Node | None,
                  jobs_by_node: Mapping[str, Job]) -> bool:
    """An up per-job node that no job holds (its job ended, was cancelled or requeued) and
    that Slurm has not been told to power down (the epilog's call was missed or refused)."""
    nc = config.class_of_node(launch.node_name)
    if nc is None or nc.policy != "per-job" or launch.state != "up" or node is None:
        return False
    return (node.state == "IDLE" and not node.flags & _BUSY_FLAGS
            and launch.node_name not in jobs_by_node)

