"""Placement: capacity, SCHED_REQUIREMENTS, SCHED_RANK, unplaceable VMs, the window knobs."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pyone
import pytest

from tests.cloud.conftest import VM_TEXT, Running
from vcluster.testbed.cloud.settings import SchedulerSettings

RUNNING = (3, 3)


def _host_of(cloud: Running, vm_id: int) -> str:
    return str(cloud.one.vm.info(vm_id).HISTORY_RECORDS.HISTORY[-1].HOSTNAME)


def test_requirements_and_rank_choose_the_host(start_cloud: Callable[..., Running]) -> None:
    cloud = start_cloud(hosts=3)
    by_name = cloud.one.vm.allocate(VM_TEXT + 'SCHED_REQUIREMENTS = "NAME = \\"host2\\""')
    glob = cloud.one.vm.allocate(
        VM_TEXT + 'SCHED_REQUIREMENTS = "NAME != \\"host0\\" & !(ID = 2)"')
    ranked = cloud.one.vm.allocate(VM_TEXT + 'SCHED_RANK = "ID"')
    low = cloud.one.vm.allocate(VM_TEXT + 'SCHED_RANK = "-ID"\n'
                                'SCHED_REQUIREMENTS = "NAME = \\"host*\\" | ID > 5"')
    for vm_id in (by_name, glob, ranked, low):
        cloud.wait_state(vm_id, *RUNNING)
    assert _host_of(cloud, by_name) == "host2"
    assert _host_of(cloud, glob) == "host1"
    assert _host_of(cloud, ranked) == "host2"
    assert _host_of(cloud, low) == "host0"


def test_default_rank_spreads_and_capacity_is_counted(
        start_cloud: Callable[..., Running]) -> None:
    cloud = start_cloud(hosts=2, host_cpu_pct=200, host_mem_kb=4 * 1024 * 1024)
    big = 'CPU = "1.5"\nMEMORY = "1024"\n'
    first = cloud.one.vm.allocate(big)
    second = cloud.one.vm.allocate(big)
    for vm_id in (first, second):
        cloud.wait_state(vm_id, *RUNNING)
    assert {_host_of(cloud, first), _host_of(cloud, second)} == {"host0", "host1"}
    share = cloud.one.host.info(0).HOST_SHARE
    assert (share.CPU_USAGE, share.MEM_USAGE, share.RUNNING_VMS) == (150, 1024 * 1024, 1)
    third = cloud.one.vm.allocate(big)
    time.sleep(0.6)
    vm = cloud.one.vm.info(third)
    assert (vm.STATE, vm.LCM_STATE) == (1, 0)
    assert re.fullmatch(r"\w{3} \w{3} \d\d \d\d:\d\d:\d\d \d{4} : No host with enough "
                        r"capacity to deploy the VM", vm.USER_TEMPLATE["SCHED_MESSAGE"])
    cloud.one.vm.action("terminate", first)
    cloud.wait_state(third, *RUNNING)  # retried once the capacity is back
    assert "SCHED_MESSAGE" not in cloud.one.vm.info(third).USER_TEMPLATE


def test_unplaceable_vm_stays_pending_with_a_message(cloud: Running) -> None:
    vm_id = cloud.one.vm.allocate(VM_TEXT + 'SCHED_REQUIREMENTS = "NAME = \\"gpu*\\""')
    time.sleep(0.5)
    short = cloud.one.vmpool.info(-2, -1, -1, -1).VM[0]
    assert (short.ID, short.STATE) == (vm_id, 1)
    assert short.USER_TEMPLATE["SCHED_MESSAGE"].endswith(
        ' : No host meets capacity and SCHED_REQUIREMENTS: NAME = "gpu*"')


def test_placement_window(start_cloud: Callable[..., Running]) -> None:
    cloud = start_cloud(scheduler=SchedulerSettings(max_wnd_time_s=0.8, max_wnd_length=3,
                                                    timer_s=30.0))
    vm_id = cloud.one.vm.allocate(VM_TEXT)
    time.sleep(0.4)
    assert cloud.vm_state(vm_id) == (1, 0)      # the window is not old enough yet
    cloud.wait_state(vm_id, *RUNNING, timeout_s=3)
    started = time.monotonic()
    ids = [cloud.one.vm.allocate(VM_TEXT) for _ in range(3)]  # a full window goes at once
    for other in ids:
        cloud.wait_state(other, *RUNNING, timeout_s=3)
    assert time.monotonic() - started < 0.7


def test_resched_moves_a_running_vm_to_another_host(cloud: Running) -> None:
    vm_id = cloud.one.vm.allocate(VM_TEXT)
    cloud.wait_state(vm_id, *RUNNING)
    before = _host_of(cloud, vm_id)
    cloud.one.vm.action("resched", vm_id)
    deadline = time.monotonic() + 5
    while _host_of(cloud, vm_id) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _host_of(cloud, vm_id) != before
    cloud.wait_state(vm_id, *RUNNING)
    vm = cloud.one.vm.info(vm_id)
    assert vm.RESCHED == 0 and len(vm.HISTORY_RECORDS.HISTORY) == 2
    assert vm.HISTORY_RECORDS.HISTORY[0].ACTION == 1  # migrate


def test_host_status_disables_or_sets_offline_like_oned(
        start_cloud: Callable[..., Running]) -> None:
    cloud = start_cloud(hosts=2)
    running = cloud.one.vm.allocate(VM_TEXT + 'SCHED_REQUIREMENTS = "NAME = \\"host0\\""')
    cloud.wait_state(running, *RUNNING)
    assert cloud.one.host.status(0, 1) == 0  # DISABLED: no new VMs there
    assert (cloud.one.host.info(0).STATE, cloud.one.host.info(0).PREV_STATE) == (4, 2)
    placed = cloud.one.vm.allocate(VM_TEXT)
    cloud.wait_state(placed, *RUNNING)
    assert _host_of(cloud, placed) == "host1"
    assert cloud.one.host.status(1, 2) == 1  # OFFLINE
    assert cloud.one.host.info(1).STATE == 8
    waiting = cloud.one.vm.allocate(VM_TEXT)
    time.sleep(0.6)
    assert cloud.one.vm.info(waiting).USER_TEMPLATE["SCHED_MESSAGE"].endswith(
        "No hosts enabled to run VMs")
    # the VMs already there are left as they are
    assert cloud.vm_state(running) == RUNNING and cloud.vm_state(placed) == RUNNING
    assert cloud.one.host.status(0, 0) == 0  # enabled (and monitored at once)
    assert cloud.one.host.info(0).STATE == 2
    cloud.wait_state(waiting, *RUNNING)
    with pytest.raises(pyone.OneInternalException, match=r"\[one.host.status\] Wrong status "
                       r"code"):
        cloud.one.host.status(0, 3)
    with pytest.raises(pyone.OneNoExistsException, match=r"\[one.host.status\] Error getting "
                       r"host \[9\]."):
        cloud.one.host.status(9, 0)


def test_a_template_updated_to_match_no_host_gives_pending_vms(cloud: Running) -> None:
    tid = cloud.one.template.allocate('NAME = "upd"\n' + VM_TEXT)
    assert cloud.one.template.update(tid, 'SCHED_REQUIREMENTS = "ID = 9999"', 1) == tid
    body = cloud.one.template.info(tid).TEMPLATE
    assert (body["SCHED_REQUIREMENTS"], body["MEMORY"]) == ("ID = 9999", "64")
    assert cloud.one.template.info(tid).NAME == "upd"
    vm_id = cloud.one.template.instantiate(tid, "")
    time.sleep(0.5)
    vm = cloud.one.vm.info(vm_id)
    assert (vm.STATE, vm.USER_TEMPLATE["SCHED_MESSAGE"].split(" : ", 1)[1]) == (
        1, "No host meets capacity and SCHED_REQUIREMENTS: ID = 9999")
    assert cloud.one.template.update(tid, 'NAME = "other"\nCPU = "0.1"', 0) == tid
    replaced = cloud.one.template.info(tid)
    assert (replaced.NAME, dict(replaced.TEMPLATE)) == ("upd", {"CPU": "0.1"})
