"""Slurm jobs as vcluster reads them: the :class:`Job` record and ``squeue --json``'s reader.

Why it exists: the jobs' part of :mod:`vcluster.slurm_parse` (which re-exports it), apart
from the nodes' (:mod:`vcluster.slurm_nodes`): the job record, the job states and how a
state list reads as one word, one job of the listing and the whole listing, pure and
tested on the captures of each Slurm version.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from vcluster.errors import SlurmParseError
from vcluster.slurm_hostlist import expand_hostlist
from vcluster.slurm_values import (
    _errors,
    _exit_status,
    _int,
    _load_json_list,
    _number,
    _state_words,
    _str,
    _time,
)

# Job states after which the job will not run again (unless requeued by hand).
FINISHED_JOB_STATES = frozenset({
    "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
    "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "REVOKED",
})
# Job state flags in the order Slurm's job_state_string() lets them stand for the whole state
# (slurm_protocol_defs.c, 22.05 and 24.11 alike): a job RUNNING+CONFIGURING reads CONFIGURING,
# CANCELLED+COMPLETING reads COMPLETING. POWER_UP_NODE (24.11: the job's nodes are powering
# up; CONFIGURING is normally set too) reads as CONFIGURING, as 22.05 shows such a job.
_JOB_FLAG_PRECEDENCE = (
    ("COMPLETING", "COMPLETING"), ("STAGE_OUT", "STAGE_OUT"), ("CONFIGURING", "CONFIGURING"),
    ("POWER_UP_NODE", "CONFIGURING"), ("RESIZING", "RESIZING"), ("REQUEUED", "REQUEUED"),
    ("REQUEUE_FED", "REQUEUE_FED"), ("REQUEUE_HOLD", "REQUEUE_HOLD"),
    ("SPECIAL_EXIT", "SPECIAL_EXIT"), ("STOPPED", "STOPPED"), ("REVOKED", "REVOKED"),
    ("RESV_DEL_HOLD", "RESV_DEL_HOLD"), ("SIGNALING", "SIGNALING"),
)


@dataclass(frozen=True)
class Job:
    """One Slurm job (or one array task) as ``squeue --json`` reports it."""

    job_id: int
    array_job_id: int | None
    """The array's master job id for an array task, else None."""
    array_task_id: int | None
    name: str
    user: str
    user_id: int
    state: str
    """``PENDING``, ``CONFIGURING``, ``RUNNING``, ``COMPLETING``, ``COMPLETED``, ``FAILED``...

    One word as Slurm's ``scontrol show job`` prints it: a flag that stands for the whole
    state wins over the base state (``["CANCELLED", "COMPLETING"]`` -> ``COMPLETING``,
    ``["RUNNING", "CONFIGURING", "POWER_UP_NODE"]`` -> ``CONFIGURING``)."""
    state_reason: str
    partition: str
    nodes: tuple[str, ...]
    """Allocated nodes, expanded; empty while pending."""
    node_count: int
    cpus: int
    cpus_per_task: int
    tasks: int
    memory_per_node_mb: int | None
    memory_per_cpu_mb: int | None
    features: str
    """The ``--constraint`` expression as given (``small``, ``a&b``)."""
    comment: str
    exit_code: int | None
    """Exit status of the batch script (128+N if killed by signal N); None until finished."""
    submit_time: float
    start_time: float | None
    """Epoch seconds the job started; None while pending (no estimate is reported)."""
    end_time: float | None
    """Epoch seconds the job ended; None until finished (no time-limit projection)."""
    work_dir: str
    array_task_string: str = ""
    """Pending array tasks still folded into the master record, e.g. ``"3-4"``; else ``""``."""
    state_words: tuple[str, ...] = ()
    """Every word Slurm gave: base state then flags (``RUNNING, CONFIGURING, POWER_UP_NODE``)
    on 23.02+; the one word on 22.05."""
    account: str = ""
    """The job's Slurm account; ``""`` where Slurm keeps no accounts."""
    admin_comment: str = ""
    """Set by admins (vcluster: why it requeued or held the job); users can read it."""
    suspend_time: float | None = None
    """Epoch seconds Slurm suspended the job (``scontrol suspend``, preemption); None unless
    it is SUSPENDED now."""

    @property
    def is_finished(self) -> bool:
        """Ended for good: a final state, and not still COMPLETING (epilogs running)."""
        return self.state in FINISHED_JOB_STATES

    @property
    def is_booting(self) -> bool:
        """Allocated nodes that are still being powered up (or configured)."""
        return self.state == "CONFIGURING"


def job_state_name(words: Iterable[str]) -> str:
    """The one word Slurm's job_state_string() prints for a base state and its flags.

    ``["RUNNING", "CONFIGURING", "POWER_UP_NODE"]`` -> ``CONFIGURING``; ``["CANCELLED",
    "COMPLETING"]`` -> ``COMPLETING``; ``["PENDING"]`` or 22.05's ``"PENDING"`` -> itself.
    """
    items = [w.upper() for w in words if w]
    for flag, name in _JOB_FLAG_PRECEDENCE:
        if flag in items:
            return name
    return items[0] if items else "UNKNOWN"


# --- squeue --json ------------------------------------------------------------------------------


def job_from_json(raw: Mapping[str, Any]) -> Job:
    """One entry of ``squeue --json``'s ``jobs`` list."""
    states = _state_words(raw.get("job_state"))
    state = job_state_name(states)
    finished = state in FINISHED_JOB_STATES
    array_job_id = _number(raw.get("array_job_id")) or None
    array_task_id = _number(raw.get("array_task_id")) if array_job_id else None
    return Job(
        job_id=_int(raw.get("job_id")),
        array_job_id=array_job_id,
        array_task_id=array_task_id,
        name=_str(raw.get("name")),
        user=_str(raw.get("user_name")),
        user_id=_int(raw.get("user_id")),
        state=state,
        state_reason=_str(raw.get("state_reason")),
        partition=_str(raw.get("partition")),
        nodes=tuple(expand_hostlist(_str(raw.get("nodes")))),
        node_count=_int(raw.get("node_count")),
        cpus=_int(raw.get("cpus")),
        cpus_per_task=_cpus_per_task(raw),
        tasks=_int(raw.get("tasks"), 1),
        memory_per_node_mb=_number(raw.get("memory_per_node")) or None,
        memory_per_cpu_mb=_number(raw.get("memory_per_cpu")) or None,
        features=_str(raw.get("features")),
        comment=_str(raw.get("comment")),
        exit_code=_exit_status(raw.get("exit_code")) if finished else None,
        submit_time=_time(raw.get("submit_time")) or 0.0,
        start_time=_time(raw.get("start_time")) if state != "PENDING" else None,
        end_time=_time(raw.get("end_time")) if finished else None,
        work_dir=_str(raw.get("current_working_directory")),
        array_task_string=_str(raw.get("array_task_string")),
        state_words=tuple(states),
        account=_str(raw.get("account")),
        admin_comment=_str(raw.get("admin_comment")),
        suspend_time=_time(raw.get("suspend_time")) if state == "SUSPENDED" else None,
    )


def _cpus_per_task(raw: Mapping[str, Any]) -> int:
    """``-c``: 22.05.8 always prints ``cpus_per_task: null``, so derive it when needed.

    Slurm sets the per-node minimum (``minimum_cpus_per_node``) to cpus_per_task times
    ``--ntasks-per-node`` (``tasks_per_node``, 0 when not given); ``--mincpus`` would
    inflate it, which vcluster does not use.
    """
    given = _number(raw.get("cpus_per_task"))
    if given:
        return given
    per_node = _int(raw.get("minimum_cpus_per_node"), 1)
    return max(1, per_node // max(1, _int(raw.get("tasks_per_node"))))


def parse_squeue_json(text: str | bytes | memoryview | Iterable[str],
                      command: str = "squeue --json") -> list[Job]:
    """All jobs in ``squeue --json`` (or ``scontrol show job --json``) output, in order."""
    data, jobs = _load_json_list(text, command, "jobs", job_from_json)
    if data.get("jobs") is None:
        raise SlurmParseError(f"`{command}` gave no job list; errors: {_errors(data)}")
    return jobs
