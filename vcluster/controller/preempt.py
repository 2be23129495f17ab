"""Preemption that the job survives: a suspended job's VMs stopped, and brought back with it.

Why it exists apart: Slurm suspends a job (``scontrol suspend``, gang scheduling, its own
PreemptMode=SUSPEND) by stopping its processes; the VMs under it would keep their hosts'
CPUs and memory for nothing. vcluster stops those VMs in OpenNebula and resumes them when the
job runs again. OpenNebula's three ways to take a VM off a host differ in what they keep:

- ``suspend`` saves nothing to disk and keeps the VM on its host: oned still counts its
  CPU and memory as used there (the host is not freed);
- ``undeploy`` shuts the guest down (its disks are kept, its memory is lost): the job's
  processes would be gone;
- ``stop`` saves the guest's memory and moves it off the host (the host's capacity is freed),
  and ``resume`` places it again (on any host that fits) and restores it: the job's
  processes continue where they were. vcluster uses ``stop``.

While the VM is stopped its slurmd cannot answer: the site runs ``SlurmdTimeout=0`` (``vcluster
slurm-conf`` writes it), which leaves node health to vcluster, which watches every VM through
OpenNebula anyway. The node is DRAINed meanwhile so Slurm places no other job on it.

When a job of the site's ``preempt_partition`` cannot have its VM placed (OpenNebula's
scheduler says why in SCHED_MESSAGE), vcluster itself suspends the most recently started
running job of the other partitions (``scontrol suspend``) so that its VMs' capacity frees
the room, one job at a time; once the preemptor's VMs are gone, the VMs come back and the job
is resumed (``scontrol resume``). Slurm cannot make that choice: it does not know the cloud's
hosts are full.

Cold migration: a STOPPED VM has left its host, and its resume makes it PENDING, so
OpenNebula's scheduler places it on any enabled host with room (its old one if that is
still enabled and has room). A VM held SUSPENDED or POWEROFF on a host that is no longer
enabled (``onehost disable``, ``vcluster drain-host``) is moved cold first (one.vm.migrate to
the enabled host with the most free CPU that has room) and resumed there.

A ``suspension`` row per node records what vcluster asked for, so a STOPPED VM it stopped is
never taken for an ``on_vm_event``. Pure: the picture in, actions out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from vcluster.config import Config
from vcluster.controller.actions import (
    Action,
    DropSuspension,
    FinishResume,
    MarkStopped,
    MoveSuspendedVM,
    RestoreVM,
    SetDrain,
    StopVM,
    SuspendJob,
)
from vcluster.controller.observe import LaunchView, Observed, SuspensionView
from vcluster.slurm_parse import Job, Node

PREEMPT_SETTLE_S = 10.0
"""After the jobs preempted for a waiting VM have their VMs STOPPED, how long OpenNebula's
scheduler gets to place that VM before one more job is preempted for it."""
HOST_NOT_ENABLED = frozenset({"DISABLED", "OFFLINE", "ERROR"})
"""Host states in which OpenNebula places no VM: a suspended VM there moves before resuming."""
REDELIVER_GAP_S = 3.0
"""A job Slurm resumed while its VMs were stopped (slurmd never got the resume): once the VMs
run, vcluster says it again as ``scontrol suspend`` now and ``scontrol resume`` this long
after, never both at once. slurmd runs each RPC in a thread of its own, and a suspend and a
resume of one job take its suspend lock in whichever order their threads get there
(``_rpc_suspend_job`` in slurmd's req.c): sent together, the resume can land first and the
suspend after it, leaving the job's processes stopped while Slurm says RUNNING. slurmstepd's
suspend itself takes 2 s (SIGTSTP, sleep 2, SIGSTOP)."""
SUSPEND_REASON_PREFIX = "vcluster suspend: "
"""Starts the DRAIN reason of a node whose VM vcluster stopped (lifted once it is back)."""


def suspend_reason(job_id: int) -> str:
    return f"{SUSPEND_REASON_PREFIX}VM stopped while job {job_id} is suspended"


def held_by_suspension(obs: Observed, launch: LaunchView) -> bool:
    """The launch's VM is one vcluster stopped (or is stopping or bringing back) for its
    suspended job: its state is what vcluster asked for, not an event."""
    row = obs.suspensions.get(launch.node_name)
    return row is not None and launch.vm_id is not None and row.vm_id == launch.vm_id


def under_suspended_job(obs: Observed, node: Node | None) -> bool:
    """The node holds a job Slurm suspended: IDLE with the prolog's POWER_DOWN_ASAP pending,
    but Slurm powers down no node with a suspended job, and neither does vcluster."""
    return (node is not None and not node.powered_down and not node.powering_down
            and any(j.state == "SUSPENDED" and node.name in j.nodes for j in obs.jobs.values()))


def _age_s(obs: Observed, row: SuspensionView, *, since_update: bool = False) -> float:
    return (obs.now - (row.updated_at if since_update else row.created_at)).total_seconds()


def _vm_state(obs: Observed, vm_id: int | None) -> str:
    vm = obs.vms.get(vm_id) if vm_id is not None else None
    return vm.state_name if vm is not None else ""


def _busy_nodes(obs: Observed) -> set[str]:
    """Nodes some job runs on: a suspended job's VM stays where a preemptor shares its node."""
    return {n for j in obs.jobs.values() if j.state in ("RUNNING", "CONFIGURING", "COMPLETING")
            for n in j.nodes}


def _stop_suspended(obs: Observed, launches: Mapping[str, LaunchView],
                    busy: set[str]) -> list[Action]:
    """Slurm suspended a job on nodes no other job uses: stop their RUNNING VMs."""
    actions: list[Action] = []
    for job in sorted(obs.jobs.values(), key=lambda j: j.job_id):
        if job.state != "SUSPENDED":
            continue
        for name in job.nodes:
            launch = launches.get(name)
            if (name in obs.suspensions or name in busy or launch is None
                    or launch.state != "up" or launch.vm_id is None):
                continue
            if _vm_state(obs, launch.vm_id) == "RUNNING":
                actions.append(StopVM(launch.vm_id, name, job.job_id))
    return actions


def _preemptor_done(obs: Observed, by_job: int) -> bool:
    """The job vcluster preempted for has ended and none of its VMs holds a host."""
    job = obs.jobs.get(by_job)
    return (job is None or job.is_finished) and not any(
        la.job_id == by_job and la.vm_id is not None for la in obs.launches)


def _follow(obs: Observed, job_id: int, rows: list[SuspensionView],
            launches: Mapping[str, LaunchView], busy: set[str]) -> list[Action]:
    """One suspended job's rows: stop, note stopped, bring back, finish, or forget."""
    gone = tuple(r.node_name for r in rows
                 if getattr(launches.get(r.node_name), "vm_id", None) != r.vm_id
                 or r.vm_id not in obs.vms)
    actions: list[Action] = []
    if gone:
        actions.append(DropSuspension(gone, job_id, "its VM or launch is gone"))
        rows = [r for r in rows if r.node_name not in gone]
    job = obs.jobs.get(job_id)
    if not rows or job is None or job.is_finished or job.state == "PENDING":
        # ended or requeued while suspended: its nodes are powered down and the VMs
        # terminated as any other's; the rows go with the launches
        return actions
    by_job = rows[0].by_job
    if job.state == "SUSPENDED" and all(r.by_job == job_id for r in rows):
        # vcluster suspended the job itself to say Slurm's resume again: resume it once
        # slurmd has surely taken the suspend (REDELIVER_GAP_S)
        since = min(_age_s(obs, r, since_update=True) for r in rows)
        if (all(_vm_state(obs, r.vm_id) == "RUNNING" for r in rows)
                and since >= REDELIVER_GAP_S):
            actions.append(FinishResume(job_id, tuple(sorted(r.node_name for r in rows)),
                                        slurm_resume=True, redeliver=False, seconds=since,
                                        stopped_vms=tuple((r.node_name, r.vm_id) for r in rows
                                                          if r.state != "suspending")))
        return actions
    wanted_back = job.state == "RUNNING" or (
        job.state == "SUSPENDED" and by_job is not None and _preemptor_done(obs, by_job)
        and all(r.state != "suspending" for r in rows))
    if not wanted_back:
        for r in rows:
            state = _vm_state(obs, r.vm_id)
            if (r.state == "suspending" and job.state == "SUSPENDED" and state == "RUNNING"
                    and r.node_name not in busy):
                actions.append(StopVM(r.vm_id, r.node_name, job_id, r.by_job))
            elif r.state == "stopping" and state == "STOPPED":
                actions.append(MarkStopped(r.vm_id, r.node_name, job_id, _age_s(obs, r)))
        return actions
    for r in rows:
        state = _vm_state(obs, r.vm_id)
        vm = obs.vms.get(r.vm_id) if r.vm_id is not None else None
        if (state in ("SUSPENDED", "POWEROFF") and r.state != "resuming" and vm is not None
                and obs.host_states.get(vm.host, "") in HOST_NOT_ENABLED):
            actions.append(MoveSuspendedVM(vm.vm_id, r.node_name, job_id, vm.host))
        elif state in ("STOPPED", "SUSPENDED") and r.state != "resuming":
            # a STOPPED VM resumed is PENDING again: OpenNebula's scheduler places it on
            # any enabled host with room (vcluster does not pin it to its old host)
            actions.append(RestoreVM(r.vm_id, r.node_name, job_id))
    if all(_vm_state(obs, r.vm_id) == "RUNNING" for r in rows):
        stopped = tuple(sorted(r.node_name for r in rows if r.state != "suspending"))
        since = min((_age_s(obs, r, since_update=True) for r in rows
                     if r.state == "resuming"), default=0.0)
        actions.append(FinishResume(job_id, stopped, slurm_resume=job.state == "SUSPENDED",
                                    redeliver=job.state == "RUNNING" and bool(stopped),
                                    seconds=since,
                                    stopped_vms=tuple((r.node_name, r.vm_id) for r in rows
                                                      if r.state != "suspending")))
    return actions


def _lift_drains(obs: Observed) -> list[Action]:
    """DRAIN that vcluster set on a suspended job's node whose row is gone (a resume whose
    RESUME call failed, a job cancelled while suspended)."""
    names = tuple(sorted(n for n, node in obs.nodes.items()
                         if node.is_drained and not node.is_down and n not in obs.suspensions
                         and node.reason.startswith(SUSPEND_REASON_PREFIX)))
    return [SetDrain(names, False, "suspension over")] if names else []


def _victims(obs: Observed, config: Config, launches: Mapping[str, LaunchView],
             taken: set[int]) -> list[Job]:
    """Running jobs of the preemptible partitions whose every node has a RUNNING VM of
    vcluster's, newest first."""
    partitions = set(config.slurm.partitions)
    out: list[Job] = []
    for job in obs.jobs.values():
        if (job.state != "RUNNING" or not job.nodes or job.job_id in taken
                or not partitions & set(job.partition.split(","))):
            continue
        ok = all(n not in obs.suspensions and (la := launches.get(n)) is not None
                 and la.state == "up" and _vm_state(obs, la.vm_id) == "RUNNING"
                 for n in job.nodes)
        if ok:
            out.append(job)
    return sorted(out, key=lambda j: (-(j.start_time or 0.0), -j.job_id))


def _preempt_for_capacity(obs: Observed, config: Config,
                          launches: Mapping[str, LaunchView]) -> list[Action]:
    """A preempt-partition job's VM that OpenNebula cannot place: suspend one job for it."""
    waiting: dict[int, tuple[int, str]] = {}
    for la in obs.launches:
        vm = obs.vms.get(la.vm_id) if la.vm_id is not None else None
        job = obs.jobs.get(la.job_id) if la.job_id is not None else None
        if (la.state == "booting" and vm is not None and vm.state_name == "PENDING"
                and vm.sched_message and job is not None and not job.is_finished
                and config.slurm.preempt_partition in job.partition.split(",")):
            waiting.setdefault(job.job_id, (vm.vm_id, vm.sched_message))
    actions: list[Action] = []
    taken = {r.job_id for r in obs.suspensions.values()}
    for by_job, (vm_id, message) in sorted(waiting.items()):
        mine = [r for r in obs.suspensions.values() if r.by_job == by_job]
        if any(r.state in ("suspending", "stopping") for r in mine) or any(
                _age_s(obs, r, since_update=True) < PREEMPT_SETTLE_S for r in mine):
            continue  # room is being made, or OpenNebula's scheduler has not tried since
        victims = _victims(obs, config, launches, taken)
        if not victims:
            continue
        victim = victims[0]
        taken.add(victim.job_id)
        nodes = tuple(sorted(victim.nodes))
        vm_ids = tuple(v for n in nodes if (v := launches[n].vm_id) is not None)
        actions.append(SuspendJob(victim.job_id, by_job, nodes, vm_ids,
                                  f"job {by_job} ({config.slurm.preempt_partition}) needs room: "
                                  f"its VM {vm_id} cannot be placed ({message})"))
    return actions


def plan_preemption(obs: Observed, config: Config) -> list[Action]:
    """Stop suspended jobs' VMs, bring them back with their jobs, preempt for capacity."""
    launches = {la.node_name: la for la in obs.launches}
    busy = _busy_nodes(obs)
    actions = _stop_suspended(obs, launches, busy)
    rows_by_job: dict[int, list[SuspensionView]] = defaultdict(list)
    for row in obs.suspensions.values():
        rows_by_job[row.job_id].append(row)
    for job_id, rows in sorted(rows_by_job.items()):
        actions += _follow(obs, job_id, sorted(rows, key=lambda r: r.node_name), launches,
                           busy)
    actions += _lift_drains(obs)
    if config.slurm.preempt_partition:
        actions += _preempt_for_capacity(obs, config, launches)
    return actions
