"""Every vm.action from every reachable state, against the table in API-NOTES (oned's rules).

Each row starts fresh VMs in one state (one per action), applies the action through pyone,
and checks either oned's refusal text or the first state right after the call and the state
the VM settles in.
"""

from __future__ import annotations

from collections.abc import Callable

import pyone
import pytest

from tests.cloud.conftest import SLOW_STEPS, VM_TEXT, Running

S = {
    "PENDING": (1, 0), "HOLD": (2, 0), "RUNNING": (3, 3), "BOOT": (3, 2),
    "SHUTDOWN": (3, 12), "EPILOG": (3, 11), "DONE": (6, 0), "UNKNOWN": (3, 16),
    "SHUTDOWN_UNDEPLOY": (3, 29), "EPILOG_UNDEPLOY": (3, 30), "UNDEPLOYED": (9, 0),
    "SHUTDOWN_POWEROFF": (3, 18), "POWEROFF": (8, 0), "SAVE_STOP": (3, 5),
    "EPILOG_STOP": (3, 10), "STOPPED": (4, 0), "SAVE_SUSPEND": (3, 6), "SUSPENDED": (5, 0),
    "BOOT_SUSPENDED": (3, 21), "BOOT_POWEROFF": (3, 20), "BOOT_UNKNOWN": (3, 19),
    "CLEANUP_DELETE": (3, 23), "BOOT_FAILURE": (3, 36), "PROLOG_RESUME": (3, 9),
    "PROLOG_UNDEPLOY": (3, 31),
}

ACTIONS = ("terminate", "terminate-hard", "undeploy", "undeploy-hard", "poweroff",
           "poweroff-hard", "reboot", "reboot-hard", "hold", "release", "stop", "suspend",
           "resume", "resched", "unresched", "explode")

# start state -> action -> (first states allowed right after the call, settled state).
# Every action not listed is refused.
ACCEPTED: dict[str, dict[str, tuple[tuple[str, ...], str]]] = {
    "PENDING": {"terminate": (("DONE",), "DONE"), "terminate-hard": (("DONE",), "DONE"),
                "hold": (("HOLD",), "HOLD")},
    "HOLD": {"terminate": (("DONE",), "DONE"), "terminate-hard": (("DONE",), "DONE"),
             "release": (("PENDING",), "PENDING")},
    "RUNNING": {
        "terminate": (("SHUTDOWN",), "DONE"), "terminate-hard": (("SHUTDOWN",), "DONE"),
        "undeploy": (("SHUTDOWN_UNDEPLOY",), "UNDEPLOYED"),
        "undeploy-hard": (("SHUTDOWN_UNDEPLOY",), "UNDEPLOYED"),
        "poweroff": (("SHUTDOWN_POWEROFF",), "POWEROFF"),
        "poweroff-hard": (("SHUTDOWN_POWEROFF",), "POWEROFF"),
        "reboot": (("RUNNING",), "RUNNING"), "reboot-hard": (("RUNNING",), "RUNNING"),
        "stop": (("SAVE_STOP",), "STOPPED"), "suspend": (("SAVE_SUSPEND",), "SUSPENDED"),
        "resched": (("RUNNING",), "RUNNING"), "unresched": (("RUNNING",), "RUNNING")},
    "UNKNOWN": {
        "terminate": (("SHUTDOWN",), "DONE"), "terminate-hard": (("SHUTDOWN",), "DONE"),
        "undeploy": (("SHUTDOWN_UNDEPLOY",), "UNDEPLOYED"),
        "undeploy-hard": (("SHUTDOWN_UNDEPLOY",), "UNDEPLOYED"),
        "poweroff": (("SHUTDOWN_POWEROFF",), "POWEROFF"),
        "poweroff-hard": (("SHUTDOWN_POWEROFF",), "POWEROFF"),
        "resume": (("BOOT_UNKNOWN",), "RUNNING"),
        "resched": (("UNKNOWN",), "UNKNOWN"), "unresched": (("UNKNOWN",), "UNKNOWN")},
    "POWEROFF": {
        "terminate": (("EPILOG",), "DONE"), "terminate-hard": (("EPILOG",), "DONE"),
        "undeploy": (("EPILOG_UNDEPLOY",), "UNDEPLOYED"),
        "undeploy-hard": (("EPILOG_UNDEPLOY",), "UNDEPLOYED"),
        "resume": (("BOOT_POWEROFF",), "RUNNING"),
        "resched": (("POWEROFF",), "POWEROFF"), "unresched": (("POWEROFF",), "POWEROFF")},
    "SUSPENDED": {
        "terminate": (("EPILOG",), "DONE"), "terminate-hard": (("EPILOG",), "DONE"),
        "stop": (("EPILOG_STOP",), "STOPPED"), "resume": (("BOOT_SUSPENDED",), "RUNNING")},
    "STOPPED": {
        "terminate": (("EPILOG",), "DONE"), "terminate-hard": (("EPILOG",), "DONE"),
        "resume": (("PENDING", "PROLOG_RESUME"), "RUNNING")},
    "UNDEPLOYED": {
        "terminate": (("EPILOG",), "DONE"), "terminate-hard": (("EPILOG",), "DONE"),
        "resume": (("PENDING", "PROLOG_UNDEPLOY"), "RUNNING")},
    "BOOT_FAILURE": {"terminate": (("CLEANUP_DELETE",), "DONE"),
                     "terminate-hard": (("CLEANUP_DELETE",), "DONE")},
    "BOOT": {},
    "DONE": {"terminate": (("DONE",), "DONE"), "terminate-hard": (("DONE",), "DONE")},
}

NOWHERE = 'SCHED_REQUIREMENTS = "NAME = \\"nowhere\\""\n'


def _reach(cloud: Running, start: str, count: int) -> list[int]:
    """``count`` VMs in state ``start``."""
    extra, hold, then = "", False, ""
    if start in ("PENDING", "HOLD", "DONE"):
        extra, hold = NOWHERE, start != "PENDING"
    elif start == "UNKNOWN":
        extra = 'TESTBED_FAULT = "crash-after:1.5"\n'
    elif start == "BOOT_FAILURE":
        extra = 'TESTBED_FAULT = "boot-fail"\n'
    elif start == "BOOT":
        extra = 'TESTBED_FAULT = "slow-boot:60"\n'
    elif start != "RUNNING":
        then = {"POWEROFF": "poweroff", "SUSPENDED": "suspend", "STOPPED": "stop",
                "UNDEPLOYED": "undeploy"}[start]
    ids = [cloud.one.vm.allocate(VM_TEXT + extra, hold) for _ in range(count)]
    if start == "DONE":
        for vm_id in ids:
            cloud.one.vm.action("terminate", vm_id)
    waypoint = "RUNNING" if then else start
    for vm_id in ids:
        cloud.wait_state(vm_id, *S[waypoint], timeout_s=15)
    if then:
        for vm_id in ids:
            cloud.one.vm.action(then, vm_id)
        for vm_id in ids:
            cloud.wait_state(vm_id, *S[start], timeout_s=15)
    return ids


MIGRATING_LCM = (4, 7, 8, 35)
"""MIGRATE, SAVE_MIGRATE, PROLOG_MIGRATE, BOOT_MIGRATE."""


def _refusal(action: str, vm_id: int, start: str) -> str:
    if action == "explode":
        return '[one.vm.action] Action "explode" is not supported'
    if action.startswith("terminate"):
        reason = f"Could not terminate VM {vm_id}, wrong state {start}."
    else:
        reason = f"This action is not available for state {start}"
    return f'[one.vm.action] Error performing action "{action}": {reason}'


@pytest.mark.parametrize("start", list(ACCEPTED))
def test_every_action_from(start: str, start_cloud: Callable[..., Running]) -> None:
    cloud = start_cloud(timings=SLOW_STEPS, host_cpu_pct=10_000)
    ids = _reach(cloud, start, len(ACTIONS))
    settle: list[tuple[int, str]] = []
    for action, vm_id in zip(ACTIONS, ids, strict=True):
        expected = ACCEPTED[start].get(action)
        if expected is None:
            with pytest.raises(pyone.OneActionException) as info:
                cloud.one.vm.action(action, vm_id)
            assert str(info.value) == _refusal(action, vm_id, start), action
            assert cloud.vm_state(vm_id) == S[start]
            continue
        assert cloud.one.vm.action(action, vm_id) == vm_id
        first = cloud.vm_state(vm_id)
        assert first in [S[name] for name in expected[0]], (action, first)
        settle.append((vm_id, expected[1]))
        if action == "unresched":
            assert cloud.one.vm.info(vm_id).RESCHED == 0
        elif action == "resched":
            # flagged, unless the scheduler's pass already took the flag and began a cold
            # migration to another host (it may run between the two calls, as oned's does)
            body = cloud.one.vm.info(vm_id)
            assert body.RESCHED == 1 or body.LCM_STATE in MIGRATING_LCM, (
                body.RESCHED, body.LCM_STATE)
    for vm_id, final in settle:
        cloud.wait_state(vm_id, *S[final], timeout_s=15)


def test_deploy_and_migrate_by_hand(start_cloud: Callable[..., Running]) -> None:
    cloud = start_cloud(timings=SLOW_STEPS)
    vm_id = cloud.one.vm.allocate(VM_TEXT + NOWHERE)
    with pytest.raises(pyone.OneNoExistsException, match=r"Error getting host \[7\]\."):
        cloud.one.vm.deploy(vm_id, 7)
    assert cloud.one.vm.deploy(vm_id, 1) == vm_id
    assert cloud.vm_state(vm_id) == S["PROLOG_RESUME"][:1] + (1,)  # PROLOG
    with pytest.raises(pyone.OneActionException,
                       match=r"^\[one.vm.deploy\] Deploy action is not available for state "
                             r"PROLOG$"):
        cloud.one.vm.deploy(vm_id, 0)
    cloud.wait_state(vm_id, *S["RUNNING"])
    with pytest.raises(pyone.OneActionException,
                       match=r"^\[one.vm.migrate\] VM is already running on host \[1\] "
                             r"and datastore \[0\]$"):
        cloud.one.vm.migrate(vm_id, 1, False)
    assert cloud.one.vm.migrate(vm_id, 0, True) == vm_id
    assert cloud.vm_state(vm_id) == (3, 4)  # MIGRATE
    cloud.wait_state(vm_id, *S["RUNNING"])
    vm = cloud.one.vm.info(vm_id)
    assert [h.HID for h in vm.HISTORY_RECORDS.HISTORY] == [1, 0]
    assert cloud.one.host.info(0).HOST_SHARE.RUNNING_VMS == 1
    assert cloud.one.host.info(1).HOST_SHARE.RUNNING_VMS == 0
    cloud.one.vm.migrate(vm_id, 1, False)
    assert cloud.vm_state(vm_id) == (3, 7)  # SAVE_MIGRATE
    cloud.wait_state(vm_id, *S["RUNNING"])


def test_deploy_from_hold_and_enforced_capacity(start_cloud: Callable[..., Running]) -> None:
    cloud = start_cloud(host_cpu_pct=100)
    held = cloud.one.vm.allocate(VM_TEXT, True)
    assert cloud.one.vm.deploy(held, 0) == held
    cloud.wait_state(held, *S["RUNNING"])
    big = cloud.one.vm.allocate('CPU = "2"\nMEMORY = "64"\n', True)
    with pytest.raises(pyone.OneActionException) as info:
        cloud.one.vm.deploy(big, 0, True)
    assert str(info.value) == (f"[one.vm.deploy] virtual machine [{big}] does not fit in host "
                               "[0]. Not enough CPU: 200/90")
    assert cloud.vm_state(big) == S["HOLD"]
    assert cloud.one.vm.deploy(big, 0, False) == big   # without enforce oned overcommits
    cloud.wait_state(big, *S["RUNNING"])
    assert cloud.one.host.info(0).HOST_SHARE.CPU_USAGE == 210


def test_cold_migration_of_a_suspended_vm_and_what_oned_refuses(
        start_cloud: Callable[..., Running]) -> None:
    """oned's VirtualMachineAPI::migrate: SUSPENDED and POWEROFF VMs move cold (the flag
    ``live`` makes no difference), a STOPPED one has no host and is refused; the history
    gets one record per host, the new one with action migrate, the old one keeping suspend."""
    cloud = start_cloud(timings=SLOW_STEPS, hosts=2)
    vm_id = cloud.one.vm.allocate(VM_TEXT, True)
    cloud.one.vm.deploy(vm_id, 0)
    cloud.wait_state(vm_id, *S["RUNNING"])
    cloud.one.vm.action("suspend", vm_id)
    cloud.wait_state(vm_id, *S["SUSPENDED"])
    assert cloud.one.host.status(0, 1) == 0  # host0 DISABLED
    assert cloud.one.vm.migrate(vm_id, 1, True, True) == vm_id
    assert cloud.vm_state(vm_id) == (3, 45)  # PROLOG_MIGRATE_SUSPEND
    assert cloud.one.host.info(1).HOST_SHARE.RUNNING_VMS == 1
    assert cloud.one.host.info(0).HOST_SHARE.RUNNING_VMS == 0
    cloud.wait_state(vm_id, *S["SUSPENDED"])
    records = cloud.one.vm.info(vm_id).HISTORY_RECORDS.HISTORY
    assert [(h.SEQ, h.HOSTNAME, h.HID, h.ACTION) for h in records] == [
        (0, "host0", 0, 10), (1, "host1", 1, 1)]   # suspend, then migrate
    assert records[0].ETIME >= records[0].STIME > 0 and records[1].ETIME == 0
    cloud.one.vm.action("resume", vm_id)
    cloud.wait_state(vm_id, *S["RUNNING"])
    cloud.one.vm.action("stop", vm_id)
    cloud.wait_state(vm_id, *S["STOPPED"])
    with pytest.raises(pyone.OneActionException,
                       match=r"^\[one.vm.migrate\] Migrate action is not available for state "
                             r"STOPPED$"):
        cloud.one.vm.migrate(vm_id, 0, False)
    # a STOPPED VM resumed goes back to PENDING and the scheduler skips the disabled host
    cloud.one.vm.action("resume", vm_id)
    cloud.wait_state(vm_id, *S["RUNNING"])
    assert [h.HOSTNAME for h in cloud.one.vm.info(vm_id).HISTORY_RECORDS.HISTORY] == [
        "host0", "host1", "host1"]


def test_live_migration_needs_room_when_enforced(start_cloud: Callable[..., Running]) -> None:
    cloud = start_cloud(timings=SLOW_STEPS, hosts=2, host_cpu_pct=100)
    vm_id = cloud.one.vm.allocate('CPU = "0.6"\nMEMORY = "64"\nSCHED_REQUIREMENTS = "ID = 0"\n')
    other = cloud.one.vm.allocate('CPU = "0.6"\nMEMORY = "64"\nSCHED_REQUIREMENTS = "ID = 1"\n')
    cloud.wait_state(vm_id, *S["RUNNING"])
    cloud.wait_state(other, *S["RUNNING"])
    with pytest.raises(pyone.OneActionException) as info:
        cloud.one.vm.migrate(vm_id, 1, True, True)
    assert str(info.value) == (f"[one.vm.migrate] virtual machine [{vm_id}] does not fit in "
                               "host [1]. Not enough CPU: 60/40")
    assert cloud.vm_state(vm_id) == S["RUNNING"]
    cloud.one.vm.action("terminate-hard", other)
    cloud.wait_state(other, *S["DONE"])
    assert cloud.one.vm.migrate(vm_id, 1, True, True) == vm_id
    assert cloud.vm_state(vm_id) == (3, 4)  # MIGRATE: the guest keeps running
    cloud.wait_state(vm_id, *S["RUNNING"])
    records = cloud.one.vm.info(vm_id).HISTORY_RECORDS.HISTORY
    assert [(h.HOSTNAME, h.ACTION) for h in records] == [("host0", 2), ("host1", 0)]
