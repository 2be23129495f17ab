"""Plan: a pure function from the observed picture to the list of actions to take.

Why it exists: every decision vcluster makes about VMs lives here, with no I/O, so it can
be tested as a table of cases (picture -> exact actions). It is level-triggered: Slurm's
node states say what should exist (a POWERING_UP node needs a VM; a POWERED_DOWN one must
have none), the launch map says what vcluster believes exists, OpenNebula's tagged VMs say
what does exist; hook requests only add what Slurm cannot show (which job a resume was for,
that Slurm gave a node up). Running the plan twice on the same picture gives the same
actions, so a failed action is simply planned again next pass.

The plan has three parts: this module passes over Slurm's nodes (a node that needs a VM, a
VM no launch claims) and puts the plan together; one launch's next step is planned in
:mod:`vcluster.controller.plan_launch`, the jobs' side in :mod:`vcluster.controller.plan_jobs`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from datetime import datetime

from vcluster.config import Config
from vcluster.controller import standby
from vcluster.controller.actions import (
    Action,
    AdoptVM,
    ClearReason,
    FailNode,
    MarkHandled,
    PowerDown,
    ResetNode,
    TerminateVM,
)
from vcluster.controller.backoff import apply_backoff
from vcluster.controller.drain import holds_back, plan_drains
from vcluster.controller.observe import Observed
from vcluster.controller.plan_jobs import (
    REASON_PREFIX,
    _jobs_by_node,
    _plan_jobs,
    choose_template,
    job_wishes,
    vm_size,
)
from vcluster.controller.plan_launch import (
    _boot,
    _is_off,
    _per_job_idle,
    _plan_launch,
    _power_down_pending,
    vm_event,
)
from vcluster.controller.preempt import plan_preemption
from vcluster.one_vm import VM
from vcluster.slurm_parse import PER_JOB_REASON_PREFIX, Job, Node

__all__ = ["job_wishes", "plan", "vm_event"]  # job_wishes, vm_event: of plan_jobs, plan_launch

LEFT_POWERING_UP = "its job ended while it powered up"
SLURM_RESUME_TIMEOUT_REASON = "ResumeTimeout reached"
"""The end of the reason Slurm gives a node it stopped waiting for (24.11 keeps the reason
the node had before it: ``POWER_DOWN_ASAP : ResumeTimeout reached``)."""
"""What slurmctld 22.05 writes on a CLOUD node it gave up booting (it leaves it ``down~``)."""


# --- the plan ----------------------------------------------------------------------------------


def _slurm_state(node: Node) -> str:
    """``IDLE+CLOUD+DRAIN+POWER_DOWN``: the node as sinfo -N -o %T shows it."""
    return "+".join([node.state, *sorted(node.flags)])


def _awaits_power_up(node: Node, job: Job | None) -> bool:
    """A node Slurm gave to a job still CONFIGURING (waiting for its nodes to boot) whose
    POWERED_DOWN flag a repeated power-down request cleared before the resume (a late
    epilog of the node's previous job; 22.05 shows ``ALLOCATED+CLOUD+DRAIN+POWER_DOWN``):
    Slurm waits for it as for a node that is up, so it needs a VM, not a failure."""
    return (job is not None and job.is_booting and node.state in ("ALLOCATED", "MIXED")
            and "POWER_DOWN" in node.flags and not node.powering_up)


def _should_boot(obs: Observed, name: str) -> bool:
    """Not right after a failed launch, unless Slurm asked again since."""
    return not _since_last_resume(obs, name, obs.last_failure_at.get(name))


def _since_last_resume(obs: Observed, name: str, at: datetime | None) -> bool:
    """``at`` came after Slurm's last request to resume node ``name``."""
    resumed_at = obs.last_resume_at.get(name)
    return at is not None and (resumed_at is None or resumed_at <= at)


def _left_powering_up(obs: Observed, name: str, node: Node,
                      jobs_by_node: Mapping[str, Job]) -> bool:
    """Powering up for nobody: its launch ended with its job (cancelled while the node
    powered up) since Slurm asked for it, and no job holds it now (IDLE in the same read
    that says it powers up, and none in squeue). Slurm would keep it powering up until
    ResumeTimeout, then mark it DOWN; a VM booted for it would serve no one."""
    return (node.state == "IDLE" and name not in jobs_by_node
            and "COMPLETING" not in node.flags
            and _since_last_resume(obs, name, obs.last_served_at.get(name)))


def _tag_job(vm: VM) -> int | None:
    text = vm.user_template.get("VCLUSTER_JOB", "")
    return int(text) if text.isdigit() else None


def _has_failed(obs: Observed, job: Job | None) -> bool:
    """A VM of the job failed lately: its next VMs wait for Slurm's resume rather than boot
    at its allocation, so that a job whose VMs keep failing costs one VM per try (an early VM
    that failed before its node was powered up is followed by the node's own)."""
    return job is not None and obs.job_failures.get(job.job_id, (0, ""))[0] > 0


def plan(obs: Observed, config: Config) -> list[Action]:
    """The actions that bring OpenNebula and the launch map in line with Slurm."""
    actions: list[Action] = []
    open_by_node = {la.node_name: la for la in obs.launches}
    claimed = {la.vm_id for la in obs.launches if la.vm_id is not None}
    unclaimed_by_node: dict[str, list[VM]] = defaultdict(list)
    for vm in sorted(obs.vms.values(), key=lambda v: v.vm_id):
        if vm.vm_id not in claimed and not vm.is_terminating and not vm.is_failed:
            unclaimed_by_node[vm.user_template.get("VCLUSTER_NODE", "")].append(vm)
    given_up = {n for r in obs.requests if r.kind == "resume-fail" for n in r.nodes}
    jobs_by_node = _jobs_by_node(obs)
    adopted: set[int] = set()
    power_down: list[str] = []
    abandoned: list[str] = []
    abandoned_force: list[str] = []
    reserve = standby.reserve_of(obs, config, vm_event)

    for launch in obs.launches:
        node = obs.nodes.get(launch.node_name)
        step = _plan_launch(config, obs, launch, node, unclaimed_by_node[launch.node_name],
                            jobs_by_node, given_up)
        adopted.update(a.vm_id for a in step if isinstance(a, AdoptVM))
        actions += step
        if not step and _per_job_idle(config, launch, node, jobs_by_node):
            power_down.append(launch.node_name)

    for name, node in sorted(obs.nodes.items()):
        nc = config.class_of_node(name)
        if nc is None or name in open_by_node:
            continue
        tagged = unclaimed_by_node[name]
        if (node.powered_down and node.is_drained and not node.powering_up
                and not node.is_down and node.reason.startswith(PER_JOB_REASON_PREFIX)
                and name not in jobs_by_node):
            actions.append(ClearReason(name, node.reason))
        if (node.powering_up and not node.is_down and not tagged
                and _left_powering_up(obs, name, node, jobs_by_node)):
            # drained first (no job can land on it), then powered down at once
            (abandoned_force if _power_down_pending(node) and "DRAIN" in node.flags
             else abandoned).append(name)
        elif node.powering_up and not node.is_down and not _power_down_pending(node):
            if tagged:  # the map is rebuilt from the VM's tags
                actions.append(AdoptVM(name, nc.name, tagged[0].vm_id, _tag_job(tagged[0]),
                                       "booting", tagged[0].ips[0] if tagged[0].ips else None))
                adopted.add(tagged[0].vm_id)
            elif (name not in given_up and _should_boot(obs, name)
                  and not holds_back(obs, nc, name, jobs_by_node)):
                job = jobs_by_node.get(name)
                handover = standby.claim(reserve, nc, name, job.job_id if job else None,
                                         choose_template(job, nc), vm_size(job, nc))
                actions.append(handover or _boot(config, nc, name, job))
        elif not _is_off(node) and not node.is_down and node.state != "FUTURE":
            if tagged:
                actions.append(AdoptVM(name, nc.name, tagged[0].vm_id, _tag_job(tagged[0]),
                                       "up", tagged[0].ips[0] if tagged[0].ips else None))
                adopted.add(tagged[0].vm_id)
            elif _awaits_power_up(node, jobs_by_node.get(name)):
                if name not in given_up and _should_boot(obs, name):
                    actions.append(_boot(config, nc, name, jobs_by_node.get(name)))
            else:
                actions.append(FailNode(name, "vcluster: no VM backs this node "
                                        f"(Slurm: {_slurm_state(node)})",
                                        job_id=jobs_by_node[name].job_id
                                        if name in jobs_by_node else None))
        elif node.is_down and (node.reason.startswith(REASON_PREFIX)
                               or node.reason.endswith(SLURM_RESUME_TIMEOUT_REASON)):
            if not _is_off(node):
                actions.append(ResetNode(name, node.reason))
            elif node.powered_down and not node.powering_down:
                actions.append(ResetNode(name, node.reason, "RESUME"))
        elif (name in reserve.allocated and not _has_failed(obs, jobs_by_node.get(name))
              and (early := standby.at_allocation(
                  reserve, nc, node, _boot(config, nc, name, jobs_by_node.get(name)),
                  config.slurm.handover_at_allocation))):
            actions.append(early)  # the job's prolog ran: a VM before Slurm's resume

    for vm in sorted(obs.vms.values(), key=lambda v: v.vm_id):
        if (vm.vm_id in claimed or vm.vm_id in adopted or vm.is_terminating
                or standby.is_standby(vm)):
            continue
        tag = vm.user_template.get("VCLUSTER_NODE", "")
        actions.append(TerminateVM(vm.vm_id, tag, f"orphan VM {vm.vm_id} ({vm.state_name}) "
                                   f"tagged for node {tag or '?'}", close_as="terminated"))

    actions += standby.plan_reserve(reserve, obs, config)
    if power_down:
        actions.append(PowerDown(tuple(sorted(power_down)), "per-job node's job ended"))
    if abandoned:
        actions.append(PowerDown(tuple(abandoned), LEFT_POWERING_UP))
    if abandoned_force:
        actions.append(PowerDown(tuple(abandoned_force), LEFT_POWERING_UP, "POWER_DOWN_FORCE"))
    actions += plan_drains(obs, config)
    actions += plan_preemption(obs, config)
    actions += _plan_jobs(config, obs)
    if obs.requests:
        actions.append(MarkHandled(tuple(r.id for r in obs.requests)))
    return apply_backoff(actions, obs, config)
