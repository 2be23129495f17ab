"""vcluster's own OpenNebula client (the calls drain-host and cold migration make) against
the testbed cloud through the real pyone: host ids and states from one.hostpool.info,
one.host.status, one.vm.migrate with oned's capacity check, and a VM's last two hosts;
then drain-host's library call end to end on the cloud side (Slurm a recording fake)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cloud.conftest import AUTH, SLOW_STEPS, Running
from tests.unit.controller_fixtures import T0, job
from tests.unit.test_controller_loop import FakeSlurm
from vcluster import db
from vcluster.config import OpenNebulaSettings, parse_config
from vcluster.errors import OneBadRequest
from vcluster.host_drain import drain_host
from vcluster.one import OneClient


def client(cloud: Running) -> OneClient:
    return OneClient(OpenNebulaSettings(xmlrpc=cloud.server.endpoint, retry_delays_s=()),
                     session=AUTH)


def test_hosts_status_and_migrate_as_vcluster_calls_them(
        start_cloud: Callable[..., Running]) -> None:
    cloud = start_cloud(timings=SLOW_STEPS, host_cpu_pct=100)
    one = client(cloud)
    assert sorted((h.name, h.host_id, h.state) for h in one.host_capacities()) == [
        ("host0", 0, "MONITORED"), ("host1", 1, "MONITORED")]
    vm_id = cloud.one.vm.allocate('CPU = "0.6"\nMEMORY = "64"\n', True)
    cloud.one.vm.deploy(vm_id, 0)
    cloud.wait_state(vm_id, 3, 3)
    vm = one.vm(vm_id)
    assert (vm.host, vm.previous_host, vm.cpu, vm.memory_mb) == ("host0", "", 0.6, 64)
    one.host_status(0, 1)
    assert {h.name: h.schedulable for h in one.host_capacities()} == {
        "host0": False, "host1": True}
    filler = cloud.one.vm.allocate('CPU = "0.6"\nMEMORY = "64"\n')
    cloud.wait_state(filler, 3, 3)  # on host1: the only enabled one
    with pytest.raises(OneBadRequest) as info:
        one.migrate(vm_id, 1, live=True)
    assert str(info.value).startswith(
        f"OpenNebula refused to live-migrate VM {vm_id} to host 1: [one.vm.migrate] virtual "
        f"machine [{vm_id}] does not fit in host [1]. Not enough CPU: 60/40")
    cloud.one.vm.action("terminate-hard", filler)
    cloud.wait_state(filler, 6, 0)
    one.migrate(vm_id, 1, live=True)
    cloud.wait_state(vm_id, 3, 3)
    # one.vm.info has every history record; the pool listing only the last one (as oned's)
    assert (one.vm(vm_id).host, one.vm(vm_id).previous_host) == ("host1", "host0")
    listed = {v.vm_id: v for v in one.vms()}[vm_id]
    assert (listed.host, listed.previous_host) == ("host1", "")
    one.host_status(0, 0)
    assert all(h.schedulable for h in one.host_capacities())


def test_drain_host_against_the_testbed_cloud(start_cloud: Callable[..., Running],
                                              tmp_path: Path) -> None:
    """drain-host's library call through vcluster's client and the real pyone: the host
    DISABLED, a job's VM live-migrated where it fits (its guest untouched: MIGRATE, then
    RUNNING), another job requeued as the other host has no room left, a standby VM
    terminated; Slurm is a fake that records what it is told."""
    cloud = start_cloud(timings=SLOW_STEPS, host_cpu_pct=300)
    one = client(cloud)

    def vm(text: str, host_id: int) -> int:
        vm_id = int(cloud.one.vm.allocate(text, True))
        cloud.one.vm.deploy(vm_id, host_id)
        return vm_id

    def tagged(node: str, standby: bool = False) -> str:
        tags = 'VCLUSTER_CLUSTER = "vc"\n' + (
            'VCLUSTER_STANDBY = "small"\nVCLUSTER_NODE = ""\n' if standby
            else f'VCLUSTER_NODE = "{node}"\n')
        return 'CPU = "1"\nMEMORY = "64"\n' + tags

    moved, requeued = vm(tagged("vc-small-001"), 0), vm(tagged("vc-small-002"), 0)
    spare = vm(tagged("", standby=True).replace('CPU = "1"', 'CPU = "0.5"'), 0)
    vm('CPU = "2"\nMEMORY = "64"\n', 1)  # host1: room for one more job VM only
    for vm_id in (moved, requeued, spare):
        cloud.wait_state(vm_id, 3, 3)
    slurm = FakeSlurm(jobs_by_id={12: job(12, "vc-small-001", state="RUNNING"),
                                  13: job(13, "vc-small-002", state="RUNNING")})
    sessions = db.session_factory(db.make_engine(parse_config(
        {"database": {"url": f"sqlite:///{tmp_path}/state.db"}}).database))
    result = drain_host(sessions, slurm, one, "vc", "host0", by="alice", now=T0)
    assert [(m.vm_id, m.action, m.to_host) for m in result.moves] == [
        (moved, "live-migrate", "host1"), (requeued, "requeue", ""), (spare, "replace", "")]
    assert int(cloud.one.host.info(0).STATE) == 4  # DISABLED
    assert cloud.vm_state(moved) == (3, 4)  # MIGRATE
    cloud.wait_state(moved, 3, 3)
    records = cloud.one.vm.info(moved).HISTORY_RECORDS.HISTORY
    assert [(h.HOSTNAME, h.ACTION) for h in records] == [("host0", 2), ("host1", 0)]
    for vm_id in (requeued, spare):
        cloud.wait_state(vm_id, 6, 0)
    reason = "vcluster: host host0 drained for maintenance"
    assert slurm.updates == [f"jobid=13 AdminComment={reason}",
                             f"nodename=vc-small-002 state=DOWN reason={reason}"]
    assert int(cloud.one.host.info(0).HOST_SHARE.RUNNING_VMS) == 0
