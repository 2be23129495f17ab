"""The controller's passes against small fakes of Slurm and OpenNebula (same protocols).

Each test drives the fakes the way Slurm and oned would move (a node registers, a job ends,
a VM dies) and checks what a person would see: the calls made, the launch map, the events.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select

from tests.unit.controller_fixtures import (
    T0,
    job,
    make_config,
    node,
    powered_down,
    powering_up,
)
from vcluster import db, public_status
from vcluster.config import Config, parse_config
from vcluster.controller.act import Actor
from vcluster.controller.actions import BootVM, CloseLaunch, UpsertJob
from vcluster.controller.loop import (
    AlreadyRunning,
    Controller,
    Heartbeater,
    PassReport,
    acquire_lock,
    next_pass_in_s,
    run_loop,
)
from vcluster.controller.node_addr import AddrBatch
from vcluster.controller.preempt import REDELIVER_GAP_S
from vcluster.errors import OneAuthorizationError, OneNotFound, OneUnavailable, SlurmCommandError
from vcluster.one_site import HostCapacity
from vcluster.one_vm import VM
from vcluster.slurm_parse import Job, Node
from vcluster.vmtemplate import GuestContext
from vcluster.wake import WakeListener, send_wake

S1, S2 = "vc-small-001", "vc-small-002"


@dataclass
class FakeSlurm:
    """Implements SlurmPort: the test moves node and job states; calls are recorded."""

    nodes_by_name: dict[str, Node] = field(default_factory=dict)
    jobs_by_id: dict[int, Job] = field(default_factory=dict)
    updates: list[str] = field(default_factory=list)
    broken: bool = False

    def jobs(self) -> list[Job]:
        return list(self.jobs_by_id.values())

    def nodes(self) -> list[Node]:
        if self.broken:
            raise SlurmCommandError(["sinfo", "--json"], None, timed_out=True, timeout_s=30)
        return list(self.nodes_by_name.values())

    def update_nodes(self, nodes: str | Sequence[str], *, state: str | None = None,
                     reason: str | None = None, nodeaddr: str | None = None,
                     nodehostname: str | None = None) -> None:
        names = nodes if isinstance(nodes, str) else ",".join(nodes)
        fields = {"state": state, "reason": reason, "nodeaddr": nodeaddr,
                  "nodehostname": nodehostname}
        self.updates.append(" ".join([f"nodename={names}"] + [
            f"{k}={v}" for k, v in fields.items() if v is not None]))

    def hold(self, job_id: int) -> None:
        self.updates.append(f"hold {job_id}")

    def suspend(self, job_id: int) -> None:
        self.updates.append(f"suspend {job_id}")
        self.jobs_by_id[job_id] = replace(self.jobs_by_id[job_id], state="SUSPENDED")

    def resume(self, job_id: int) -> None:
        self.updates.append(f"resume {job_id}")
        self.jobs_by_id[job_id] = replace(self.jobs_by_id[job_id], state="RUNNING")
    def requeue(self, job_id: int) -> None:
        self.updates.append(f"requeue {job_id}")
        if job_id in self.jobs_by_id:  # as slurmctld does: pending again, on no node
            self.jobs_by_id[job_id] = replace(self.jobs_by_id[job_id], state="PENDING",
                                              nodes=(), start_time=None, end_time=None)

    def update_job(self, job_id: int, **fields: str) -> None:
        self.updates.append(" ".join([f"jobid={job_id}"] + [
            f"{k}={v}" for k, v in fields.items()]))


@dataclass
class FakeOne:
    """Implements OnePort: VMs in a dict; tags read from the extra template like oned."""

    templates: dict[str, int] = field(default_factory=lambda: {"worker": 3})
    vms_by_id: dict[int, VM] = field(default_factory=dict)
    instantiated: list[tuple[int, str, str]] = field(default_factory=list)
    terminated: list[int] = field(default_factory=list)
    actions: list[tuple[str, int]] = field(default_factory=list)
    hosts: dict[str, str] = field(default_factory=dict)
    capacities: list[HostCapacity] = field(default_factory=list)
    migrated: list[tuple[int, int, bool]] = field(default_factory=list)
    errors: list[Exception] = field(default_factory=list)
    """Raised, in order, by the next instantiate calls."""
    next_id: int = 40
    range_reads: list[tuple[int, int]] = field(default_factory=list)
    range_errors: list[Exception] = field(default_factory=list)
    """Raised, in order, by the next vm_range calls."""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    """A pass's boots call instantiate from several threads (controller.boot_concurrency)."""

    def template_id(self, name_or_id: str) -> int:
        if name_or_id not in self.templates:
            raise OneNotFound(f"OpenNebula has no VM template named {name_or_id!r}")
        return self.templates[name_or_id]

    def instantiate(self, template_id: int, name: str, extra_template: str, *,
                    hold: bool = False) -> int:
        with self.lock:
            if self.errors:
                raise self.errors.pop(0)
            self.instantiated.append((template_id, name, extra_template))
            vm_id, self.next_id = self.next_id, self.next_id + 1
            tags = dict(re.findall(r'^(VCLUSTER_\w+) = "([^"]*)"$', extra_template, re.M))
            self.vms_by_id[vm_id] = VM(vm_id, name, 1, 0, "PENDING", (f"10.9.0.{vm_id}",),
                                       tags)
        return vm_id

    def vm(self, vm_id: int) -> VM:
        if vm_id not in self.vms_by_id:
            raise OneNotFound(f"OpenNebula has no VM {vm_id}")
        return self.vms_by_id[vm_id]

    def vms(self, *, cluster: str | None = None) -> list[VM]:
        return [v for v in self.vms_by_id.values() if not v.is_gone  # as oned lists them
                and (cluster is None or v.user_template.get("VCLUSTER_CLUSTER") == cluster)]

    def vm_range(self, first_id: int, last_id: int) -> list[VM]:
        self.range_reads.append((first_id, last_id))
        if self.range_errors:
            raise self.range_errors.pop(0)
        return [v for v in self.vms() if first_id <= v.vm_id <= last_id]

    def terminate(self, vm_id: int, *, hard: bool = False) -> None:
        self.terminated.append(vm_id)
        if vm_id in self.vms_by_id:
            self.vms_by_id[vm_id] = replace(self.vms_by_id[vm_id], state=3, lcm_state=12,
                                            state_name="SHUTDOWN")

    def host_states(self) -> dict[str, str]:
        return dict(self.hosts)

    def host_capacities(self) -> list[HostCapacity]:
        return list(self.capacities)

    def migrate(self, vm_id: int, host_id: int, *, live: bool, enforce: bool = True) -> None:
        self.migrated.append((vm_id, host_id, live))
        to = next(h.name for h in self.capacities if h.host_id == host_id)
        vm = self.vms_by_id[vm_id]
        self.vms_by_id[vm_id] = replace(vm, host=to, previous_host=vm.host)

    def action(self, action: str, vm_id: int) -> None:
        self.actions.append((action, vm_id))
        if action == "resume":
            self.run(vm_id)
        elif action == "stop":  # settled at once: oned saves the memory, moves it off the host
            self.vms_by_id[vm_id] = replace(self.vms_by_id[vm_id], state=4, lcm_state=0,
                                            state_name="STOPPED")

    def run(self, vm_id: int) -> None:
        self.vms_by_id[vm_id] = replace(self.vms_by_id[vm_id], state=3, lcm_state=3,
                                        state_name="RUNNING")

    def finish_terminations(self) -> None:
        for vm_id in [i for i, v in self.vms_by_id.items() if v.state_name == "SHUTDOWN"]:
            del self.vms_by_id[vm_id]


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> datetime:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


@dataclass
class World:
    config: Config
    sessions: db.sessionmaker[db.Session]
    slurm: FakeSlurm
    one: FakeOne
    clock: Clock
    controller: Controller

    def launches(self) -> list[tuple[str, str, int | None, str | None, bool]]:
        with self.sessions() as s:
            return [(la.node_name, la.state, la.vm_id, la.ip, la.ended_at is not None)
                    for la in s.scalars(select(db.Launch).order_by(db.Launch.id))]

    def events(self) -> list[tuple[str, str | None, str]]:
        with self.sessions() as s:
            return [(e.kind, e.node_name, e.message)
                    for e in s.scalars(select(db.Event).order_by(db.Event.id))]


@pytest.fixture()
def world(tmp_path: Path) -> Iterator[World]:
    config = parse_config({
        "database": {"url": f"sqlite:///{tmp_path}/state.db"},
        "opennebula": {"retry_delays_s": [1]},
        "controller": {"cluster_name": "vc", "resume_timeout_s": 60,
                       "state_dir": str(tmp_path / "state"), "log_dir": str(tmp_path / "log"),
                       "status_file": str(tmp_path / "run" / "status.json")},
        "node_class": [{"name": "small", "count": 4, "cpus": 2, "memory_mb": 2048,
                        "template": "worker"}],
    })
    engine = db.make_engine(config.database)
    sessions = db.session_factory(engine)
    slurm, one, clock = FakeSlurm(), FakeOne(), Clock()
    guest = GuestContext(slurm_conf_server="10.111.0.1:6817", join_url="http://10.111.0.1:6830")
    actor = Actor(config, sessions, slurm, one, guest, guest_script=b"#!/bin/sh\n", now=clock)
    try:
        yield World(config, sessions, slurm, one, clock,
                    Controller(config, sessions, slurm, one, actor, now=clock))
    finally:
        engine.dispose()


def test_the_vms_of_one_pass_get_their_nodeaddr_in_one_scontrol_call(world: World) -> None:
    w = world
    w.slurm.nodes_by_name = {S1: powering_up(S1), S2: powering_up(S2)}
    w.slurm.jobs_by_id = {12: job(12, S1), 13: job(13, S2)}
    w.controller.run_pass()
    (_, first, _), (_, second, _) = w.one.instantiated  # VMs 40 and 41, in this order
    assert {first, second} == {S1, S2}
    # paired in order: Slurm matches the lists one to one (the two instantiates may end in
    # either order: a pass's boots go out boot_concurrency at once)
    assert w.slurm.updates in (
        [f"nodename={first},{second} nodeaddr=10.9.0.40,10.9.0.41 nodehostname={first},"
         f"{second}"],
        [f"nodename={second},{first} nodeaddr=10.9.0.41,10.9.0.40 nodehostname={second},"
         f"{first}"])
    assert sorted(w.launches()) == sorted([(first, "booting", 40, "10.9.0.40", False),
                                           (second, "booting", 41, "10.9.0.41", False)])


def test_a_job_from_resume_to_terminated_vm(world: World) -> None:
    w = world
    w.slurm.nodes_by_name = {S1: powering_up(S1)}
    w.slurm.jobs_by_id = {12: job(12, S1, memory_per_node_mb=1024)}
    w.controller.run_pass()
    ((template_id, name, extra),) = w.one.instantiated
    assert (template_id, name) == (3, S1)
    assert 'CPU = "1"\nVCPU = "1"\nMEMORY = "1024"\nVCLUSTER_NODE = "vc-small-001"\n' \
           'VCLUSTER_JOB = "12"\nVCLUSTER_CLUSTER = "vc"\n' in extra
    assert 'SLURM_CONF_SERVER = "10.111.0.1:6817"' in extra
    assert 'VCLUSTER_JOIN_URL = "http://10.111.0.1:6830"' in extra
    assert "MUNGE_KEY" not in extra
    (token,) = re.findall(r'VCLUSTER_JOIN_TOKEN = "([^"]+)"', extra)
    with w.sessions() as s:  # stored hashed, bound to this launch
        (row,) = s.scalars(select(db.JoinToken)).all()
        assert (row.node_name, row.token_sha256) == (S1, hashlib.sha256(token.encode()).hexdigest())
    assert w.slurm.updates == [f"nodename={S1} nodeaddr=10.9.0.40 nodehostname={S1}"]
    assert w.launches() == [(S1, "booting", 40, "10.9.0.40", False)]

    w.one.run(40)
    w.slurm.nodes_by_name = {S1: node(S1, "ALLOCATED")}  # slurmd registered
    w.clock.advance(3)
    w.controller.run_pass()
    assert w.launches() == [(S1, "up", 40, "10.9.0.40", False)]

    w.slurm.jobs_by_id = {12: job(12, S1, state="COMPLETED")}
    w.slurm.nodes_by_name = {S1: node(S1, "IDLE")}  # the epilog's power down was missed
    w.controller.run_pass()
    assert w.slurm.updates[-1] == f"nodename={S1} state=POWER_DOWN_ASAP"

    w.slurm.nodes_by_name = {S1: node(S1, "IDLE", "POWERING_DOWN")}  # SuspendProgram ran
    w.controller.run_pass()
    assert w.one.terminated == [40]
    assert w.launches() == [(S1, "terminating", 40, "10.9.0.40", False)]
    w.one.finish_terminations()
    w.slurm.nodes_by_name = {S1: powered_down(S1)}
    w.controller.run_pass()
    assert w.launches() == [(S1, "terminated", 40, "10.9.0.40", True)]
    assert [(k, n) for k, n, _ in w.events()] == [
        ("vm.allocating", S1), ("vm.allocated", S1), ("node.addr", S1), ("node.up", S1),
        ("node.power_down", S1), ("vm.terminated", S1), ("launch.closed", S1)]
    assert w.events()[3][2] == "node up 3.0 s after its launch"
    with w.sessions() as s:
        row = s.get(db.Job, 12)
        assert row is not None and (row.state, row.nodes) == ("COMPLETED", S1)


def test_a_launch_records_what_usage_accounting_needs(world: World) -> None:
    """Size and template from the plan, account from Slurm, host and lifetime from oned's
    record of the VM (STIME and ETIME) once it is DONE."""
    w = world
    w.slurm.nodes_by_name = {S1: powering_up(S1)}
    w.slurm.jobs_by_id = {12: job(12, S1, memory_per_node_mb=1024, account="physics")}
    w.controller.run_pass()
    w.one.run(40)
    w.slurm.nodes_by_name = {S1: node(S1, "ALLOCATED")}
    w.controller.run_pass()
    w.slurm.nodes_by_name = {S1: node(S1, "IDLE", "POWERING_DOWN")}
    w.slurm.jobs_by_id = {12: job(12, S1, state="COMPLETED", account="physics")}
    w.clock.advance(60)
    w.controller.run_pass()
    with w.sessions() as s:
        row = s.scalars(select(db.Launch)).one()
        assert (row.cpus, row.memory_mb, row.template, row.host) == (1, 1024, "worker", None)
        assert (row.vm_started_at, row.vm_ended_at) == (T0, None)
    started, ended = int(T0.timestamp()) - 1, int(T0.timestamp()) + 62
    w.one.vms_by_id[40] = replace(w.one.vms_by_id[40], state=6, lcm_state=0, state_name="DONE",
                                  start_time=started, end_time=ended, host="kvm-3")
    w.slurm.nodes_by_name = {S1: powered_down(S1)}
    w.controller.run_pass()
    with w.sessions() as s:
        row = s.scalars(select(db.Launch)).one()
        assert (row.state, row.host) == ("terminated", "kvm-3")
        assert (row.vm_started_at, row.vm_ended_at) == (T0 - timedelta(seconds=1),
                                                        T0 + timedelta(seconds=62))
        job_row = s.get(db.Job, 12)
        assert job_row is not None and (job_row.user, job_row.account) == ("alice", "physics")


def test_a_vm_oned_cannot_show_ends_on_vclusters_clock(world: World) -> None:
    w = world
    w.slurm.nodes_by_name = {S1: powering_up(S1)}
    w.controller.run_pass()
    w.clock.advance(30)
    w.one.vms_by_id.clear()  # gone behind vcluster's back, and purged
    w.controller.run_pass()
    with w.sessions() as s:
        row = s.scalars(select(db.Launch)).one()
        assert (row.state, row.vm_started_at, row.vm_ended_at) == (
            "failed", T0, T0 + timedelta(seconds=30))


def test_temporary_allocation_error_is_retried_after_its_backoff(world: World) -> None:
    w = world
    w.slurm.nodes_by_name = {S1: powering_up(S1)}
    w.one.errors = [OneUnavailable("cannot reach OpenNebula at http://x (connection refused)")]
    w.controller.run_pass()
    assert w.launches() == [(S1, "requested", None, None, False)]
    w.controller.run_pass()  # backoff (1 s) not over: no second call
    assert w.one.instantiated == []
    w.clock.advance(1.5)
    w.controller.run_pass()
    assert [n for _, n, _ in w.one.instantiated] == [S1]
    assert w.launches() == [(S1, "booting", 40, "10.9.0.40", False)]
    assert ("vm.allocate_retry", S1, "attempt 1/2 failed: cannot reach OpenNebula at "
            "http://x (connection refused)") in w.events()


def test_permanent_allocation_error_puts_the_node_down_with_the_reason(world: World) -> None:
    w = world
    w.slurm.nodes_by_name = {S1: powering_up(S1)}
    w.one.errors = [OneAuthorizationError("OpenNebula user 'vc' may not instantiate VM "
                                          "template 3")]
    w.controller.run_pass()
    reason = "vcluster: cannot boot a VM: OpenNebula user 'vc' may not instantiate VM template 3"
    assert w.slurm.updates == [f"nodename={S1} state=DOWN reason={reason}",
                               f"nodename={S1} state=POWER_DOWN_FORCE reason={reason}"]
    assert w.launches() == [(S1, "failed", None, None, True)]
    w.clock.advance(5)
    w.controller.run_pass()  # Slurm still shows it powering up: no second boot
    assert w.one.instantiated == []


def test_a_long_refusal_keeps_oneds_advice_for_slurm_and_all_of_it_in_events(
        world: World) -> None:
    w = world
    w.slurm.nodes_by_name = {S1: powering_up(S1)}
    refusal = ("[one.template.instantiate] Error allocating a new virtual machine template. "
               "Cannot get IP/MAC lease from virtual network 0. User 2 does not own a network "
               "with name: vcnet . Set NETWORK_UNAME or NETWORK_UID")
    w.one.errors = [OneAuthorizationError(refusal)]
    w.controller.run_pass()
    whole = f"vcluster: cannot boot a VM: {refusal}"
    assert len(whole) > 200
    shown = ("vcluster: cannot boot a VM: [one.template.instantiate] Error alloc ... Cannot get "
             "IP/MAC lease from virtual network 0. User 2 does not own a network with name: "
             "vcnet . Set NETWORK_UNAME or NETWORK_UID")
    assert len(shown) == 200
    assert w.slurm.updates[0] == f"nodename={S1} state=DOWN reason={shown}"
    assert ("node.failed", S1, whole) in w.events()


def test_a_vm_dying_under_a_running_job_sets_its_node_down(world: World) -> None:
    w = world
    w.slurm.nodes_by_name = {S1: powering_up(S1)}
    w.slurm.jobs_by_id = {12: job(12, S1)}
    w.controller.run_pass()
    w.one.run(40)
    w.slurm.nodes_by_name = {S1: node(S1, "ALLOCATED")}
    w.slurm.jobs_by_id = {12: job(12, S1, state="RUNNING")}
    w.controller.run_pass()
    del w.one.vms_by_id[40]  # the hypervisor lost it
    w.controller.run_pass()
    reason = "vcluster: VM 40 died (gone)"
    assert w.slurm.updates[-2:] == [f"nodename={S1} state=DOWN reason={reason}",
                                    f"nodename={S1} state=POWER_DOWN_FORCE reason={reason}"]
    assert w.launches() == [(S1, "failed", 40, "10.9.0.40", True)]
    assert w.events()[-2:] == [
        ("vm.lost", S1, "VM 40 seen gone (not asked by vcluster); rule DONE=fail (class "
                        "small): node set DOWN (job 12 requeued by Slurm), VM terminated"),
        ("node.failed", S1, reason)]


def _job_running_on_vm_40(w: World) -> None:
    w.slurm.nodes_by_name = {S1: powering_up(S1)}
    w.slurm.jobs_by_id = {12: job(12, S1)}
    w.controller.run_pass()
    w.one.run(40)
    w.slurm.nodes_by_name = {S1: node(S1, "ALLOCATED")}
    w.slurm.jobs_by_id = {12: job(12, S1, state="RUNNING")}
    w.controller.run_pass()


def test_a_vm_powered_off_behind_vclusters_back_fails_its_node_first(world: World) -> None:
    w = world
    _job_running_on_vm_40(w)
    updates_at_terminate: list[list[str]] = []
    terminate = w.one.terminate

    def terminate_noting_slurm(vm_id: int, *, hard: bool = False) -> None:
        updates_at_terminate.append(list(w.slurm.updates))
        assert hard, "a failed node's VM is cut, not shut down"
        terminate(vm_id, hard=hard)

    w.one.terminate = terminate_noting_slurm  # type: ignore[method-assign]
    # an admin's `onevm poweroff --hard`: seen while oned still shuts it down
    w.one.vms_by_id[40] = replace(w.one.vms_by_id[40], state=3, lcm_state=18,
                                  state_name="SHUTDOWN_POWEROFF")
    w.controller.run_pass()
    reason = "vcluster: VM 40 SHUTDOWN_POWEROFF behind vcluster's back"
    down = f"nodename={S1} state=DOWN reason={reason}"
    assert updates_at_terminate == [w.slurm.updates[:-1]] and w.slurm.updates[-2:] == [
        down, f"nodename={S1} state=POWER_DOWN_FORCE reason={reason}"]
    assert w.launches() == [(S1, "failed", 40, "10.9.0.40", True)]
    assert w.events()[-2:] == [
        ("vm.lost", S1, "VM 40 seen SHUTDOWN_POWEROFF (not asked by vcluster); rule "
                        "POWEROFF=fail (class small): node set DOWN (job 12 requeued by Slurm), "
                        "VM terminated"),
        ("node.failed", S1, reason)]
    # Slurm requeued the job and resumes a node for it: a fresh VM, and the recovery time
    w.one.finish_terminations()
    w.slurm.nodes_by_name = {S2: powering_up(S2)}
    w.slurm.jobs_by_id = {12: job(12, S2)}
    w.clock.advance(2)
    w.controller.run_pass()
    w.one.run(41)
    w.slurm.nodes_by_name = {S2: node(S2, "ALLOCATED")}
    w.clock.advance(3)
    w.controller.run_pass()
    assert w.events()[-1] == (
        "vm.recovered", S2, "job 12 has a working node again on VM 41, 5.0 s after VM 40 "
                            "was lost (recovery 5.0 s)")


def test_a_job_slurm_ended_failed_as_its_vm_was_lost_is_requeued_once(world: World) -> None:
    w = world
    _job_running_on_vm_40(w)
    started = w.clock().timestamp()
    w.clock.advance(30)
    # an admin's soft poweroff: the guest's shutdown killed the job before vcluster's pass
    w.one.vms_by_id[40] = replace(w.one.vms_by_id[40], state=3, lcm_state=18,
                                  state_name="SHUTDOWN_POWEROFF")
    w.slurm.jobs_by_id = {12: job(12, S1, state="FAILED", start_time=started,
                                  end_time=w.clock().timestamp() - 1, exit_code=143)}
    w.controller.run_pass()  # the node is failed (the job has ended already)
    w.clock.advance(2)
    w.controller.run_pass()  # the job's end is read with the lost VM: requeued
    w.controller.run_pass()
    assert [u for u in w.slurm.updates if u.startswith("requeue")] == ["requeue 12"]
    assert ("job.requeued", None, "job 12 requeued: vcluster: it ended FAILED when vcluster "
                                  "gave its VM up") in w.events()


def test_a_class_that_keeps_vms_on_an_offline_host_says_so_once(world: World) -> None:
    w = world
    w.controller.actor.config = w.controller.config = replace(w.config, node_classes=(
        replace(w.config.node_classes[0], on_vm_event={"HOST_OFFLINE": "keep"}),))
    _job_running_on_vm_40(w)
    w.one.vms_by_id[40] = replace(w.one.vms_by_id[40], host="h1")
    w.one.hosts = {"h1": "OFFLINE"}
    for _ in range(3):
        w.controller.run_pass()
    lost = [e for e in w.events() if e[0] == "vm.lost"]
    assert lost == [("vm.lost", S1, "VM 40 seen on host h1 OFFLINE (not asked by vcluster); "
                                    "rule HOST_OFFLINE=keep (class small): VM and job left "
                                    "running")]
    assert w.launches() == [(S1, "up", 40, "10.9.0.40", False)]


def test_a_class_that_resumes_suspended_vms_resumes_them(world: World) -> None:
    w = world
    w.controller.actor.config = w.controller.config = replace(w.config, node_classes=(
        replace(w.config.node_classes[0], on_vm_event={"SUSPENDED": "resume"}),))
    _job_running_on_vm_40(w)
    w.one.vms_by_id[40] = replace(w.one.vms_by_id[40], state=5, lcm_state=0,
                                  state_name="SUSPENDED")
    w.controller.run_pass()
    assert w.one.actions == [("resume", 40)]
    assert w.one.vm(40).is_running
    assert w.launches() == [(S1, "booting", 40, "10.9.0.40", False)]
    assert w.events()[-1] == ("vm.lost", S1, "VM 40 seen SUSPENDED (not asked by vcluster); "
                                             "rule SUSPENDED=resume (class small): VM resumed")
    w.clock.advance(2)
    w.controller.run_pass()
    assert w.one.actions == [("resume", 40)], "resumed once"
    assert w.launches() == [(S1, "up", 40, "10.9.0.40", False)]
    assert w.events()[-2:] == [
        ("node.up", S1, "VM 40 RUNNING again after its resume"),
        ("vm.recovered", S1, "job 12 has a working node again on VM 40, 2.0 s after VM 40 "
                             "was lost (recovery 2.0 s)")]


def test_a_resumed_vm_is_up_again_only_once_it_runs(world: World) -> None:
    w = world
    w.controller.actor.config = w.controller.config = replace(w.config, node_classes=(
        replace(w.config.node_classes[0], on_vm_event={"POWEROFF": "resume"}),))
    _job_running_on_vm_40(w)
    w.one.vms_by_id[40] = replace(w.one.vms_by_id[40], state=8, lcm_state=0,
                                  state_name="POWEROFF")
    w.one.action = lambda action, vm_id: w.one.actions.append((action, vm_id))  # type: ignore
    w.controller.run_pass()
    w.one.vms_by_id[40] = replace(w.one.vms_by_id[40], state=3, lcm_state=20,
                                  state_name="BOOT_POWEROFF")
    w.controller.run_pass()
    assert w.launches() == [(S1, "booting", 40, "10.9.0.40", False)]
    assert w.events()[-1][0] == "vm.lost"


@pytest.mark.parametrize("after_timeout", ["POWERING_DOWN", "POWERED_DOWN"])
def test_a_job_requeued_at_slurms_resume_timeout_starts_at_once(world: World,
                                                                after_timeout: str) -> None:
    # the VM runs but its slurmd never registers; Slurm's ResumeTimeout fires before
    # vcluster's own check and before ResumeFailProgram's request is recorded
    w = world
    w.slurm.nodes_by_name = {S1: powering_up(S1)}
    w.slurm.jobs_by_id = {12: job(12, S1)}
    w.controller.run_pass()
    w.one.run(40)
    w.clock.advance(59)
    w.controller.run_pass()
    reason = "ResumeTimeout reached"
    w.slurm.nodes_by_name = {S1: node(S1, "DOWN", after_timeout, reason=reason)}
    w.slurm.jobs_by_id = {12: job(12, state="PENDING", state_reason="BeginTime")}
    w.clock.advance(2)
    w.controller.run_pass()
    assert w.one.terminated == [40]
    assert w.launches() == [(S1, "failed", 40, "10.9.0.40", True)]
    assert w.events()[-1] == ("vm.failed", S1, f"vcluster: Slurm gave the node up ({reason})")
    w.controller.run_pass()  # the requeued job waits no 2-minute deferral
    why = ("vcluster: requeued after a VM failed (1 so far); last: Slurm gave the node up "
           f"({reason})")
    assert w.slurm.updates[-2:] == ["jobid=12 StartTime=now", f"jobid=12 AdminComment={why}"]
    assert w.events()[-1] == ("job.start_now", None, f"job 12 eligible now: {why}")


def test_half_a_picture_skips_the_pass_but_keeps_the_heartbeat(world: World) -> None:
    w = world
    w.slurm.nodes_by_name = {S1: powering_up(S1)}
    w.slurm.broken = True
    report = w.controller.run_pass()
    assert report.skipped == "cannot read Slurm: `sinfo --json` timed out after 30 s; " \
                             "is slurmctld responding?"
    assert (w.one.instantiated, w.slurm.updates, w.launches()) == ([], [], [])
    with w.sessions() as s:
        hb = db.heartbeat(s)
        assert hb is not None and hb.at == T0


def test_the_status_file_users_read_follows_the_heartbeat(world: World) -> None:
    """fsub, run by any user, reads the controller's liveness from a world-readable file."""
    w = world
    path = w.config.controller.status_file
    w.controller.run_pass()
    status = public_status.read(path)
    assert status is not None and status.running and status.at == T0
    assert status.pid == os.getpid() and oct(os.stat(path).st_mode & 0o777) == "0o644"
    assert public_status.down_reason(path, 60, now=T0 + timedelta(seconds=30)) is None
    assert public_status.down_reason(path, 60, now=T0 + timedelta(seconds=300)) == (
        f"its last heartbeat was 5 min ago on {status.host} (pid {os.getpid()})")
    w.clock.advance(7)
    w.controller.stopped()
    assert public_status.down_reason(path, 60, now=T0 + timedelta(seconds=17)) == (
        f"it was stopped 10 s ago on {status.host}")


def test_an_unreachable_opennebula_skips_the_pass_before_any_action(world: World) -> None:
    w = world
    w.slurm.nodes_by_name = {S1: node(S1, "ALLOCATED")}  # up in Slurm, VM unknown

    def vms(*, cluster: str | None = None) -> list[VM]:
        raise OneUnavailable("cannot reach OpenNebula at http://one:2633/RPC2 (connection "
                             "refused); check ONE_XMLRPC and that oned is running")

    w.one.vms = vms  # type: ignore[method-assign]
    report = w.controller.run_pass()
    assert report.skipped == ("cannot read OpenNebula: cannot reach OpenNebula at "
                              "http://one:2633/RPC2 (connection refused); check ONE_XMLRPC "
                              "and that oned is running")
    assert w.slurm.updates == []  # not "no VM backs this node": the listing failed


def test_slurm_and_opennebula_are_read_at_the_same_time(world: World) -> None:
    """A pass waits for the slower of its reads of Slurm and OpenNebula, not for both in
    turn: here neither Slurm's jobs nor OpenNebula's VMs answer before both reads have begun
    (one after the other, the pass would wait in vain)."""
    w = world
    w.slurm.nodes_by_name = {S1: powering_up(S1)}
    all_begun, observed = threading.Barrier(2, timeout=10), threading.Event()
    slurm_jobs, one_vms = w.slurm.jobs, w.one.vms

    def after_all_begun(read: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            if all_begun.n_waiting or not observed.is_set():  # the pass's own three reads
                all_begun.wait()
                observed.set()
        except threading.BrokenBarrierError:
            raise SlurmCommandError(["squeue", "--json"], None, timed_out=True,
                                    timeout_s=10) from None
        return read(*args, **kwargs)

    w.slurm.jobs = lambda: after_all_begun(slurm_jobs)  # type: ignore[method-assign]
    w.one.vms = lambda *, cluster=None: after_all_begun(  # type: ignore[method-assign]
        one_vms, cluster=cluster)
    report = w.controller.run_pass()
    assert (report.skipped, report.boots) == ("", 1)
    assert [name for _, name, _ in w.one.instantiated] == [S1]


def test_a_job_allocated_while_slurm_is_read_gets_its_vm_tagged_and_sized(world: World
                                                                          ) -> None:
    """Slurm allocates a (requeued) job and powers its node up between the pass's two reads
    of Slurm: the node read first shows it still powered down, so the pass waits; its VM
    comes next pass with the job's tag and size, never as a VM of the class's size for no
    known job (what reading the jobs first gave: the job pending, its node powering up)."""
    w = world
    w.slurm.nodes_by_name = {S1: node(S1, "IDLE", "POWERED_DOWN")}
    w.slurm.jobs_by_id = {12: job(12, state="PENDING", memory_per_node_mb=512)}
    slurm_nodes, slurm_jobs = w.slurm.nodes, w.slurm.jobs

    def then_allocate(read: Any) -> Any:
        seen = read()
        if w.slurm.nodes_by_name[S1].powered_down:  # the pass's first read of Slurm
            w.slurm.nodes_by_name = {S1: powering_up(S1)}
            w.slurm.jobs_by_id = {12: job(12, S1, memory_per_node_mb=512)}
        return seen

    w.slurm.nodes = lambda: then_allocate(slurm_nodes)  # type: ignore[method-assign]
    w.slurm.jobs = lambda: then_allocate(slurm_jobs)  # type: ignore[method-assign]
    w.controller.run_pass()
    w.controller.run_pass()
    (_, name, extra), = w.one.instantiated
    assert name == S1
    assert 'VCLUSTER_JOB = "12"' in extra and 'MEMORY = "512"' in extra


def test_slurm_and_opennebula_both_unreadable_skip_the_pass_naming_slurm(world: World) -> None:
    w = world
    w.slurm.broken = True

    def vms(*, cluster: str | None = None) -> list[VM]:
        raise OneUnavailable("cannot reach OpenNebula at http://one:2633/RPC2 (connection "
                             "refused); check ONE_XMLRPC and that oned is running")

    w.one.vms = vms  # type: ignore[method-assign]
    report = w.controller.run_pass()
    assert report.skipped == "cannot read Slurm: `sinfo --json` timed out after 30 s; " \
                             "is slurmctld responding?"
    assert (w.one.instantiated, w.slurm.updates) == ([], [])


def test_one_failing_action_does_not_stop_the_others(world: World) -> None:
    w = world
    w.slurm.nodes_by_name = {S1: powering_up(S1), S2: powering_up(S2)}
    w.one.templates = {}  # the template is missing: both boots fail permanently...
    w.slurm.update_nodes = _raise_for(S1, w.slurm.update_nodes)  # type: ignore[method-assign]
    report = w.controller.run_pass()
    assert (report.done, report.failed) == (2, 0)
    # ...S1's node cannot even be told (its reason says so); S2's is set down
    with w.sessions() as s:
        reasons = dict(s.execute(select(db.Launch.node_name, db.Launch.reason)).all())
    assert reasons[S1].endswith("(could not tell Slurm: `scontrol update nodename=vc-small-001"
                                " ...` failed (exit 1): slurm_update error: Invalid node name "
                                "specified)")
    assert w.slurm.updates[0].startswith(f"nodename={S2} state=DOWN reason=vcluster: cannot "
                                         "boot a VM: OpenNebula has no VM template named")


def _raise_for(bad: str, inner):  # type: ignore[no-untyped-def]
    def update_nodes(nodes, **kw):  # type: ignore[no-untyped-def]
        if nodes == bad:
            raise SlurmCommandError(["scontrol", "update", f"nodename={bad}", "state=DOWN"], 1,
                                    "", "slurm_update error: Invalid node name specified")
        return inner(nodes, **kw)
    return update_nodes


def test_a_second_launch_for_a_node_is_refused_by_the_database(world: World) -> None:
    w = world
    from vcluster.controller.actions import BootVM

    boot = BootVM(S1, "small", None, 2, 2048, "worker")
    w.controller.actor.act([boot, boot])
    assert len(w.one.instantiated) == 1
    assert [(n, s) for n, s, *_ in w.launches()] == [(S1, "booting")]


def test_orphans_are_terminated_and_a_lost_map_is_rebuilt(world: World) -> None:
    w = world
    w.one.vms_by_id = {
        7: VM(7, S1, 3, 3, "RUNNING", ("10.9.0.7",),
              {"VCLUSTER_NODE": S1, "VCLUSTER_CLUSTER": "vc", "VCLUSTER_JOB": "12"}),
        8: VM(8, S2, 3, 3, "RUNNING", ("10.9.0.8",),
              {"VCLUSTER_NODE": S2, "VCLUSTER_CLUSTER": "vc", "VCLUSTER_JOB": ""}),
        9: VM(9, "other", 3, 3, "RUNNING", (), {"VCLUSTER_CLUSTER": "another"}),
    }
    w.slurm.nodes_by_name = {S1: node(S1, "ALLOCATED"), S2: powered_down(S2)}
    w.controller.run_pass()
    assert w.one.terminated == [8]
    assert w.launches() == [(S1, "up", 7, "10.9.0.7", False)]


def test_run_loop_wakes_on_a_hook_and_stops_on_request(world: World, tmp_path: Path) -> None:
    state_dir = str(tmp_path / "state")
    listener = WakeListener(state_dir)
    stop = threading.Event()
    passes: list[int] = []
    thread = threading.Thread(target=lambda: passes.append(run_loop(
        world.controller, listener, interval_s=30.0, stop=stop)))
    try:
        thread.start()
        time.sleep(0.3)
        send_wake(state_dir)  # a hook: one more pass at once, not in 30 s
        time.sleep(0.3)
        stop.set()
        send_wake(state_dir)  # what the SIGTERM handler does
        thread.join(timeout=5)
        assert not thread.is_alive()
        assert passes == [2]  # the first, and the one the hook asked for
    finally:
        stop.set()
        listener.close()


def test_once_runs_a_single_pass(world: World) -> None:
    assert run_loop(world.controller, None, interval_s=5, stop=threading.Event(), once=True) == 1


def test_only_one_controller_per_state_dir(tmp_path: Path) -> None:
    held = acquire_lock(str(tmp_path))
    try:
        with pytest.raises(AlreadyRunning) as info:
            acquire_lock(str(tmp_path))
        import os
        assert str(info.value) == (
            f"another vcluster controller (pid {os.getpid()}) is running on {tmp_path}; stop "
            "it first, or give this one another controller.state_dir")
    finally:
        held.close()
    acquire_lock(str(tmp_path)).close()


def test_handled_hook_requests_are_pruned_after_a_week(world: World) -> None:
    w = world
    with db.transaction(w.sessions) as s:
        for age_days, handled in ((8, True), (8, False), (2, True)):
            at = T0 - timedelta(days=age_days)
            s.add(db.HookRequest(kind="suspend", nodes=S1, job_ids=[], payload={},
                                 created_at=at, handled_at=at if handled else None))
    w.controller.prune()
    with w.sessions() as s:
        left = [(r.created_at, r.handled_at is not None) for r in s.scalars(
            select(db.HookRequest).order_by(db.HookRequest.id))]
    assert left == [(T0 - timedelta(days=8), False), (T0 - timedelta(days=2), True)]


def test_history_older_than_history_days_is_pruned_open_rows_never(world: World) -> None:
    w = world
    old, recent = T0 - timedelta(days=91), T0 - timedelta(days=89)
    with db.transaction(w.sessions) as s:
        for at in (old, recent):
            db.record_event(s, "vm.terminated", "x", node_name=S1, at=at)
            s.add(db.Launch(node_name=S1, node_class="small", state="terminated", reason="",
                            created_at=at, updated_at=at, ended_at=at))
        s.add(db.Launch(node_name=S2, node_class="small", state="up", reason="",
                        created_at=old, updated_at=old))  # open: kept whatever its age
        s.add(db.Job(job_id=1, state="COMPLETED", nodes=S1, first_seen=old, ended_at=old))
        s.add(db.Job(job_id=2, state="RUNNING", nodes=S2, first_seen=old))
    w.controller.prune()
    with w.sessions() as s:
        assert [e.at for e in s.scalars(select(db.Event).where(
            db.Event.kind == "vm.terminated"))] == [recent]
        assert sorted((la.node_name, la.ended_at) for la in s.scalars(select(db.Launch))) == [
            (S1, recent), (S2, None)]
        assert [j.job_id for j in s.scalars(select(db.Job))] == [2]


def test_expired_join_tokens_are_pruned(world: World) -> None:
    w = world
    with db.transaction(w.sessions) as s:
        for name, expires in (("gone", T0 - timedelta(seconds=1)),
                              ("kept", T0 + timedelta(seconds=60))):
            s.add(db.JoinToken(token_sha256=name * 8, launch_id=None, node_name=name,
                               expires_at=expires))
    w.controller.prune()
    with w.sessions() as s:
        assert [t.node_name for t in s.scalars(select(db.JoinToken))] == ["kept"]


def test_a_foreign_exception_in_a_pass_does_not_stop_the_daemon(world: World) -> None:
    calls: list[int] = []
    stop = threading.Event()

    def vms(*, cluster: str | None = None) -> list[VM]:
        calls.append(1)
        if len(calls) == 2:
            stop.set()
        raise KeyError("pyone surprise")

    world.one.vms = vms  # type: ignore[method-assign]
    assert run_loop(world.controller, None, interval_s=0.01, stop=stop) == 2


def test_the_heartbeat_goes_on_during_a_slow_pass() -> None:
    beats: list[float] = []
    heart = Heartbeater(lambda: beats.append(time.monotonic()), 0.05)
    heart.start()
    time.sleep(0.5)  # what a pass waiting on a slow oned would do to the main thread
    heart.stop()
    assert not heart.is_alive()
    assert len(beats) >= 5


def test_a_drain_changed_since_the_pass_read_it_is_not_undone(world: World) -> None:
    """`vcluster drain` writes the table before it tells Slurm; a pass that read the table
    before that and Slurm after must not lift the new DRAIN (nor redo a lifted one)."""
    from vcluster.controller.actions import SetDrain

    w = world
    actor = w.controller.actor
    with db.transaction(w.sessions) as s:
        s.add(db.Drain(target="small", kind="class", reason="r", by="alice", created_at=T0))
    actor.act([SetDrain((S1, S2), False, "drain lifted")])  # planned before the drain
    assert w.slurm.updates == []
    actor.act([SetDrain((S1,), True, "vcluster drain: r (by alice)")])
    assert w.slurm.updates == [f"nodename={S1} state=DRAIN reason=vcluster drain: r (by alice)"]
    with db.transaction(w.sessions) as s:
        s.execute(delete(db.Drain))
    actor.act([SetDrain((S2,), True, "vcluster drain: r (by alice)")])  # planned before undrain
    actor.act([SetDrain((S1,), False, "drain lifted")])
    assert w.slurm.updates[1:] == [f"nodename={S1} state=RESUME"]


def test_a_job_slurm_suspends_has_its_vm_stopped_and_brought_back(world: World) -> None:
    """scontrol suspend: the VM is stopped (not an on_vm_event) and the node drained; scontrol
    resume: the VM resumed, the drain lifted, Slurm's resume said again to slurmd."""
    w = world
    w.slurm.nodes_by_name = {S1: powering_up(S1)}
    w.slurm.jobs_by_id = {12: job(12, S1)}
    w.controller.run_pass()
    w.one.run(40)
    w.slurm.nodes_by_name = {S1: node(S1, "ALLOCATED")}
    w.controller.run_pass()
    w.slurm.jobs_by_id = {12: job(12, S1, state="SUSPENDED")}
    w.slurm.nodes_by_name = {S1: node(S1, "IDLE", "DRAIN", "POWER_DOWN")}  # prolog's ASAP
    w.slurm.updates.clear()
    w.controller.run_pass()
    assert w.one.actions == [("stop", 40)]
    assert w.slurm.updates == [f"nodename={S1} state=DRAIN reason=vcluster suspend: VM "
                               "stopped while job 12 is suspended"]
    w.controller.run_pass()
    w.controller.run_pass()  # STOPPED stays: no FailNode, no terminate
    assert w.one.terminated == [] and w.one.actions == [("stop", 40)]
    w.slurm.jobs_by_id = {12: job(12, S1, state="RUNNING")}  # scontrol resume
    w.slurm.nodes_by_name = {S1: node(S1, "ALLOCATED", "DRAIN", "POWER_DOWN")}
    w.controller.run_pass()
    assert w.one.actions == [("stop", 40), ("resume", 40)]
    w.controller.run_pass()
    # said again in two steps: slurmd may apply a suspend and a resume sent together
    # resume first, leaving the job stopped
    assert w.slurm.updates[-1] == "suspend 12"
    w.controller.run_pass()
    assert w.slurm.updates[-1] == "suspend 12", "no resume in the same breath"
    w.clock.advance(REDELIVER_GAP_S)
    w.controller.run_pass()
    assert w.slurm.updates[-2:] == [f"nodename={S1} state=RESUME", "resume 12"]
    assert w.slurm.jobs_by_id[12].state == "RUNNING"
    with w.sessions() as s:
        assert s.scalars(select(db.Suspension)).all() == []
    kinds = [k for k, _, _ in w.events()]
    assert [k for k in kinds if k.startswith(("vm.", "job."))][-5:] == [
        "vm.stop", "vm.stopped", "vm.restore", "job.redeliver", "job.resumed"]
    assert "vm.lost" not in kinds and w.launches() == [(S1, "up", 40, "10.9.0.40", False)]


@pytest.mark.parametrize("room", [True, False])
def test_a_suspended_vm_on_a_disabled_host_moves_cold_before_its_resume(
        world: World, room: bool) -> None:
    """A suspended job's VM held SUSPENDED on a host since DISABLED: on resume vcluster
    migrates it (cold) to the enabled host with room and resumes it there; with no room
    anywhere it is resumed where it is (a disabled host still runs its VMs)."""
    w = world
    w.slurm.nodes_by_name = {S1: powering_up(S1)}
    w.slurm.jobs_by_id = {12: job(12, S1)}
    w.controller.run_pass()
    w.one.run(40)
    w.slurm.nodes_by_name = {S1: node(S1, "ALLOCATED")}
    w.controller.run_pass()
    w.slurm.jobs_by_id = {12: job(12, S1, state="SUSPENDED")}
    w.slurm.nodes_by_name = {S1: node(S1, "IDLE", "DRAIN", "POWER_DOWN")}
    w.controller.run_pass()
    w.controller.run_pass()
    # held SUSPENDED on host0 (oned's suspend keeps the host), which is then disabled
    w.one.vms_by_id[40] = replace(w.one.vms_by_id[40], state=5, lcm_state=0,
                                  state_name="SUSPENDED", host="host0", cpu=2.0,
                                  memory_mb=2048)
    w.one.hosts = {"host0": "DISABLED", "host1": "MONITORED", "host2": "MONITORED"}
    free_cpu = 800 if room else 100
    w.one.capacities = [HostCapacity("host0", "DISABLED", 800, 8 << 20, 200, 2 << 20, 0),
                        HostCapacity("host1", "MONITORED", 800, 8 << 20, 800 - free_cpu, 0, 1),
                        HostCapacity("host2", "MONITORED", 800, 8 << 20, 700, 0, 2)]
    w.slurm.jobs_by_id = {12: job(12, S1, state="RUNNING")}  # scontrol resume
    w.slurm.nodes_by_name = {S1: node(S1, "ALLOCATED", "DRAIN", "POWER_DOWN")}
    w.controller.run_pass()
    if room:
        assert w.one.migrated == [(40, 1, False)] and w.one.actions == [("stop", 40)]
        w.controller.run_pass()  # now SUSPENDED on host1 (enabled): resumed there
    else:
        assert w.one.migrated == []
    assert w.one.actions == [("stop", 40), ("resume", 40)]
    w.controller.run_pass()
    assert w.slurm.updates[-1] == "suspend 12"  # Slurm's resume said again, in two steps
    w.clock.advance(REDELIVER_GAP_S)
    w.controller.run_pass()
    assert w.slurm.updates[-1] == "resume 12"
    events = {k: m for k, _, m in w.events()}
    if room:
        assert events["vm.migrated"] == "job 12: VM 40 resumed on host host1, suspended on host0"
    else:
        assert events["vm.migrate.skipped"] == (
            "job 12: VM 40 stays on host host0 (not enabled): no enabled host has room for it")
        assert "vm.migrated" not in events
    assert "job.resumed" in events and "vm.lost" not in events


# --- a burst: the VMs of a pass recorded and read in batches --------------------------------

S3, S4 = "vc-small-003", "vc-small-004"


def test_a_burst_reads_its_vms_ips_in_one_range_and_records_every_allocation(
        world: World) -> None:
    w = world
    names = (S1, S2, S3, S4)
    w.slurm.nodes_by_name = {n: powering_up(n) for n in names}
    w.slurm.jobs_by_id = {12 + i: job(12 + i, n) for i, n in enumerate(names)}
    w.controller.run_pass()
    assert w.one.range_reads == [(40, 43)]  # not one read per VM
    order = [name for _, name, _ in w.one.instantiated]
    assert w.slurm.updates == [f"nodename={','.join(order)} nodeaddr="
                               f"{','.join(f'10.9.0.{40 + i}' for i in range(4))} "
                               f"nodehostname={','.join(order)}"]
    assert sorted(w.launches()) == sorted(
        (n, "booting", 40 + i, f"10.9.0.{40 + i}", False) for i, n in enumerate(order))
    events = w.events()
    for i, n in enumerate(order):
        assert ("vm.allocated", n, f"VM {40 + i} allocated") in events
        assert ("node.addr", n, f"NodeAddr set to 10.9.0.{40 + i}") in events
    with w.sessions() as s:  # the job rows, written together
        assert sorted(s.scalars(select(db.Job.job_id))) == [12, 13, 14, 15]


def test_vms_unreadable_after_allocation_are_recorded_and_get_their_nodeaddr_next_pass(
        world: World) -> None:
    w = world
    w.slurm.nodes_by_name = {S1: powering_up(S1), S2: powering_up(S2)}
    w.slurm.jobs_by_id = {12: job(12, S1), 13: job(13, S2)}
    w.one.range_errors.append(OneUnavailable("cannot reach OpenNebula (timed out)"))
    w.controller.run_pass()
    assert w.slurm.updates == []
    assert sorted((state, vm_id, ip) for _, state, vm_id, ip, _ in w.launches()) == [
        ("booting", 40, None), ("booting", 41, None)]  # recorded all the same
    w.clock.advance(1)
    w.controller.run_pass()
    assert all(ip is not None for _, _, _, ip, _ in w.launches())
    assert len(w.one.instantiated) == 2  # no second VM for either node


def test_a_crash_between_instantiate_and_the_batch_leaves_a_launch_the_next_pass_adopts(
        world: World) -> None:
    """The launch is committed ``allocating`` before its VM is asked for; its result waits
    for the pass's batch. A controller that dies in between loses nothing: the next pass
    finds the VM by its tags."""
    w = world
    w.slurm.nodes_by_name = {S1: powering_up(S1)}
    w.slurm.jobs_by_id = {12: job(12, S1)}
    actor = w.controller.actor
    actor._addrs = AddrBatch(w.slurm, w.one, w.sessions, w.clock)
    actor._BootVM(BootVM(S1, "small", 12, 2, 2048, "worker"))
    actor._addrs = None  # the process died before the batch was flushed
    assert w.launches() == [(S1, "allocating", None, None, False)]
    w.clock.advance(1)
    w.controller.run_pass()
    assert w.launches() == [(S1, "booting", 40, None, False)]
    assert any(kind == "vm.adopted" for kind, _, _ in w.events())
    w.controller.run_pass()  # then its NodeAddr, as for any booting launch without one
    assert w.launches() == [(S1, "booting", 40, "10.9.0.40", False)]
    assert w.slurm.updates == [f"nodename={S1} nodeaddr=10.9.0.40 nodehostname={S1}"]
    assert len(w.one.instantiated) == 1


def test_job_rows_written_together_fall_back_to_one_by_one_when_one_is_bad(
        world: World) -> None:
    w = world
    good = [UpsertJob(j, "small", None, "alice", "PENDING", "", None, None, None)
            for j in (21, 23)]
    bad = UpsertJob(22, "small", None, "alice", "RUNNING", S1, None, float("inf"), None)
    result = w.controller.actor.act([good[0], bad, good[1]])
    assert (result.done, result.failed) == (2, 1)
    with w.sessions() as s:
        assert sorted(s.scalars(select(db.Job.job_id))) == [21, 23]
    assert any(kind == "action.failed" and "UpsertJob" in message
               for kind, _, message in w.events())


def test_after_a_pass_that_sent_boots_the_next_comes_when_the_bucket_holds_another_burst(
        ) -> None:
    """At 200/s, burst 100, a burst of 1,000 boots went out 100 a second (one pass a
    second): the next pass now comes once the bucket has refilled (0.5 s)."""
    fast = make_config(boot_rate_per_s=200, boot_burst=100)
    sent = PassReport(busy=True, boots=100, duration_s=0.2)
    assert next_pass_in_s(sent, fast, 30) == pytest.approx(0.3)
    assert next_pass_in_s(replace(sent, duration_s=0.7), fast, 30) == 0.0
    # booting, nothing sent: a second apart as before; the default limit (10/s, burst 20)
    # refills slower than that, so nothing changes there
    assert next_pass_in_s(replace(sent, boots=0), fast, 30) == pytest.approx(0.8)
    assert next_pass_in_s(sent, make_config(), 30) == pytest.approx(0.8)
    assert next_pass_in_s(PassReport(duration_s=0.2), fast, 30) == 30


def test_job_rows_written_together_update_known_jobs_and_add_new_ones(world: World) -> None:
    w = world
    w.controller.actor.act([UpsertJob(21, "small", None, "alice", "PENDING", "", None, None,
                                      None)])
    w.controller.actor.act([
        UpsertJob(21, "small", None, "", "CONFIGURING", S1, None, 1.0e9, None),
        UpsertJob(22, "small", None, "bob", "PENDING", "", None, None, None),
        UpsertJob(22, "small", None, "bob", "CONFIGURING", S2, None, None, None)])  # twice
    with w.sessions() as s:
        assert [(j.job_id, j.user, j.state, j.nodes) for j in s.scalars(
            select(db.Job).order_by(db.Job.job_id))] == [
            (21, "alice", "CONFIGURING", S1), (22, "bob", "CONFIGURING", S2)]


def test_a_launch_closed_later_in_the_pass_is_not_reopened_by_the_batch(world: World) -> None:
    w = world
    with db.transaction(w.sessions) as s:
        row = db.Launch(node_name=S1, node_class="small", job_id=12, state="requested",
                        attempts=1, reason="timed out", created_at=T0, updated_at=T0)
        s.add(row)
        s.flush()
        launch_id = row.id
    w.controller.actor.act([BootVM(S1, "small", 12, 2, 2048, "worker", launch_id),
                            CloseLaunch(launch_id, S1, "failed", "vcluster: given up")])
    assert w.launches() == [(S1, "failed", 40, "10.9.0.40", True)]


def test_a_pass_logs_each_kind_of_action_once_with_its_count() -> None:
    from vcluster.controller.actions import MarkHandled, TerminateVM
    from vcluster.controller.loop import action_summary

    actions = [TerminateVM(1, "a", "x"), MarkHandled((1, 2)), TerminateVM(2, "b", "x"),
               TerminateVM(3, "c", "x")]
    assert action_summary(actions) == "TerminateVM x3, MarkHandled"
    assert action_summary([]) == ""


def test_a_node_left_powering_up_by_a_cancelled_job_is_powered_down_not_booted_again(
        world: World) -> None:
    w = world
    w.slurm.nodes_by_name = {S1: powering_up(S1)}
    w.slurm.jobs_by_id = {12: job(12, S1)}
    w.controller.run_pass()
    assert [name for _, name, _ in w.one.instantiated] == [S1]
    # scancel while the VM boots: the job is gone, Slurm keeps the node powering up (until
    # ResumeTimeout), for nobody
    w.slurm.jobs_by_id = {12: job(12, S1, state="CANCELLED")}
    w.slurm.nodes_by_name = {S1: node(S1, "IDLE", "POWERING_UP")}
    w.clock.advance(3)
    w.controller.run_pass()
    assert w.one.terminated == [40]
    w.one.finish_terminations()
    w.clock.advance(3)
    w.controller.run_pass()
    assert w.launches() == [(S1, "terminated", 40, "10.9.0.40", True)]
    w.clock.advance(3)
    w.controller.run_pass()
    assert len(w.one.instantiated) == 1  # no VM for nobody
    assert w.slurm.updates[-1] == f"nodename={S1} state=POWER_DOWN_ASAP"  # drained first
    w.slurm.nodes_by_name = {S1: node(S1, "IDLE", "DRAIN", "POWER_DOWN", "POWERING_UP")}
    w.controller.run_pass()
    assert w.slurm.updates[-1] == f"nodename={S1} state=POWER_DOWN_FORCE"  # then at once
    w.slurm.nodes_by_name = {S1: node(S1, "IDLE", "POWERING_DOWN")}
    w.controller.run_pass()
    assert len(w.one.instantiated) == 1
    assert [m for k, n, m in w.events() if k == "node.power_down"] == [
        "its job ended while it powered up"] * 2


def test_a_vm_another_command_terminates_while_a_pass_reads_is_not_taken_for_a_death(
        world: World) -> None:
    """``vcluster drain-host`` records its intent (launch terminating, with its reason),
    then terminates the VM: a pass that read the launches before the intent and the VMs
    after the terminate must not fail the node as if its VM had died."""
    w = world
    _job_running_on_vm_40(w)
    reason = "vcluster: host host0 drained for maintenance"
    listing = w.one.vms

    def drain_between_the_reads(**kw: Any) -> Any:
        with db.transaction(w.sessions) as s:
            (row,) = db.open_launches(s)
            row.state, row.reason = "terminating", reason
        del w.one.vms_by_id[40]
        return listing(**kw)

    w.one.vms = drain_between_the_reads  # type: ignore[method-assign]
    updates = len(w.slurm.updates)
    w.controller.run_pass()
    w.one.vms = listing  # type: ignore[method-assign]
    assert w.slurm.updates[updates:] == []  # not set DOWN "VM 40 died"
    assert w.launches() == [(S1, "terminating", 40, "10.9.0.40", False)]
    w.controller.run_pass()  # the next pass closes it with the drain's reason
    assert w.launches() == [(S1, "terminated", 40, "10.9.0.40", True)]
    assert not [e for e in w.events() if e[0] in ("node.failed", "vm.lost")]
