"""``vcluster drain-host``: the plan as a table (which VM goes where, or why its job is
requeued), then the whole command against fakes of OpenNebula and Slurm and a real SQLite
database: the host disabled, VMs migrated live or cold, jobs requeued with the reason, standby
VMs replaced, every step an event; and the one-line refusals."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tests.unit.controller_fixtures import T0, job, vm
from tests.unit.test_controller_loop import FakeOne, FakeSlurm
from vcluster import db
from vcluster.config import parse_config
from vcluster.errors import OneBadRequest, UserInputError
from vcluster.host_drain import HostMove, drain_host, plan_host_drain, undrain_host
from vcluster.one_site import HostCapacity
from vcluster.one_vm import VM

S1, S2, S3 = "vc-small-001", "vc-small-002", "vc-small-003"
GB_KB = 1 << 20


def host(name: str, host_id: int, used_cpu: int = 0, state: str = "MONITORED") -> HostCapacity:
    return HostCapacity(name, state, 800, 16 * GB_KB, used_cpu, 0, host_id)


def on(v: VM, where: str = "host0", cpu: float = 2.0) -> VM:
    return replace(v, host=where, cpu=cpu, memory_mb=2048)


def standby(vm_id: int) -> VM:
    return on(replace(vm(vm_id, ""), user_template={"VCLUSTER_STANDBY": "small",
                                                    "VCLUSTER_NODE": "",
                                                    "VCLUSTER_CLUSTER": "vc"}))


HOSTS = [host("host0", 0, 600), host("host1", 1, 500), host("host2", 2, 700)]


def test_plan_moves_each_vm_where_there_is_room_or_requeues_its_job() -> None:
    vms = [on(vm(40, S1)), on(vm(41, S2)), on(vm(42, S3, "SUSPENDED")), standby(43),
           on(vm(44, "vc-small-004"), "host1"), on(vm(45, "vc-small-005", "STOPPED"))]
    jobs = [job(12, S1, state="RUNNING"), job(13, S2, state="RUNNING"),
            job(14, S3, state="SUSPENDED")]
    # host1 has 3 CPUs free: VM 40 (2 CPUs) fits, then only 1 is left; host2 has 1
    assert plan_host_drain(HOSTS[0], HOSTS, vms, jobs) == [
        HostMove(40, S1, 12, "RUNNING", "live-migrate", "host1"),
        HostMove(41, S2, 13, "RUNNING", "requeue", why="no other enabled host has room "
                 "for it"),
        HostMove(42, S3, 14, "SUSPENDED", "requeue", why="no other enabled host has room "
                 "for it"),
        HostMove(43, "", None, "RUNNING", "replace", why="standby VM: booted again on "
                 "another host"),
    ]


def test_plan_uses_only_enabled_hosts_and_the_most_free_cpu_first() -> None:
    hosts = [host("host0", 0), host("host1", 1, 100), host("host2", 2, 0, "DISABLED"),
             host("host3", 3, 0)]
    vms = [on(vm(40, S1)), on(vm(41, S2, "BOOT"))]
    assert plan_host_drain(hosts[0], hosts, vms, [job(12, S1, state="RUNNING")]) == [
        HostMove(40, S1, 12, "RUNNING", "live-migrate", "host3"),
        HostMove(41, S2, None, "BOOT", "terminate",
                 why="OpenNebula cannot migrate a VM in state BOOT"),
    ]


@dataclass
class HostsOne(FakeOne):
    statuses: list[tuple[int, int]] = field(default_factory=list)
    refuse: dict[int, str] = field(default_factory=dict)

    def host_status(self, host_id: int, status: int) -> None:
        self.statuses.append((host_id, status))
        names = {0: "MONITORED", 1: "DISABLED", 2: "OFFLINE"}
        self.capacities = [replace(h, state=names[status]) if h.host_id == host_id else h
                           for h in self.capacities]

    def migrate(self, vm_id: int, host_id: int, *, live: bool, enforce: bool = True) -> None:
        if vm_id in self.refuse:
            raise OneBadRequest(f"OpenNebula refused to live-migrate VM {vm_id}: "
                                f"{self.refuse[vm_id]}")
        super().migrate(vm_id, host_id, live=live, enforce=enforce)


@pytest.fixture()
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    config = parse_config({"database": {"url": f"sqlite:///{tmp_path}/state.db"},
                           "node_class": [{"name": "small", "count": 8, "cpus": 2,
                                           "memory_mb": 2048, "template": "worker"}]})
    return db.session_factory(db.make_engine(config.database))


def events(sessions: sessionmaker[Session]) -> list[tuple[str, str]]:
    with sessions() as s:
        return [(e.kind, e.message) for e in s.scalars(select(db.Event).order_by(db.Event.id))]


def test_drain_host_migrates_requeues_and_replaces(sessions: sessionmaker[Session]) -> None:
    one = HostsOne(capacities=list(HOSTS), refuse={41: "VM with FILESYSTEM disks cannot be "
                                                   "live-migrated"})
    for v in (on(vm(40, S1)), on(vm(41, S2), cpu=0.5), standby(43)):
        one.vms_by_id[v.vm_id] = v
    slurm = FakeSlurm(jobs_by_id={12: job(12, S1, state="RUNNING"),
                                  13: job(13, S2, state="RUNNING")})
    result = drain_host(sessions, slurm, one, "vc", "host0", by="alice", now=T0)
    assert one.statuses == [(0, 1)]
    assert one.migrated == [(40, 1, True)] and one.vms_by_id[40].host == "host1"
    assert [(m.vm_id, m.action, m.to_host) for m in result.moves] == [
        (40, "live-migrate", "host1"), (41, "requeue", ""), (43, "replace", "")]
    assert "FILESYSTEM disks" in result.moves[1].why
    reason = "vcluster: host host0 drained for maintenance"
    assert slurm.updates == [f"jobid=13 AdminComment={reason}",
                             f"nodename={S2} state=DOWN reason={reason}"]
    assert one.terminated == [41, 43]
    kinds = events(sessions)
    assert kinds[0] == ("host.drain", "host host0 disabled by alice: 3 VM(s) to move")
    assert kinds[1] == ("vm.migrated", f"VM 40 ({S1}, job 12) live-migrated from host0 to "
                        "host1: host host0 drained for maintenance")
    assert kinds[2][0] == "job.requeued" and kinds[2][1].startswith(
        "job 13 requeued: VM 41 on host0 terminated (migration refused: ")
    assert kinds[3][0] == "vm.replaced"


def test_dry_run_changes_nothing(sessions: sessionmaker[Session]) -> None:
    one = HostsOne(capacities=list(HOSTS))
    one.vms_by_id[40] = on(vm(40, S1))
    result = drain_host(sessions, FakeSlurm(), one, "vc", "0", by="alice", now=T0,
                        dry_run=True)
    assert result.dry_run and [m.action for m in result.moves] == ["live-migrate"]
    assert one.statuses == [] and one.migrated == [] and events(sessions) == []


@pytest.mark.parametrize(("hosts", "target", "message"), [
    (HOSTS, "host9", "OpenNebula has no host 'host9' (hosts: host0, host1, host2)"),
    ([host("host0", 0, state="DISABLED"), host("host1", 1)], "host0",
     "host host0 is already DISABLED (drained); `vcluster undrain-host host0` enables it "
     "again"),
    ([host("host0", 0), host("host1", 1, state="OFFLINE")], "host0",
     "no room anywhere: host host0 is the only enabled host, its VMs could go nowhere; "
     "enable another host first"),
])
def test_refusals_are_one_line(sessions: sessionmaker[Session], hosts: list[HostCapacity],
                               target: str, message: str) -> None:
    one = HostsOne(capacities=hosts)
    with pytest.raises(UserInputError) as info:
        drain_host(sessions, FakeSlurm(), one, "vc", target, by="alice", now=T0)
    assert str(info.value) == message and one.statuses == []


def test_undrain_host(sessions: sessionmaker[Session]) -> None:
    one = HostsOne(capacities=[host("host0", 0, state="DISABLED"), host("host1", 1)])
    assert undrain_host(sessions, one, "host0", by="bob", now=T0).name == "host0"
    assert one.statuses == [(0, 0)]
    assert events(sessions) == [("host.undrain", "host host0 enabled again by bob")]
    with pytest.raises(UserInputError, match=r"^host host1 is not drained \(it is "
                       r"MONITORED\)$"):
        undrain_host(sessions, one, "host1", by="bob", now=T0)


def test_status_lines_for_drained_hosts_and_migrations_in_flight() -> None:
    from vcluster.host_drain import describe_hosts

    hosts = [host("host0", 0, state="DISABLED"), host("host1", 1)]
    vms = [replace(on(vm(40, S1, "MIGRATE"), "host1"), previous_host="host0"),
           on(vm(41, S2, "SUSPENDED")), on(vm(42, S3), "host1")]
    assert describe_hosts(hosts, vms) == {
        "hosts_out_of_service": ["host host0 DISABLED: no new VMs; 1 VM(s) of this cluster "
                                 "on it"],
        "migrating": [f"VM 40 ({S1}) MIGRATE to host1"]}
    assert describe_hosts(hosts[1:], vms[2:]) == {"hosts_out_of_service": [], "migrating": []}
