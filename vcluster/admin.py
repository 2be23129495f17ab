"""What an admin does to nodes through vcluster: list them, drain and undrain, terminate a VM.

Why it exists: admins acting around vcluster (``scontrol update``, ``onevm terminate``) leave
the launch map, the event log and the controller's plan behind. These functions act the way
the controller would and record what they did (with the admin's name), so the next pass
agrees with them; the click commands in :mod:`vcluster.cli.admin` stay thin over them.

* ``nodes``: every node of every class with Slurm's state, its VM (state, host), age, job
  and reason, built purely from the three pictures.
* ``drain``/``undrain``: a row in the ``drain`` table (the plan honours it: no new VM for a
  drained node no job holds, and DRAIN kept in Slurm) and Slurm's DRAIN set or lifted at once.
* ``terminate``: the node set DOWN with a reason first (Slurm requeues its job), then the VM
  terminated and its launch marked terminating (the controller closes it when the VM is gone).
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from vcluster import db
from vcluster.config import Config
from vcluster.controller.drain import drain_reason
from vcluster.controller.observe import DrainView
from vcluster.controller.ports import OnePort, SlurmPort
from vcluster.errors import UserInputError, VclusterError
from vcluster.one_vm import VM
from vcluster.report import node_state_label
from vcluster.slurm_parse import Node


def admin_name() -> str:
    """Who runs the command: the sudo caller if any, else the login name."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


# --- nodes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeRow:
    name: str
    node_class: str
    slurm_state: str
    """Slurm's state in one word (``idle``, ``powered_down``, ``allocated``...); ``hidden`` if
    Slurm does not list it; ``""`` if Slurm could not be read."""
    vm_id: int | None
    vm_state: str
    """OpenNebula's name for the VM's state; ``""`` without a VM or if oned was not read."""
    host: str
    age_s: float | None
    """Since its launch was requested, seconds; None without a launch."""
    job_id: int | None
    reason: str
    """Slurm's reason, else the launch's, else the drain's."""
    drained: bool


def build_nodes(config: Config, nodes: Sequence[Node] | None, vms: Sequence[VM] | None,
                launches: Sequence[db.Launch], drains: Mapping[str, DrainView],
                now: datetime, suspended: Mapping[str, str] | None = None) -> list[NodeRow]:
    """One row per node of every class, in class then name order; ``suspended`` gives the
    plain reason of nodes whose VM vcluster stopped for a suspended job (it replaces the
    DRAIN reason vcluster gave Slurm)."""
    by_name = {n.name: n for n in nodes or ()}
    vm_by_id = {v.vm_id: v for v in vms or ()}
    tagged = {v.user_template.get("VCLUSTER_NODE", ""): v for v in sorted(
        vms or (), key=lambda v: v.vm_id, reverse=True) if not v.is_terminating}
    launch_by_node = {la.node_name: la for la in launches if la.is_open}
    rows = []
    for nc in config.node_classes:
        for name in nc.node_names():
            node = by_name.get(name)
            launch = launch_by_node.get(name)
            vm_id = launch.vm_id if launch else None
            vm = vm_by_id.get(vm_id) if vm_id is not None else tagged.get(name)
            drain = drains.get(name) or drains.get(nc.name)
            slurm = node_state_label(node) if node else ("" if nodes is None else "hidden")
            reason = (suspended or {}).get(name) or (node.reason if node else "") or (
                launch.reason if launch else "") or (drain_reason(drain) if drain else "")
            rows.append(NodeRow(
                name, nc.name, slurm, vm.vm_id if vm else vm_id, vm.state_name if vm else "",
                vm.host if vm else "",
                max((now - launch.created_at).total_seconds(), 0.0) if launch else None,
                launch.job_id if launch else None, reason, drain is not None))
    return rows


def read_drains(session: Session) -> dict[str, DrainView]:
    return {d.target: DrainView(d.target, d.kind, d.reason, d.by)
            for d in session.scalars(select(db.Drain))}


# --- drain -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DrainResult:
    target: str
    kind: str
    """``class`` or ``node``."""
    nodes: str
    """The nodes concerned, as a Slurm hostlist."""
    reason: str
    """The reason Slurm shows (``vcluster drain: ...``); "" for an undrain."""
    slurm_error: str = ""
    """Why Slurm could not be told at once (the controller retries); "" if it was."""


def drain_target(config: Config, target: str) -> tuple[str, str]:
    """(``class`` or ``node``, its nodes as a hostlist) for a class or node name."""
    for nc in config.node_classes:
        if nc.name == target:
            return "class", nc.hostlist
    if config.class_of_node(target) is not None:
        return "node", target
    classes = ", ".join(nc.name for nc in config.node_classes) or "none"
    raise UserInputError(f"{target!r} is neither a node class ({classes}) nor a node of one; "
                         "see `vcluster nodes`")


def drain(sessions: sessionmaker[Session], slurm: SlurmPort, config: Config, target: str,
          reason: str, *, by: str, now: datetime) -> DrainResult:
    """Record the drain (replacing an earlier one of ``target``) and set DRAIN in Slurm."""
    kind, hostlist = drain_target(config, target)
    view = DrainView(target, kind, reason, by)
    with db.transaction(sessions) as s:
        row = s.get(db.Drain, target)
        if row is None:
            s.add(db.Drain(target=target, kind=kind, reason=reason, by=by, created_at=now))
        else:
            row.reason, row.by, row.created_at = reason, by, now
        db.record_event(s, "admin.drain", f"{kind} {target} drained by {by}: "
                        f"{reason or 'no reason given'}", node_name=target if kind == "node"
                        else None, at=now)
    slurm_error = _tell_slurm(slurm, hostlist, state="DRAIN", reason=drain_reason(view))
    return DrainResult(target, kind, hostlist, drain_reason(view), slurm_error)


def undrain(sessions: sessionmaker[Session], slurm: SlurmPort, config: Config, target: str,
            *, by: str, now: datetime) -> DrainResult:
    """Forget the drain of ``target`` and lift DRAIN in Slurm (``RESUME``)."""
    kind, hostlist = drain_target(config, target)
    with db.transaction(sessions) as s:
        row = s.get(db.Drain, target)
        if row is None:
            drained = ", ".join(sorted(read_drains(s))) or "none"
            raise UserInputError(f"{kind} {target} is not drained (drained: {drained})")
        s.delete(row)
        db.record_event(s, "admin.undrain", f"{kind} {target} undrained by {by}",
                        node_name=target if kind == "node" else None, at=now)
    return DrainResult(target, kind, hostlist, "",
                       _tell_slurm(slurm, hostlist, state="RESUME", reason=None))


def _tell_slurm(slurm: SlurmPort, hostlist: str, *, state: str, reason: str | None) -> str:
    try:
        slurm.update_nodes(hostlist, state=state, reason=reason)
    except VclusterError as exc:
        return str(exc)
    return ""


# --- terminate ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TerminateTarget:
    vm_id: int
    node_name: str
    """The node the VM serves ("" for a VM no node claims)."""
    launch_id: int | None
    job_id: int | None
    vm_state: str
    host: str


def find_vm(config: Config, session: Session, vms: Sequence[VM], target: str
            ) -> TerminateTarget:
    """The VM a node name or a VM id names (a VM of this cluster, alive)."""
    by_id = {v.vm_id: v for v in vms}
    launches = db.open_launches(session)
    if target.isdigit():
        vm = by_id.get(int(target))
        if vm is None:
            raise UserInputError(f"no live VM {target} of cluster "
                                 f"{config.controller.cluster_name}; see `vcluster nodes`")
        launch = next((la for la in launches if la.vm_id == vm.vm_id), None)
        node = launch.node_name if launch else vm.user_template.get("VCLUSTER_NODE", "")
    else:
        if config.class_of_node(target) is None:
            raise UserInputError(f"{target!r} is neither a VM id nor a node of a node class; "
                                 "see `vcluster nodes`")
        launch = next((la for la in launches if la.node_name == target), None)
        vm = by_id.get(launch.vm_id) if launch and launch.vm_id is not None else None
        if vm is None:
            raise UserInputError(f"node {target} has no live VM; nothing to terminate")
        node = target
    return TerminateTarget(vm.vm_id, node, launch.id if launch else None,
                           launch.job_id if launch else None, vm.state_name, vm.host)


def terminate(sessions: sessionmaker[Session], slurm: SlurmPort, one: OnePort,
              target: TerminateTarget, *, by: str, now: datetime) -> str:
    """Launch marked terminating (recorded first), node DOWN (Slurm requeues its job), VM
    terminated; says what was done. The controller closes the launch once the VM is gone
    and returns the node to service, as after any failure."""
    reason = f"vcluster: VM {target.vm_id} terminated by {by}"
    with db.transaction(sessions) as s:
        if target.launch_id is not None:
            row = s.get(db.Launch, target.launch_id)
            if row is not None and row.is_open:
                row.state, row.reason, row.updated_at = "terminating", reason, now
        db.record_event(s, "admin.terminate", reason, node_name=target.node_name or None,
                        job_id=target.job_id, vm_id=target.vm_id, at=now)
    said = ""
    if target.node_name:
        error = _tell_slurm(slurm, target.node_name, state="DOWN", reason=reason)
        said = (f"; node {target.node_name} could not be set DOWN: {error}" if error
                else f"; node {target.node_name} set DOWN, so Slurm requeues its job")
    one.terminate(target.vm_id)
    return f"VM {target.vm_id} terminated{said}"
