"""Plan, per job: what a job asks of its VMs, and the job map's and Slurm's job actions.

Why it exists: :mod:`vcluster.controller.plan` decides about nodes and VMs; a job's side of
that (the template and size its VMs get, which node serves which job, requeueing, holding,
making a requeued job eligible, the job rows of the map) reads only the job listing and the
job map, so it is planned here, as pure as the rest of the plan and imported by it.
"""

from __future__ import annotations

import math
import re
from datetime import datetime

from vcluster.config import Config, NodeClass
from vcluster.controller.actions import Action, HoldJob, RequeueJob, StartNow, UpsertJob
from vcluster.controller.observe import Observed
from vcluster.slurm_parse import Job, compress_hostlist, expand_hostlist

MIN_VM_MEMORY_MB = 512
"""Smallest VM booted for a job that asks for less (or only Slurm's DefMemPerCPU)."""
MAX_JOB_FAILURES = 3
"""Failed VMs per node of a job (within twice ResumeTimeout) after which the job is held
rather than requeued again: a cause that failed three times will fail a fourth."""
LOST_VM_WINDOW_S = 120.0
"""A job that ended FAILED this close to vcluster giving its VM up is requeued."""
REQUEUE_TRIES_S = 30.0
"""... in the passes of this long after vcluster gave its VM up."""
REASON_PREFIX = "vcluster: "
_WISH_RE = re.compile(r"vcluster\[([^\]]*)\]")


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



def _age_s(now: datetime, then: datetime) -> float:
    return (now - then).total_seconds()


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
