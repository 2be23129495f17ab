"""Fault injection with the dummy driver: boot-fail, crash-after:N, slow-boot:N."""

from __future__ import annotations

import re
import time

import pyone
import pytest

from tests.cloud.conftest import VM_TEXT, Running


def test_boot_fail_goes_to_boot_failure_with_an_error(cloud: Running) -> None:
    vm_id = cloud.one.vm.allocate(VM_TEXT + 'TESTBED_FAULT = "boot-fail"\n')
    cloud.wait_state(vm_id, 3, 36)
    error = cloud.one.vm.info(vm_id).USER_TEMPLATE["ERROR"]
    assert re.fullmatch(rf"\w{{3}} \w{{3}} \d\d \d\d:\d\d:\d\d \d{{4}} : Error deploying "
                        rf"virtual machine: VM {vm_id} failed to boot \(TESTBED_FAULT "
                        rf"boot-fail\)", error), error
    assert cloud.one.vmpool.info(-2, -1, -1, -1).VM[0].USER_TEMPLATE["ERROR"] == error
    cloud.one.vm.action("terminate", vm_id)
    cloud.wait_state(vm_id, 6, 0)


def test_crash_after_goes_unknown_and_resume_brings_it_back(cloud: Running) -> None:
    vm_id = cloud.one.vm.allocate(VM_TEXT + 'TESTBED_FAULT = "crash-after:0.4"\n')
    cloud.wait_state(vm_id, 3, 3)
    cloud.wait_state(vm_id, 3, 16, timeout_s=3)
    cloud.one.vm.action("resume", vm_id)
    cloud.wait_state(vm_id, 3, 3)


def test_slow_boot_lengthens_boot(cloud: Running) -> None:
    vm_id = cloud.one.vm.allocate(VM_TEXT + 'TESTBED_FAULT = "slow-boot:1"\n')
    cloud.wait_state(vm_id, 3, 2)
    started = time.monotonic()
    cloud.wait_state(vm_id, 3, 3, timeout_s=5)
    assert 0.7 < time.monotonic() - started < 3


def test_unknown_fault_is_refused(cloud: Running) -> None:
    with pytest.raises(pyone.OneInternalException,
                       match=r"TESTBED_FAULT: unknown TESTBED_FAULT 'melt'"):
        cloud.one.vm.allocate(VM_TEXT + 'TESTBED_FAULT = "melt"\n')
