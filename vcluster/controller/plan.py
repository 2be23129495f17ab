"""Plan: a pure function from the observed picture to the list of actions to take.

Why it exists: every decision vcluster makes about VMs lives here, with no I/O, so it can
be tested as a table of cases (picture -> exact actions). It is level-triggered: Slurm's
node states say what should exist (a POWERING_UP node needs a VM; a POWERED_DOWN one must
have none), the launch map says what vcluster believes exists, OpenNebula's tagged VMs say
what does exist; hook requests only add what Slurm cannot show (which job a resume was for,
that Slurm gave a node up). Running the plan twice on the same picture gives the same
actions, so a failed action is simply planned again next pass.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime

from vcluster.config import Config, NodeClass
from vcluster.controller import standby
from vcluster.controller.actions import (
    Action,
    AdoptVM,
    BootVM,
    ClearReason,
    CloseLaunch,
    FailNode,
    HoldJob,
    MarkHandled,
    MarkUp,
    NoteKept,
    PowerDown,
    RequeueJob,
    ResetNode,
    ResumeVM,
    SetNodeAddr,
    StartNow,
    TerminateVM,
    UpsertJob,
)
from vcluster.controller.backoff import apply_backoff
from vcluster.controller.drain import holds_back, plan_drains
from vcluster.controller.observe import LaunchView, Observed
from vcluster.controller.preempt import (
    held_by_suspension,
    plan_preemption,
    under_suspended_job,
)
from vcluster.one_vm import VM
from vcluster.slurm_parse import (
    PER_JOB_REASON_PREFIX,
    Job,
    Node,
    compress_hostlist,
    expand_hostlist,
)
from vcluster.vm_events import RESUMED_REASON

MIN_VM_MEMORY_MB = 512
"""Smallest VM booted for a job that asks for less (or only Slurm's DefMemPerCPU)."""
MAX_JOB_FAILURES = 3
"""Failed VMs per node of a job (within twice ResumeTimeout) after which the job is held
rather than requeued again: a cause that failed three times will fail a fourth."""
LOST_VM_WINDOW_S = 120.0
"""A job that ended FAILED this close to vcluster giving its VM up is requeued."""
REQUEUE_TRIES_S = 30.0
"""... in the passes of this long after vcluster gave its VM up."""
TERMINATE_GRACE_S = 120.0
"""A VM still listed this long after its terminate is terminated again, hard."""
REASON_PREFIX = "vcluster: "
SLURM_RESUME_TIMEOUT_REASON = "ResumeTimeout reached"
"""The end of the reason Slurm gives a node it stopped waiting for (24.11 keeps the reason
the node had before it: ``POWER_DOWN_ASAP : ResumeTimeout reached``)."""
"""What slurmctld 22.05 writes on a CLOUD node it gave up booting (it leaves it ``down~``)."""
_WISH_RE = re.compile(r"vcluster\[([^\]]*)\]")
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


# --- what a job asks for -----------------------------------------------------------------------


def job_wishes(comment: str) -> dict[str, str]:
    """``vcluster[template=ubuntu,x=y] my note`` -> ``{"template": "ubuntu", "x": "y"}``."""
    match = _WISH_RE.search(comment or "")
    if not match:
        return {}
    wishes: dict[str, str] = {}
    for part in match.group(1).split(","):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            wishes[key.strip()] = value.strip()
    return wishes


def choose_template(job: Job | None, node_class: NodeClass) -> str:
    """The job's ``vcluster[template=NAME]`` if the class allows it, else the class's."""
    wish = job_wishes(job.comment).get("template") if job else None
    if wish and wish in node_class.allowed_templates:
        return wish
    return node_class.template


def vm_size(job: Job | None, node_class: NodeClass) -> tuple[int, int]:
    """(cpus, memory_mb) of one of the job's VMs: what it asked per node, never above the
    class. A ``pool`` node serves later jobs too, and a node powered up without a job has
    nothing to size to: both get the whole class size."""
    if job is None or node_class.policy == "pool":
        return node_class.cpus, node_class.memory_mb
    node_count = max(1, job.node_count or len(job.nodes))
    requested = (job.tasks * max(1, job.cpus_per_task)) if job.tasks > 0 else job.cpus
    cpus = min(node_class.cpus, max(1, math.ceil(requested / node_count))) if requested \
        else node_class.cpus
    if job.memory_per_node_mb:
        memory_mb = job.memory_per_node_mb
    elif job.memory_per_cpu_mb:
        memory_mb = job.memory_per_cpu_mb * cpus
    else:
        memory_mb = node_class.memory_mb
    floor_mb = min(MIN_VM_MEMORY_MB, node_class.memory_mb)
    return cpus, min(node_class.memory_mb, max(floor_mb, memory_mb))


def _jobs_by_node(obs: Observed) -> dict[str, Job]:
    """The unfinished job each node serves: from squeue, else from the resume file."""
    by_node: dict[str, Job] = {}
    for request in obs.requests:
        if request.kind != "resume":
            continue
        for entry in request.payload.get("jobs", []):
            job = obs.jobs.get(int(entry.get("job_id", 0)))
            if job is not None and not job.is_finished:
                for name in expand_hostlist(str(entry.get("nodes", ""))):
                    by_node[name] = job
    for job in obs.jobs.values():
        if not job.is_finished:
            for name in job.nodes:
                by_node[name] = job
    return by_node


# --- the plan ----------------------------------------------------------------------------------


def _age_s(now: datetime, then: datetime) -> float:
    return (now - then).total_seconds()


def _is_off(node: Node | None) -> bool:
    """Powered down or on its way (a node Slurm hides counts as powered down)."""
    return node is None or node.powered_down or node.powering_down or _power_down_pending(node)


def _slurm_state(node: Node) -> str:
    """``IDLE+CLOUD+DRAIN+POWER_DOWN``: the node as sinfo -N -o %T shows it."""
    return "+".join([node.state, *sorted(node.flags)])


def _power_down_pending(node: Node) -> bool:
    """IDLE with POWER_DOWN: no job holds it and Slurm powers it down within a second. A
    repeated power-down request (a late epilog) leaves a powered-down node
    ``IDLE+DRAIN+POWER_DOWN`` for a moment; a job cancelled while its node was powering up
    leaves it ``IDLE+DRAIN+POWER_DOWN+POWERING_UP``."""
    return node.state == "IDLE" and "POWER_DOWN" in node.flags and "COMPLETING" not in node.flags


def _awaits_power_up(node: Node, job: Job | None) -> bool:
    """A node Slurm gave to a job still CONFIGURING (waiting for its nodes to boot) whose
    POWERED_DOWN flag a repeated power-down request cleared before the resume (a late
    epilog of the node's previous job; 22.05 shows ``ALLOCATED+CLOUD+DRAIN+POWER_DOWN``):
    Slurm waits for it as for a node that is up, so it needs a VM, not a failure."""
    return (job is not None and job.is_booting and node.state in ("ALLOCATED", "MIXED")
            and "POWER_DOWN" in node.flags and not node.powering_up)


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


def _should_boot(obs: Observed, name: str) -> bool:
    """Not right after a failed launch, unless Slurm asked again since."""
    failed_at = obs.last_failure_at.get(name)
    if failed_at is None:
        return True
    resumed_at = obs.last_resume_at.get(name)
    return resumed_at is not None and resumed_at > failed_at


def _boot(config: Config, nc: NodeClass, name: str, job: Job | None,
          launch_id: int | None = None) -> BootVM:
    cpus, memory_mb = vm_size(job, nc)
    return BootVM(name, nc.name, job.job_id if job else None, cpus, memory_mb,
                  choose_template(job, nc), launch_id)


def _tag_job(vm: VM) -> int | None:
    text = vm.user_template.get("VCLUSTER_JOB", "")
    return int(text) if text.isdigit() else None


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


def _has_failed(obs: Observed, job: Job | None) -> bool:
    """A VM of the job failed lately: its next VMs wait for Slurm's resume rather than boot
    at its allocation, so that a job whose VMs keep failing costs one VM per try (an early VM
    that failed before its node was powered up is followed by the node's own)."""
    return job is not None and obs.job_failures.get(job.job_id, (0, ""))[0] > 0


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


def _failed_with_its_vm(obs: Observed, job: Job) -> bool:
    """The run Slurm ended FAILED or NODE_FAIL was running when vcluster gave one of its VMs
    up, within ``LOST_VM_WINDOW_S`` of its end (its guest killed the job's processes, or
    Slurm saw the node fail first). Asked in the passes of the next ``REQUEUE_TRIES_S`` after
    the loss (a requeued job is PENDING at once; one Slurm refuses is left FAILED)."""
    lost_at = obs.failed_jobs.get(job.job_id)
    if (job.state not in ("FAILED", "NODE_FAIL") or lost_at is None or job.start_time is None
            or job.end_time is None or _age_s(obs.now, lost_at) > REQUEUE_TRIES_S):
        return False
    lost_s = lost_at.timestamp()
    return job.start_time <= lost_s and abs(job.end_time - lost_s) <= LOST_VM_WINDOW_S


def _plan_jobs(config: Config, obs: Observed) -> list[Action]:
    actions: list[Action] = []
    partitions = set(config.slurm.partitions) | {config.slurm.preempt_partition} - {""}
    seen: set[int] = set()
    for job in sorted(obs.jobs.values(), key=lambda j: j.job_id):
        if not partitions & set(job.partition.split(",")):
            continue
        seen.add(job.job_id)
        if (job.state == "PENDING" and job.state_reason == "BeginTime"
                and job.job_id in obs.failed_jobs):
            failures, reason = obs.job_failures.get(job.job_id, (0, ""))
            if failures >= MAX_JOB_FAILURES * max(1, job.node_count):
                actions.append(HoldJob(job.job_id, f"vcluster: held after {failures} failed "
                                       f"VMs; last: {reason.removeprefix(REASON_PREFIX)}"))
            else:
                why = (f" after a VM failed ({failures} so far); last: "
                       f"{reason.removeprefix(REASON_PREFIX)}" if failures else
                       ": " + obs.requeue_why.get(job.job_id, "its nodes were given back"))
                actions.append(StartNow(job.job_id, f"vcluster: requeued{why}"))
        nodes = compress_hostlist(job.nodes)
        known = obs.known_jobs.get(job.job_id)
        if _failed_with_its_vm(obs, job):
            actions.append(RequeueJob(job.job_id, f"vcluster: it ended {job.state} when "
                                      "vcluster gave its VM up"))
        if known is not None and (known.state, known.nodes) == (job.state, nodes):
            continue
        nc = next((c for n in job.nodes if (c := config.class_of_node(n))), None) or next(
            (c for c in config.node_classes if c.name in re.split(r"[&|,*\[\]() ]+",
                                                                  job.features)), None)
        actions.append(UpsertJob(
            job.job_id, nc.name if nc else None, choose_template(job, nc) if nc else None,
            job.user, job.state, nodes, job.exit_code, job.start_time,
            job.end_time if job.is_finished else None, account=job.account))
    for known in sorted(obs.known_jobs.values(), key=lambda k: k.job_id):
        if known.job_id not in seen and not known.ended:
            actions.append(UpsertJob(known.job_id, None, known.template, "", known.state,
                                     known.nodes, None, None, None, gone=True))
    return actions


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
        if node.powering_up and not node.is_down and not _power_down_pending(node):
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
    actions += plan_drains(obs, config)
    actions += plan_preemption(obs, config)
    actions += _plan_jobs(config, obs)
    if obs.requests:
        actions.append(MarkHandled(tuple(r.id for r in obs.requests)))
    return apply_backoff(actions, obs, config)


def nodes_of(actions: Iterable[Action]) -> list[str]:
    """Node names the actions touch (for logging)."""
    names: list[str] = []
    for a in actions:
        name = getattr(a, "node_name", None)
        if isinstance(name, str) and name:
            names.append(name)
    return names
