"""A restart of the server keeps every VM, never reuses ids, and catches VMs that died."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tests.cloud.conftest import VM_TEXT, Running


def test_restart_keeps_every_vm(start_cloud: Callable[..., Running], tmp_path: Path) -> None:
    state_dir = tmp_path / "persist"
    first = start_cloud(state_dir)
    one = first.one
    running = one.vm.allocate(VM_TEXT + 'NIC = [ NETWORK = "vcluster" ]\nTAG = "r"\n')
    held = one.vm.allocate(VM_TEXT, True)
    off = one.vm.allocate(VM_TEXT)
    doomed = one.vm.allocate(VM_TEXT + 'TESTBED_FAULT = "crash-after:1.5"\n')
    done = one.vm.allocate(VM_TEXT, True)
    booting = one.vm.allocate(VM_TEXT + 'TESTBED_FAULT = "slow-boot:1"\n')
    tid = one.template.allocate('NAME = "kept"\nCPU = 1\nMEMORY = 64\n')
    for vm_id in (running, off, doomed):
        first.wait_state(vm_id, 3, 3)
    one.vm.action("poweroff", off)
    first.wait_state(off, 8, 0)
    one.vm.action("terminate", done)
    first.wait_state(booting, 3, 2)
    before = {vm.ID: (vm.STATE, vm.LCM_STATE, vm.NAME)
              for vm in one.vmpool.infoextended(-2, -1, -1, -2).VM}
    assert before[doomed][:2] == (3, 3)       # still alive when the server stops
    first.server.stop()
    time.sleep(1.6)  # the crash-after VM dies while the server is down

    second = start_cloud(state_dir)
    after = {vm.ID: (vm.STATE, vm.LCM_STATE, vm.NAME)
             for vm in second.one.vmpool.infoextended(-2, -1, -1, -2).VM}
    assert set(after) == set(before)
    for vm_id in (running, held, off, done):
        assert after[vm_id] == before[vm_id]
    second.wait_state(doomed, 3, 16)          # monitoring: UNKNOWN
    second.wait_state(booting, 3, 3)          # the BOOT phase is resumed
    assert second.vm_state(running) == (3, 3)
    vm = second.one.vm.info(running)
    assert vm.USER_TEMPLATE["TAG"] == "r" and vm.TEMPLATE["NIC"]["IP"] == "10.111.0.100"
    assert second.one.template.info(tid).NAME == "kept"
    new = second.one.vm.allocate(VM_TEXT + 'NIC = [ NETWORK = "vcluster" ]\n', True)
    assert new == booting + 1                 # ids are never reused
    assert second.one.vm.info(new).TEMPLATE["NIC"]["IP"] == "10.111.0.101"
    assert second.one.host.info(0).HOST_SHARE.RUNNING_VMS + \
        second.one.host.info(1).HOST_SHARE.RUNNING_VMS == 4
