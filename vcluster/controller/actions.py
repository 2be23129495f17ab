"""The actions the planner can ask for: plain frozen values, compared exactly in tests.

Why it exists apart: :mod:`plan` produces them and :mod:`act` carries them out; keeping the
vocabulary in one small module makes both sides (and the table of plan cases) read the same.
Every reason that reaches Slurm starts with ``vcluster:`` so an admin (and the planner) can
tell vcluster's node reasons from anyone else's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class BootVM:
    """Allocate one VM for a node: create the launch row (``launch_id`` None) or retry it."""

    node_name: str
    node_class: str
    job_id: int | None
    cpus: int
    memory_mb: int
    template: str
    launch_id: int | None = None
    not_before_s: float = 0.0
    """Seconds after the pass's actions start before this boot may go out (the boot-rate
    buckets hold its token by then, :func:`~vcluster.controller.boot_rate.schedule`)."""


@dataclass(frozen=True)
class AdoptVM:
    """Attach a tagged VM to a launch (``launch_id``) or rebuild its launch row (None)."""

    node_name: str
    node_class: str
    vm_id: int
    job_id: int | None
    state: str
    ip: str | None
    launch_id: int | None = None


@dataclass(frozen=True)
class SetNodeAddr:
    """Point Slurm's NodeAddr/NodeHostname at the VM before its slurmd registers."""

    launch_id: int
    node_name: str
    ip: str


@dataclass(frozen=True)
class MarkUp:
    """The node registered with Slurm: the launch is up."""

    launch_id: int
    node_name: str
    vm_id: int
    boot_s: float


@dataclass(frozen=True)
class TerminateVM:
    """Terminate a VM; its launch (if any) becomes ``close_as``.

    ``terminating`` keeps the launch open until the VM is gone (normal power-down);
    ``failed``/``terminated`` close it at once.
    """

    vm_id: int
    node_name: str
    reason: str
    launch_id: int | None = None
    close_as: str = "terminating"
    hard: bool = False
    job_id: int | None = None
    """The job a VM with no launch was booted for (a VM booted at its job's allocation)."""
    event_kind: str = ""
    """The event recorded, when not the close's own (``vm.terminated``/``vm.failed``)."""


@dataclass(frozen=True)
class ResumeVM:
    """Bring back a VM suspended or powered off behind vcluster's back (the class's rule for
    ``event`` is ``resume``); its launch stays open."""

    vm_id: int
    node_name: str
    event: str
    seen: str
    """The state the VM was seen in (``SUSPENDED``, ``POWEROFF``)."""
    launch_id: int | None = None
    job_id: int | None = None
    """The job its node serves (recovered once the VM runs again)."""


@dataclass(frozen=True)
class CloseLaunch:
    launch_id: int
    node_name: str
    state: str
    reason: str


@dataclass(frozen=True)
class FailNode:
    """Give a node up: set it DOWN (the job is requeued) before anything else, terminate its
    VM, close its launch as failed and power it down, all with ``reason``. ``event`` and
    ``seen`` name a VM state vcluster did not ask for (the class's rule said ``fail``)."""

    node_name: str
    reason: str
    launch_id: int | None = None
    vm_id: int | None = None
    job_id: int | None = None
    event: str = ""
    seen: str = ""


@dataclass(frozen=True)
class PowerDown:
    """Ask Slurm to power nodes down: per-job nodes whose job ended, and nodes left powering
    up for nobody (their job ended while they powered up)."""

    node_names: tuple[str, ...]
    reason: str
    state: str = "POWER_DOWN_ASAP"
    """``POWER_DOWN_ASAP`` (drains, lets a job on the node finish) or ``POWER_DOWN_FORCE``
    (now, even while powering up: only for a drained node no job holds)."""


@dataclass(frozen=True)
class ResetNode:
    """Return a node vcluster set DOWN (and whose VM is gone) to service: ``POWER_DOWN_FORCE``
    while it is still up in Slurm's eyes, then ``RESUME`` once it is ``down~`` (Slurm 22.05
    keeps a powered-down node DOWN until resumed)."""

    node_name: str
    reason: str
    state: str = "POWER_DOWN_FORCE"


@dataclass(frozen=True)
class UpsertJob:
    job_id: int
    node_class: str | None
    template: str | None
    user: str
    state: str
    nodes: str
    exit_code: int | None
    started_at: float | None
    ended_at: float | None
    gone: bool = False
    """Slurm forgot the job (past MinJobAge): close its row with the last state seen."""
    account: str = ""
    """The job's Slurm account (usage accounting)."""


@dataclass(frozen=True)
class StartNow:
    """Make a job Slurm requeued after vcluster gave its node up eligible at once (Slurm
    defers a requeued job's BeginTime by about two minutes); ``reason`` (why it was
    requeued) goes to its AdminComment, where its user sees it."""

    job_id: int
    reason: str


@dataclass(frozen=True)
class NoteKept:
    """A VM's host went OFFLINE or into ERROR and its class's rule is ``keep``: nothing is
    done, but the event says so, once per VM and state."""

    vm_id: int
    node_name: str
    event: str
    seen: str
    job_id: int | None = None


@dataclass(frozen=True)
class RequeueJob:
    """Requeue a job that Slurm ended FAILED (or NODE_FAIL) while vcluster gave up the VM it
    ran on: the guest killed its processes (a shutdown from inside, an admin's soft action)
    or Slurm saw the node fail before vcluster did. Its reason goes to the event log."""

    job_id: int
    reason: str


@dataclass(frozen=True)
class HoldJob:
    """Hold a job whose VMs failed again and again (a missing template, a broken image):
    requeueing it once more would only fail once more. The reason goes to its AdminComment
    and the event log; ``scontrol release`` lets it try again once the cause is fixed."""

    job_id: int
    reason: str


@dataclass(frozen=True)
class ClearReason:
    """Lift the drain, and with it the reason, that vcluster set and that is no longer true
    (a powered-down node still drained with ``vcluster: per-job VM of job N``). Slurm 24.11
    keeps the reason of a node that is not drained until it registers again: left alone."""

    node_name: str
    reason: str


@dataclass(frozen=True)
class SetDrain:
    """Set nodes DRAIN in Slurm with ``reason`` (``drain``), or lift vcluster's DRAIN
    (``RESUME``): the admin's ``vcluster drain``, kept in line by the plan."""

    node_names: tuple[str, ...]
    drain: bool
    reason: str


@dataclass(frozen=True)
class Unplaceable:
    """OpenNebula cannot place the node's VM (its class or template is backed off): the node
    goes DOWN (Slurm requeues its job, which is not counted as a failed VM of the job) and
    back to the powered-down pool, its VM (if any) is terminated and its launch closed."""

    node_name: str
    node_class: str
    reason: str
    cause: str
    """``placement`` or ``quota``; ``backoff`` for a node whose class was backed off already."""
    launch_id: int | None = None
    vm_id: int | None = None
    job_id: int | None = None


@dataclass(frozen=True)
class SetBackoff:
    """Back a class's template off: no new VM from it until ``until``, then one probe."""

    node_class: str
    template: str
    level: int
    cause: str
    reason: str
    until: datetime


@dataclass(frozen=True)
class ClearBackoff:
    """A VM of a backed-off template was placed: its back-off ends."""

    node_class: str
    template: str
    reason: str


@dataclass(frozen=True)
class BackoffNodes:
    """DRAIN a backed-off class's nodes with ``reason`` (Slurm stops choosing them), or lift
    that DRAIN (``drain`` False) once the class may boot again."""

    node_names: tuple[str, ...]
    drain: bool
    reason: str


@dataclass(frozen=True)
class BootStandby:
    """Boot one standby VM of a class: booted, never used, with no node name yet."""

    node_class: str
    template: str
    cpus: int
    memory_mb: int
    not_before_s: float = 0.0
    """Seconds after the pass's actions start before this boot may go out (the boot-rate
    buckets hold its token by then, :func:`~vcluster.controller.boot_rate.schedule`)."""


@dataclass(frozen=True)
class BootEarly:
    """Boot a job's VM at allocation, before Slurm powers its node up: unnamed like a
    standby VM (so its slurmd cannot register early), tagged for ``node_name``, and handed
    to that node once Slurm marks it powering up."""

    node_name: str
    node_class: str
    job_id: int
    cpus: int
    memory_mb: int
    template: str
    not_before_s: float = 0.0
    """Seconds after the pass's actions start before this boot may go out (the boot-rate
    buckets hold its token by then, :func:`~vcluster.controller.boot_rate.schedule`)."""


@dataclass(frozen=True)
class ClaimStandby:
    """Hand a ready standby VM to a powering-up node: open its launch (``launch_id`` None)
    or redo the handover, set NodeAddr, then tell the VM its node name (user template)."""

    node_name: str
    node_class: str
    vm_id: int
    job_id: int | None
    ip: str
    launch_id: int | None = None
    size: tuple[int, int, str] | None = None
    """(CPUs, memory MB, template) the VM was booted with (for usage accounting); None: the
    class's own (a standby VM)."""
    at_allocation: bool = False
    """Handed over when the job was allocated, before Slurm powers the node up (the launch's
    reason says so: the planner then waits for Slurm instead of seeing a node powered down)."""


@dataclass(frozen=True)
class MarkHandled:
    request_ids: tuple[int, ...]


@dataclass(frozen=True)
class SuspendJob:
    """Preempt a running job for ``by_job``, whose VMs cannot be placed: record the intent
    for each of its nodes, then ``scontrol suspend`` it (its VMs are stopped once Slurm shows
    it SUSPENDED)."""

    job_id: int
    by_job: int
    node_names: tuple[str, ...]
    vm_ids: tuple[int, ...]
    reason: str


@dataclass(frozen=True)
class StopVM:
    """Stop the VM of a node whose job Slurm suspended (OpenNebula saves its memory and frees
    its host), DRAIN the node so no other job lands on it meanwhile."""

    vm_id: int
    node_name: str
    job_id: int
    by_job: int | None = None


@dataclass(frozen=True)
class MarkStopped:
    """The VM vcluster stopped is STOPPED: its host's capacity is free."""

    vm_id: int
    node_name: str
    job_id: int
    seconds: float
    """Since the suspension began."""


@dataclass(frozen=True)
class RestoreVM:
    """Resume a VM vcluster stopped: its job is to run again."""

    vm_id: int
    node_name: str
    job_id: int


@dataclass(frozen=True)
class FinishResume:
    """Every VM of a suspended job is RUNNING again: lift the DRAIN, resume the job in Slurm
    (``slurm_resume``: vcluster suspended it) or deliver Slurm's resume again (``redeliver``:
    Slurm resumed it while its VMs were stopped, and slurmd never got the message)."""

    job_id: int
    node_names: tuple[str, ...]
    slurm_resume: bool
    redeliver: bool
    seconds: float
    """Since the VMs were asked back."""
    stopped_vms: tuple[tuple[str, int], ...] = ()
    """(node, VM id) of the VMs vcluster stopped or moved: each one back on another host
    than before is a ``vm.migrated`` event (one.vm.info has the VM's history; a pool
    listing has only its last record)."""


@dataclass(frozen=True)
class MoveSuspendedVM:
    """A suspended job's VM, SUSPENDED or POWEROFF on a host that is no longer enabled: move
    it cold (one.vm.migrate) to an enabled host with room before it is resumed."""

    vm_id: int
    node_name: str
    job_id: int
    from_host: str


@dataclass(frozen=True)
class DropSuspension:
    """Forget suspension rows that no longer hold (the job or its VM is gone)."""

    node_names: tuple[str, ...]
    job_id: int
    reason: str


Action = (BootVM | AdoptVM | SetNodeAddr | MarkUp | TerminateVM | ResumeVM | CloseLaunch
          | FailNode | PowerDown | ResetNode | ClearReason | UpsertJob | StartNow | HoldJob
          | SetDrain | Unplaceable | SetBackoff | ClearBackoff | BackoffNodes | MarkHandled
          | BootStandby | BootEarly | ClaimStandby | SuspendJob | StopVM | MarkStopped
          | RestoreVM | FinishResume | DropSuspension | RequeueJob | NoteKept
          | MoveSuspendedVM)
