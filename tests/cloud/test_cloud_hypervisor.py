"""The cloud acts on its driver as a hypervisor would: hard actions are power cuts, and a VM
that is not running (suspended, powered off, failed) is torn down completely when it ends.

A recording driver (the dummy driver, remembering each stop call and whether it was hard)
shows what the guest would have seen; the netns driver's side of it (SIGKILL while frozen,
nothing left in the VM's cgroup, network or mount namespace) is in
tests/integration/test_netns_driver.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cloud.conftest import VM_TEXT, Running, check_proxies, connect, make_settings
from tests.cloud.schema_proxy import SchemaProxy
from vcluster.testbed.cloud.drivers.dummy import DummyDriver
from vcluster.testbed.cloud.server import CloudServer

RUNNING, DONE, POWEROFF, SUSPENDED = (3, 3), (6, 0), (8, 0), (5, 0)
STOPPED, UNDEPLOYED = (4, 0), (9, 0)


class StopRecorder(DummyDriver):
    """The dummy driver, recording (operation, vm_id, hard) of every stop, and every call in
    ``calls`` (operation, vm_id)."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        self.stops: list[tuple[str, int, bool]] = []
        self.calls: list[tuple[str, int]] = []

    def suspend(self, vm_id: int) -> None:
        self.calls.append(("suspend", vm_id))
        super().suspend(vm_id)

    def resume(self, vm_id: int) -> None:
        self.calls.append(("resume", vm_id))
        super().resume(vm_id)

    def shutdown(self, vm_id: int, *, hard: bool = False) -> None:
        self.stops.append(("shutdown", vm_id, hard))
        super().shutdown(vm_id, hard=hard)

    def poweroff(self, vm_id: int, *, hard: bool = False) -> None:
        self.stops.append(("poweroff", vm_id, hard))
        with self._lock:
            if self._vms.pop(vm_id, None) is not None:
                self._save()


@pytest.fixture
def hv(tmp_path: Path) -> Iterator[tuple[Running, StopRecorder]]:
    driver = StopRecorder(tmp_path)
    server = CloudServer(make_settings(tmp_path), driver=driver)
    proxies: list[SchemaProxy] = []
    try:
        server.start()
        yield connect(server, proxies), driver
    finally:
        server.stop()
    check_proxies(proxies)


def _running(cloud: Running) -> int:
    vm_id = int(cloud.one.vm.allocate(VM_TEXT, False))
    cloud.wait_state(vm_id, *RUNNING)
    return vm_id


@pytest.mark.parametrize(("action", "settled", "expected"), [
    ("terminate", DONE, [("shutdown", False), ("shutdown", True)]),
    ("terminate-hard", DONE, [("shutdown", True), ("shutdown", True)]),
    ("poweroff", POWEROFF, [("poweroff", False)]),
    ("poweroff-hard", POWEROFF, [("poweroff", True)]),
    ("undeploy-hard", UNDEPLOYED, [("poweroff", True), ("poweroff", True)]),
    ("stop", STOPPED, []),  # the guest's memory is saved, not cut: see below
])
def test_hard_actions_are_power_cuts(hv: tuple[Running, StopRecorder], action: str,
                                     settled: tuple[int, int],
                                     expected: list[tuple[str, bool]]) -> None:
    cloud, driver = hv
    vm_id = _running(cloud)
    cloud.one.vm.action(action, vm_id)
    cloud.wait_state(vm_id, *settled)
    # the epilog's clean-up after a stop is always a cut: the guest no longer runs
    assert [(op, hard) for op, i, hard in driver.stops if i == vm_id] == expected


@pytest.mark.parametrize("then", ["suspend", "poweroff"])
@pytest.mark.parametrize("end", ["terminate", "terminate-hard"])
def test_a_vm_not_running_is_torn_down_when_terminated(
        hv: tuple[Running, StopRecorder], then: str, end: str) -> None:
    cloud, driver = hv
    vm_id = _running(cloud)
    cloud.one.vm.action(then, vm_id)
    cloud.wait_state(vm_id, *(SUSPENDED if then == "suspend" else POWEROFF))
    driver.stops.clear()
    cloud.one.vm.action(end, vm_id)
    cloud.wait_state(vm_id, *DONE)
    # a frozen VM is cut and removed before it is DONE (its processes would hold the next
    # VM's paths); a powered-off one is cleaned up the same way
    assert driver.stops == [("shutdown", vm_id, True)]
    assert not driver.alive(vm_id)


def test_a_suspended_vm_stopped_keeps_its_saved_state(
        hv: tuple[Running, StopRecorder]) -> None:
    """oned moves a suspended VM's saved memory off the host (EPILOG_STOP): not a cut."""
    cloud, driver = hv
    vm_id = _running(cloud)
    cloud.one.vm.action("suspend", vm_id)
    cloud.wait_state(vm_id, *SUSPENDED)
    cloud.one.vm.action("stop", vm_id)
    cloud.wait_state(vm_id, *STOPPED)
    assert driver.stops == []
    cloud.one.vm.action("resume", vm_id)
    cloud.wait_state(vm_id, *RUNNING)
    assert driver.alive(vm_id)


def test_leftovers_of_done_vms_are_swept(hv: tuple[Running, StopRecorder]) -> None:
    cloud, driver = hv
    vm_id = _running(cloud)
    cloud.one.vm.action("terminate-hard", vm_id)
    cloud.wait_state(vm_id, *DONE)
    driver._vms[vm_id] = {"state": "running", "crash_at": None}  # something survived
    cloud.server.engine.sweep_once()
    assert vm_id not in driver._vms


def test_stop_saves_the_guest_frees_the_host_and_resume_restores_it(
        hv: tuple[Running, StopRecorder]) -> None:
    """oned's stop saves the VM's memory and moves it off the host (the host's capacity is
    freed, unlike suspend); resume places it again and restores it: the guest's processes
    go on, never rebooted."""
    cloud, driver = hv
    vm_id = _running(cloud)
    used = int(cloud.one.host.info(0).HOST_SHARE.CPU_USAGE)
    assert used > 0
    cloud.one.vm.action("stop", vm_id)
    cloud.wait_state(vm_id, *STOPPED)
    assert int(cloud.one.host.info(0).HOST_SHARE.CPU_USAGE) == 0
    cloud.one.vm.action("resume", vm_id)
    cloud.wait_state(vm_id, *RUNNING)
    assert int(cloud.one.host.info(0).HOST_SHARE.CPU_USAGE) == used
    assert [c for c in driver.calls if c[1] == vm_id] == [("suspend", vm_id), ("resume", vm_id)]
    assert not [s for s in driver.stops if s[1] == vm_id], "the guest was never cut"


def test_suspend_keeps_the_host_capacity(hv: tuple[Running, StopRecorder]) -> None:
    cloud, _driver = hv
    vm_id = _running(cloud)
    used = int(cloud.one.host.info(0).HOST_SHARE.CPU_USAGE)
    cloud.one.vm.action("suspend", vm_id)
    cloud.wait_state(vm_id, *SUSPENDED)
    assert int(cloud.one.host.info(0).HOST_SHARE.CPU_USAGE) == used
