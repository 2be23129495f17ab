"""vcluster's own OpenNebula client (the calls drain-host and cold migration make) against
the testbed cloud through the real pyone: host ids and states from one.hostpool.info,
one.host.status, one.vm.migrate with oned's capacity check, and a VM's last two hosts."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.cloud.conftest import AUTH, SLOW_STEPS, Running
from vcluster.config import OpenNebulaSettings
from vcluster.errors import OneBadRequest
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
