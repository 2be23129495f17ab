"""Standby VMs through the controller's passes, against the fakes of Slurm and OpenNebula."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from tests.unit.controller_fixtures import job, node, powered_down, powering_up
from tests.unit.test_controller_loop import S1, Clock, FakeOne, FakeSlurm, World
from vcluster import db
from vcluster.config import parse_config
from vcluster.controller.act import Actor
from vcluster.controller.loop import Controller
from vcluster.errors import OneUnavailable, SlurmCommandError
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
    config = parse_config({
        "database": {"url": f"sqlite:///{tmp_path}/state.db"},
        "opennebula": {"retry_delays_s": [1]},
        "controller": {"cluster_name": "vc", "resume_timeout_s": 60,
                       "state_dir": str(tmp_path / "state"), "log_dir": str(tmp_path / "log")},
        "node_class": [{"name": "small", "count": 4, "cpus": 2, "memory_mb": 2048,
                        "template": "worker", "standby": 1}],
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


NAMES = [f"vc-small-00{i}" for i in range(1, 4)]


def three_standby_vms_claimed(w: World) -> StandbyOne:
    """Three booted standby VMs (40-42), then three jobs' nodes powering up in one pass."""
    one = w.one
    assert isinstance(one, StandbyOne)
    w.controller.config = replace(w.config, node_classes=(replace(
        w.config.node_classes[0], standby=3),))
    w.controller.actor.config = w.controller.config
    w.slurm.nodes_by_name = {n: powered_down(n) for n in NAMES}
    w.controller.run_pass()
    assert sorted(one.vms_by_id) == [40, 41, 42]
    for vm_id in (40, 41, 42):
        one.boot(vm_id)
    w.slurm.nodes_by_name = {n: powering_up(n) for n in NAMES}
    w.slurm.jobs_by_id = {12 + i: job(12 + i, n) for i, n in enumerate(NAMES)}
    return one


def test_a_pass_claims_its_standby_vms_together(world: World) -> None:
    """A burst's claims: NodeAddr of every node in one scontrol (the lists in the same
    order), then each VM told its node name, rows and events written together."""
    w = world
    one = three_standby_vms_claimed(w)
    w.controller.run_pass()
    updates = [u for u in w.slurm.updates if not u.startswith("vm.update")]
    assert updates == ["nodename=vc-small-001,vc-small-002,vc-small-003 nodeaddr=10.9.0.40,"
                       "10.9.0.41,10.9.0.42 nodehostname=vc-small-001,vc-small-002,vc-small-003"]
    assert w.slurm.updates[0] == updates[0]  # before any VM is told its name
    assert {one.vms_by_id[v].user_template["VCLUSTER_NODE"] for v in (40, 41, 42)} == set(NAMES)
    assert sorted(w.launches()) == sorted(
        (n, "booting", 40 + i, f"10.9.0.{40 + i}", False) for i, n in enumerate(NAMES))
    kinds = [(k, n) for k, n, _ in w.events()]
    assert sorted(n for k, n in kinds if k == "node.addr") == NAMES
    assert sorted(n for k, n in kinds if k == "vm.standby_claimed") == NAMES


def test_a_node_slurm_refuses_does_not_fail_the_other_claims(world: World) -> None:
    """The batch's scontrol refused (one bad node): each node is then updated alone; the
    refused one's VM is not named (its slurmd must not register unaddressed) and the next
    pass hands it over again."""
    w = world
    one = three_standby_vms_claimed(w)
    inner = w.slurm.update_nodes
    refuse = ["vc-small-002"]

    def update_nodes(nodes, **kw):  # type: ignore[no-untyped-def]
        if "," in nodes or nodes in refuse:
            raise SlurmCommandError(["scontrol", "update", f"nodename={nodes}"], 1, "",
                                    "slurm_update error: Invalid node name specified")
        return inner(nodes, **kw)

    w.slurm.update_nodes = update_nodes  # type: ignore[method-assign]
    w.controller.run_pass()
    named = {one.vms_by_id[v].user_template["VCLUSTER_NODE"] for v in (40, 41, 42)}
    assert named == {"vc-small-001", "vc-small-003", ""}
    failed = [(n, m) for k, n, m in w.events() if k == "action.failed"]
    assert failed == [("vc-small-002", "ClaimStandby failed: `scontrol update "
                       "nodename=vc-small-002` failed (exit 1): slurm_update error: Invalid "
                       "node name specified")]
    refuse.clear()
    w.controller.run_pass()
    assert {one.vms_by_id[v].user_template["VCLUSTER_NODE"] for v in (40, 41, 42)} == set(NAMES)


def test_an_overloaded_slurmctld_leaves_the_claims_to_the_next_pass(world: World) -> None:
    """The batch's scontrol timed out (slurmctld overloaded by a burst): no node-by-node
    retry in the same pass (each would wait as long again), no VM told its name, and the
    next pass hands every one over."""
    w = world
    one = three_standby_vms_claimed(w)
    inner = w.slurm.update_nodes
    calls: list[str] = []
    busy = [True]

    def update_nodes(nodes, **kw):  # type: ignore[no-untyped-def]
        calls.append(nodes)
        if busy[0]:
            raise SlurmCommandError(["scontrol", "update", f"nodename={nodes}"], 1, "",
                                    "slurm_update error: Socket timed out on send/recv "
                                    "operation")
        return inner(nodes, **kw)

    w.slurm.update_nodes = update_nodes  # type: ignore[method-assign]
    w.controller.run_pass()
    assert calls == [",".join(NAMES)]
    assert {one.vms_by_id[v].user_template["VCLUSTER_NODE"] for v in (40, 41, 42)} == {""}
    failed = sorted(n for k, n, _ in w.events() if k == "action.failed")
    assert failed == NAMES
    busy[0] = False
    w.controller.run_pass()
    assert {one.vms_by_id[v].user_template["VCLUSTER_NODE"] for v in (40, 41, 42)} == set(NAMES)


def test_a_vm_booted_at_allocation_that_fails_is_a_failed_vm_of_its_job(world: World) -> None:
    """It goes at once (a power cut), its job is told in the events, the node still gets its
    own VM at Slurm's power-up, and the job's next allocation boots nothing early."""
    w = world
    w.controller.config = replace(w.config, node_classes=(replace(
        w.config.node_classes[0], standby=0),))
    w.controller.actor.config = w.controller.config
    one = w.one
    w.slurm.nodes_by_name = {S1: node(S1, "ALLOCATED", "POWERED_DOWN")}
    w.slurm.jobs_by_id = {12: job(12, S1)}

    def prolog() -> None:
        with db.transaction(w.sessions) as s:
            s.add(db.HookRequest(kind="prolog", nodes=S1, job_ids=[12], payload={},
                                 created_at=w.clock()))

    prolog()
    w.controller.run_pass()
    assert sorted(one.vms_by_id) == [40]
    one.vms_by_id[40] = replace(one.vms_by_id[40], state=3, lcm_state=36,
                                state_name="BOOT_FAILURE")
    w.controller.run_pass()
    assert one.terminated == [40]
    assert ("vm.early_failed", S1, "vcluster: VM 40 booted early for vc-small-001 failed to "
            "boot (BOOT_FAILURE)") in w.events()
    with w.sessions() as s:
        (row,) = s.scalars(select(db.Event).where(db.Event.kind == "vm.early_failed"))
        assert (row.job_id, row.vm_id) == (12, 40)
    w.slurm.nodes_by_name = {S1: powering_up(S1)}
    w.controller.run_pass()
    assert sorted(v for v in one.vms_by_id if v != 40) == [41]
    assert one.vms_by_id[41].user_template["VCLUSTER_NODE"] == S1

    # its next allocation (say VM 41 failed too and Slurm requeued the job): no early VM
    one.finish_terminations()
    del one.vms_by_id[41]
    with db.transaction(w.sessions) as s:
        s.execute(delete(db.Launch))
    w.slurm.nodes_by_name = {S1: node(S1, "ALLOCATED", "POWERED_DOWN")}
    prolog()
    w.controller.run_pass()
    assert sorted(one.vms_by_id) == []
