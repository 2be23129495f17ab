"""Host maintenance: ``vcluster drain-host`` empties an OpenNebula host, ``undrain-host``
returns it to service.

Why it exists: an admin who disables a host in OpenNebula (``onehost disable``) stops new
VMs there, but the jobs on it keep their VMs until they end, and a host going down for
maintenance would take those jobs with it. ``drain-host`` does what the admin would do by
hand, in the order that loses no job:

1. the host is DISABLED (``one.host.status``): OpenNebula's scheduler places no new VM there
   (a requeued job's new VMs and a replacement standby VM go elsewhere);
2. each RUNNING VM of a node moves live (``one.vm.migrate`` with live, the job's processes
   keep running) to the enabled host with the most free CPU that has room for it; a
   SUSPENDED or POWEROFF VM (a job suspended with its VM) moves cold the same way;
3. where no host has room, or OpenNebula refuses the migration, the node's job is requeued:
   its AdminComment and the node's DOWN reason say ``vcluster: host X drained for
   maintenance``, the VM is terminated, and Slurm runs the job again on new VMs elsewhere;
4. standby VMs (never used, no node) are terminated; the controller boots their
   replacements, which OpenNebula places on enabled hosts.

oned checks the capacity itself (migrate with ``enforce``); the plan here only picks the
target and lets ``--dry-run`` say what would happen. Every step is an event (``host.drain``,
``vm.migrated`` with both hosts, ``job.requeued``, ``vm.replaced``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from vcluster import db
from vcluster.controller.ports import SlurmPort
from vcluster.controller.standby import is_standby
from vcluster.errors import UserInputError, VclusterError
from vcluster.one_site import HostCapacity
from vcluster.one_vm import VM, VmState
from vcluster.slurm_parse import Job

HOLDS_HOST = frozenset({VmState.ACTIVE, VmState.SUSPENDED, VmState.POWEROFF})
"""VM states in which OpenNebula counts the VM on its host (oned: ACTIVE, SUSPENDED,
POWEROFF); a STOPPED or UNDEPLOYED VM has left it."""
JOB_STATES = ("RUNNING", "CONFIGURING", "SUSPENDED", "COMPLETING")
STATUS_ENABLED, STATUS_DISABLED = 0, 1


class HostsPort(Protocol):
    """What draining a host needs of OpenNebula (:class:`vcluster.one.OneClient` has it)."""

    def host_capacities(self) -> list[HostCapacity]: ...

    def host_status(self, host_id: int, status: int) -> None: ...

    def vms(self, *, cluster: str | None = None) -> list[VM]: ...

    def migrate(self, vm_id: int, host_id: int, *, live: bool, enforce: bool = True
                ) -> None: ...

    def terminate(self, vm_id: int, *, hard: bool = False) -> None: ...


def drain_reason(host: str) -> str:
    return f"vcluster: host {host} drained for maintenance"


@dataclass(frozen=True)
class HostMove:
    """What happens to one VM of the drained host."""

    vm_id: int
    node_name: str
    """"" for a standby VM."""
    job_id: int | None
    vm_state: str
    action: str
    """``live-migrate``, ``migrate`` (cold), ``requeue`` (the job runs again elsewhere),
    ``terminate`` (a node with no job), ``replace`` (a standby VM)."""
    to_host: str = ""
    why: str = ""
    error: str = ""
    """Set when the action could not be carried out."""


@dataclass(frozen=True)
class HostDrainResult:
    host: str
    host_id: int
    dry_run: bool
    moves: tuple[HostMove, ...]


def find_host(hosts: Sequence[HostCapacity], target: str) -> HostCapacity:
    """The host called (or numbered) ``target``."""
    for h in hosts:
        if h.name == target or (target.isdigit() and h.host_id == int(target)):
            return h
    names = ", ".join(h.name for h in hosts) or "none the user may list"
    raise UserInputError(f"OpenNebula has no host {target!r} (hosts: {names})")


def _node_jobs(jobs: Sequence[Job]) -> dict[str, int]:
    return {n: j.job_id for j in sorted(jobs, key=lambda j: j.job_id)
            if j.state in JOB_STATES for n in j.nodes}


def plan_host_drain(host: HostCapacity, hosts: Sequence[HostCapacity], vms: Sequence[VM],
                    jobs: Sequence[Job]) -> list[HostMove]:
    """One move per VM of this cluster on ``host``, oldest VM first. Pure."""
    free = {h.name: (h.max_cpu - h.cpu_usage, h.max_mem_kb - h.mem_usage_kb)
            for h in hosts if h.schedulable and h.name != host.name}
    node_job = _node_jobs(jobs)
    moves: list[HostMove] = []
    for vm in sorted(vms, key=lambda v: v.vm_id):
        if vm.host != host.name or vm.state not in HOLDS_HOST:
            continue
        node = vm.user_template.get("VCLUSTER_NODE", "")
        job_id = node_job.get(node) if node else None
        base = HostMove(vm.vm_id, node, job_id, vm.state_name, "")
        if is_standby(vm) or not node:
            moves.append(replace(base, action="replace", why="standby VM: booted again "
                                 "on another host"))
            continue
        live = vm.state_name == "RUNNING"
        cold = vm.state_name in ("SUSPENDED", "POWEROFF")
        need = (int(round(vm.cpu * 100)), vm.memory_mb * 1024)
        room = sorted((name for name, (cpu, mem) in free.items()
                       if cpu >= need[0] and mem >= need[1]),
                      key=lambda n: (-free[n][0], -free[n][1], n))
        if (live or cold) and room:
            target = room[0]
            cpu, mem = free[target]
            free[target] = (cpu - need[0], mem - need[1])
            moves.append(replace(base, action="live-migrate" if live else "migrate",
                                 to_host=target))
            continue
        why = ("no other enabled host has room for it" if live or cold
               else f"OpenNebula cannot migrate a VM in state {vm.state_name}")
        moves.append(replace(base, action="requeue" if job_id is not None else "terminate",
                             why=why))
    return moves


def drain_host(sessions: sessionmaker[Session], slurm: SlurmPort, one: HostsPort,
               cluster: str, target: str, *, by: str, now: datetime,
               dry_run: bool = False) -> HostDrainResult:
    """Disable the host and empty it (see the module's docstring)."""
    hosts = one.host_capacities()
    host = find_host(hosts, target)
    if host.state in ("DISABLED", "OFFLINE"):
        raise UserInputError(f"host {host.name} is already {host.state} (drained); "
                             f"`vcluster undrain-host {host.name}` enables it again")
    if not any(h.schedulable and h.name != host.name for h in hosts):
        raise UserInputError(f"no room anywhere: host {host.name} is the only enabled host, "
                             "its VMs could go nowhere; enable another host first")
    moves = plan_host_drain(host, hosts, one.vms(cluster=cluster), slurm.jobs())
    if dry_run:
        return HostDrainResult(host.name, host.host_id, True, tuple(moves))
    one.host_status(host.host_id, STATUS_DISABLED)
    with db.transaction(sessions) as s:
        db.record_event(s, "host.drain", f"host {host.name} disabled by {by}: "
                        f"{len(moves)} VM(s) to move", at=now)
    ids = {h.name: h.host_id for h in hosts}
    done = [_carry_out(sessions, slurm, one, host.name, m, ids, now) for m in moves]
    return HostDrainResult(host.name, host.host_id, False, tuple(done))


def undrain_host(sessions: sessionmaker[Session], one: HostsPort, target: str, *, by: str,
                 now: datetime) -> HostCapacity:
    host = find_host(one.host_capacities(), target)
    if host.state not in ("DISABLED", "OFFLINE"):
        raise UserInputError(f"host {host.name} is not drained (it is {host.state})")
    one.host_status(host.host_id, STATUS_ENABLED)
    with db.transaction(sessions) as s:
        db.record_event(s, "host.undrain", f"host {host.name} enabled again by {by}", at=now)
    return host


def _carry_out(sessions: sessionmaker[Session], slurm: SlurmPort, one: HostsPort,
               host: str, move: HostMove, host_ids: Mapping[str, int],
               now: datetime) -> HostMove:
    if move.action in ("live-migrate", "migrate"):
        try:
            one.migrate(move.vm_id, host_ids[move.to_host], live=move.action == "live-migrate")
        except VclusterError as exc:  # OpenNebula refused: the job runs again elsewhere
            refused = replace(move, action="requeue" if move.job_id is not None
                              else "terminate", to_host="", why=f"migration refused: {exc}")
            return _carry_out(sessions, slurm, one, host, refused, host_ids, now)
        job = f", job {move.job_id}" if move.job_id is not None else ""
        verb = "live-migrated" if move.action == "live-migrate" else "migrated cold"
        _event(sessions, "vm.migrated", f"VM {move.vm_id} ({move.node_name}{job}) {verb} "
               f"from {host} to {move.to_host}: host {host} drained for maintenance", move,
               now)
        return move
    reason = drain_reason(host)
    if move.action == "replace":
        error = _terminate(one, move.vm_id)
        _event(sessions, "vm.replaced", f"standby VM {move.vm_id} on {host} terminated "
               f"({reason}); a replacement boots elsewhere", move, now)
        return replace(move, error=error)
    with db.transaction(sessions) as s:  # the intent first: the controller closes the launch
        for launch in db.open_launches(s):
            if launch.vm_id == move.vm_id:
                launch.state, launch.reason, launch.updated_at = "terminating", reason, now
    errors = []
    if move.job_id is not None:
        try:
            slurm.update_job(move.job_id, AdminComment=reason)
        except VclusterError as exc:
            errors.append(f"AdminComment not set: {exc}")
    try:
        # DOWN with the reason: Slurm requeues the node's job and runs it on other nodes
        slurm.update_nodes(move.node_name, state="DOWN", reason=reason)
    except VclusterError as exc:
        errors.append(f"node not set DOWN: {exc}")
    if error := _terminate(one, move.vm_id):
        errors.append(error)
    what = (f"job {move.job_id} requeued" if move.job_id is not None
            else f"node {move.node_name} emptied")
    _event(sessions, "job.requeued" if move.job_id is not None else "vm.terminated",
           f"{what}: VM {move.vm_id} on {host} terminated ({move.why}); {reason}", move, now)
    return replace(move, error="; ".join(errors))


def _terminate(one: HostsPort, vm_id: int) -> str:
    try:
        one.terminate(vm_id)
    except VclusterError as exc:
        return f"VM {vm_id} not terminated: {exc}"
    return ""


def _event(sessions: sessionmaker[Session], kind: str, message: str, move: HostMove,
           now: datetime) -> None:
    with db.transaction(sessions) as s:
        db.record_event(s, kind, message, node_name=move.node_name or None,
                        job_id=move.job_id, vm_id=move.vm_id, at=now)


MIGRATING = frozenset({"MIGRATE", "SAVE_MIGRATE", "PROLOG_MIGRATE", "BOOT_MIGRATE",
                       "PROLOG_MIGRATE_POWEROFF", "PROLOG_MIGRATE_SUSPEND",
                       "PROLOG_MIGRATE_UNKNOWN"})
"""LCM states of a VM on its way from one host to another."""


def describe_hosts(hosts: Sequence[HostCapacity], vms: Sequence[VM]) -> dict[str, list[str]]:
    """For ``vcluster status``: hosts out of service (not enabled: drained or down) with how
    many of the cluster's VMs they still hold, and migrations in flight (a pool listing has
    only a VM's last history record: the host it is going to). Pure."""
    held = {h.name: sum(1 for v in vms if v.host == h.name and v.state in HOLDS_HOST)
            for h in hosts}
    out = [f"host {h.name} {h.state}: no new VMs; {held[h.name]} VM(s) of this cluster on it"
           for h in hosts if not h.schedulable]
    moving = [f"VM {v.vm_id} ({v.user_template.get('VCLUSTER_NODE') or 'standby'}) "
              f"{v.state_name} to {v.host}"
              for v in sorted(vms, key=lambda v: v.vm_id) if v.state_name in MIGRATING]
    return {"hosts_out_of_service": out, "migrating": moving}
