"""Standby VMs through the controller's passes, against the fakes of Slurm and OpenNebula."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from tests.unit.controller_fixtures import job, node, powered_down, powering_up
from tests.unit.test_controller_loop import S1, S2, Clock, FakeOne, FakeSlurm, World, _raise_for
from vcluster import db
from vcluster.config import parse_config
from vcluster.controller.act import Actor
from vcluster.controller.loop import Controller
from vcluster.errors import OneUnavailable
from vcluster.vmtemplate import GuestContext


@dataclass
class StandbyOne(FakeOne):
    """FakeOne that also merges user templates as ``one.vm.update`` type 1 does; every call
    goes to ``calls`` (shared with Slurm's updates, to see their order)."""

    calls: list[str] = field(default_factory=list)
    update_errors: list[Exception] = field(default_factory=list)

    def update_user_template(self, vm_id: int, attrs: Mapping[str, str]) -> None:
        if self.update_errors:
            raise self.update_errors.pop(0)
        vm = self.vms_by_id[vm_id]
        self.vms_by_id[vm_id] = replace(vm, user_template={**vm.user_template, **attrs})
        self.calls.append(f"vm.update {vm_id} " + " ".join(f"{k}={v}" for k, v in attrs.items()))

    def boot(self, vm_id: int) -> None:
        """Running, contextualized, READY reported through OneGate."""
        self.run(vm_id)
        vm = self.vms_by_id[vm_id]
        self.vms_by_id[vm_id] = replace(vm, user_template={**vm.user_template, "READY": "YES"})


@pytest.fixture()
def world(tmp_path: Path) -> Iterator[World]:
    yield from _world(tmp_path, standby=1)


@pytest.fixture()
def world2(tmp_path: Path) -> Iterator[World]:
    """Two standby VMs in reserve."""
    yield from _world(tmp_path, standby=2)


def _world(tmp_path: Path, standby: int) -> Iterator[World]:
    config = parse_config({
        "database": {"url": f"sqlite:///{tmp_path}/state.db"},
        "opennebula": {"retry_delays_s": [1]},
        "controller": {"cluster_name": "vc", "resume_timeout_s": 60,
                       "state_dir": str(tmp_path / "state"), "log_dir": str(tmp_path / "log")},
        "node_class": [{"name": "small", "count": 4, "cpus": 2, "memory_mb": 2048,
                        "template": "worker", "standby": standby}],
    })
    engine = db.make_engine(config.database)
    sessions = db.session_factory(engine)
    slurm, clock = FakeSlurm(), Clock()
    one = StandbyOne(calls=slurm.updates)
    guest = GuestContext(slurm_conf_server="10.111.0.1:6817", join_url="http://10.111.0.1:6830")
    actor = Actor(config, sessions, slurm, one, guest, guest_script=b"#!/bin/sh\n", now=clock)
    try:
        yield World(config, sessions, slurm, one, clock,
                    Controller(config, sessions, slurm, one, actor, now=clock))
    finally:
        engine.dispose()


def test_a_job_gets_a_booted_standby_vm_and_a_replacement_boots(world: World) -> None:
    w = world
    one = w.one
    assert isinstance(one, StandbyOne)
    w.slurm.nodes_by_name = {S1: powered_down(S1)}
    w.controller.run_pass()
    ((template_id, name, extra),) = one.instantiated
    assert (template_id, name) == (3, "vc-standby-small")
    assert 'VCLUSTER_NODE = ""\nVCLUSTER_JOB = ""\nVCLUSTER_CLUSTER = "vc"\n' \
           'VCLUSTER_STANDBY = "small"\n' in extra
    assert '  VCLUSTER_STANDBY = "small"' in extra and "SET_HOSTNAME" not in extra
    assert w.launches() == []

    w.controller.run_pass()  # booting: counted, nothing more booted, no orphan
    assert len(one.instantiated) == 1 and one.terminated == []

    one.boot(40)
    w.slurm.nodes_by_name = {S1: powering_up(S1)}
    w.slurm.jobs_by_id = {12: job(12, S1)}
    w.controller.run_pass()
    # NodeAddr first, then the name the VM's guest waits for: slurmd never registers early
    assert w.slurm.updates == [
        f"nodename={S1} nodeaddr=10.9.0.40 nodehostname={S1}",
        "vm.update 40 VCLUSTER_NODE=vc-small-001 VCLUSTER_JOB=12 VCLUSTER_STANDBY=small "
        f"VCLUSTER_HANDED_AT={int(w.clock().timestamp())}"]
    assert w.launches() == [(S1, "booting", 40, "10.9.0.40", False)]
    assert [n for _, n, _ in one.instantiated] == ["vc-standby-small", "vc-standby-small"]

    w.slurm.nodes_by_name = {S1: node(S1, "ALLOCATED")}  # slurmd registered
    w.controller.run_pass()
    assert w.launches() == [(S1, "up", 40, "10.9.0.40", False)]
    assert one.terminated == []
    kinds = [(k, n) for k, n, _ in w.events()]
    assert kinds[:4] == [("vm.standby_booted", None), ("vm.standby_claimed", S1),
                         ("node.addr", S1), ("vm.standby_booted", None)]
    assert ("node.up", S1) in kinds

    # the job ends: the VM that ran it is terminated like any per-job VM, never reused
    w.slurm.jobs_by_id = {12: job(12, S1, state="COMPLETED")}
    w.slurm.nodes_by_name = {S1: node(S1, "IDLE", "POWERING_DOWN")}
    w.controller.run_pass()
    assert one.terminated == [40]


def test_an_interrupted_handover_is_done_again(world: World) -> None:
    w = world
    one = w.one
    assert isinstance(one, StandbyOne)
    w.controller.run_pass()
    one.boot(40)
    w.slurm.nodes_by_name = {S1: powering_up(S1)}
    w.slurm.jobs_by_id = {12: job(12, S1)}
    one.update_errors.append(OneUnavailable("oned unreachable"))
    w.controller.run_pass()
    assert w.launches() == [(S1, "booting", 40, "10.9.0.40", False)]
    assert one.vms_by_id[40].user_template["VCLUSTER_NODE"] == ""
    w.controller.run_pass()
    assert one.vms_by_id[40].user_template["VCLUSTER_NODE"] == S1
    assert one.terminated == []


def test_a_standby_vm_is_handed_over_at_allocation(world: World) -> None:
    """With ``slurm.handover_at_allocation``, the prolog's request is enough: NodeAddr and
    the node name go out while Slurm still shows the node powered down, and the VM stays
    its node's until Slurm powers it up or its slurmd registers."""
    w = world
    w.controller.config = replace(w.config, slurm=replace(w.config.slurm,
                                                          handover_at_allocation=True))
    one = w.one
    assert isinstance(one, StandbyOne)
    w.slurm.nodes_by_name = {S1: powered_down(S1)}
    w.controller.run_pass()
    one.boot(40)
    w.slurm.nodes_by_name = {S1: node(S1, "ALLOCATED", "POWERED_DOWN")}
    w.slurm.jobs_by_id = {12: job(12, S1)}
    with db.transaction(w.sessions) as s:
        s.add(db.HookRequest(kind="prolog", nodes=S1, job_ids=[12], payload={},
                             created_at=w.clock()))
    w.controller.run_pass()
    assert w.slurm.updates == [
        f"nodename={S1} nodeaddr=10.9.0.40 nodehostname={S1}",
        "vm.update 40 VCLUSTER_NODE=vc-small-001 VCLUSTER_JOB=12 VCLUSTER_STANDBY=small "
        f"VCLUSTER_HANDED_AT={int(w.clock().timestamp())}"]
    assert w.launches() == [(S1, "booting", 40, "10.9.0.40", False)]

    w.controller.run_pass()  # Slurm has not run its power-save pass yet: nothing changes
    w.slurm.nodes_by_name = {S1: powering_up(S1)}
    w.controller.run_pass()
    assert w.launches() == [(S1, "booting", 40, "10.9.0.40", False)]
    assert one.terminated == []

    w.slurm.nodes_by_name = {S1: node(S1, "ALLOCATED")}  # slurmd registered
    w.controller.run_pass()
    assert w.launches() == [(S1, "up", 40, "10.9.0.40", False)]


def _two_jobs_take_both_standby_vms(w: World) -> StandbyOne:
    one = w.one
    assert isinstance(one, StandbyOne)
    w.slurm.nodes_by_name = {S1: powered_down(S1), S2: powered_down(S2)}
    w.controller.run_pass()
    assert sorted(vm for vm in one.vms_by_id) == [40, 41]
    one.boot(40)
    one.boot(41)
    w.slurm.nodes_by_name = {S1: powering_up(S1), S2: powering_up(S2)}
    w.slurm.jobs_by_id = {12: job(12, S1), 13: job(13, S2)}
    return one


def test_handovers_in_one_pass_set_every_nodeaddr_in_one_scontrol(
        world2: World, caplog: pytest.LogCaptureFixture) -> None:
    """50 jobs allocated at once: one scontrol per handed-over node held the pass (and every
    VM boot after it) ~0.14 s a node; one update carries them all, still before any VM
    learns its node name."""
    w = world2
    _two_jobs_take_both_standby_vms(w)
    w.controller.run_pass()
    at = int(w.clock().timestamp())
    assert w.slurm.updates == [
        f"nodename={S1},{S2} nodeaddr=10.9.0.40,10.9.0.41 nodehostname={S1},{S2}",
        f"vm.update 40 VCLUSTER_NODE={S1} VCLUSTER_JOB=12 VCLUSTER_STANDBY=small "
        f"VCLUSTER_HANDED_AT={at}",
        f"vm.update 41 VCLUSTER_NODE={S2} VCLUSTER_JOB=13 VCLUSTER_STANDBY=small "
        f"VCLUSTER_HANDED_AT={at}"]
    assert sorted(w.launches()) == [(S1, "booting", 40, "10.9.0.40", False),
                                    (S2, "booting", 41, "10.9.0.41", False)]
    kinds = [(k, n) for k, n, _ in w.events()]
    assert kinds.count(("node.addr", S1)) == kinds.count(("node.addr", S2)) == 1
    # not taken for a run of job rows first (that write failed, with a warning)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_node_slurm_refuses_fails_only_its_own_handover(world2: World) -> None:
    w = world2
    one = _two_jobs_take_both_standby_vms(w)
    bad = _raise_for(S1, FakeSlurm.update_nodes.__get__(w.slurm))
    joint = f"{S1},{S2}"
    w.slurm.update_nodes = lambda nodes, **kw: (  # type: ignore[method-assign]
        bad(S1, **kw) if nodes == joint else bad(nodes, **kw))
    w.controller.run_pass()
    # S2 set alone and named; S1 refused: its VM is not told a name (slurmd cannot register
    # at an address Slurm does not have), its launch stays for the next pass to redo
    assert w.slurm.updates == [
        f"nodename={S2} nodeaddr=10.9.0.41 nodehostname={S2}",
        f"vm.update 41 VCLUSTER_NODE={S2} VCLUSTER_JOB=13 VCLUSTER_STANDBY=small "
        f"VCLUSTER_HANDED_AT={int(w.clock().timestamp())}"]
    assert one.vms_by_id[40].user_template["VCLUSTER_NODE"] == ""
    assert ("action.failed", S1) in [(k, n) for k, n, _ in w.events()]

    del w.slurm.update_nodes  # Slurm takes it now: the handover is redone
    w.controller.run_pass()
    assert one.vms_by_id[40].user_template["VCLUSTER_NODE"] == S1
    assert sorted(w.launches())[0] == (S1, "booting", 40, "10.9.0.40", False)
    assert one.terminated == []
