"""The dummy driver remembers its VMs across a restart of the testbed server, at a cost per
change that does not grow with the number of VMs."""

from __future__ import annotations

from pathlib import Path

from vcluster.testbed.cloud.drivers.base import VMSpec
from vcluster.testbed.cloud.drivers.dummy import DummyDriver


def _spec(vm_id: int) -> VMSpec:
    return VMSpec(vm_id=vm_id, name=f"vm-{vm_id}", cpu=1.0, memory_mb=512, nics=(),
                  context={})


def test_vms_running_suspended_and_shut_down_survive_a_restart(tmp_path: Path) -> None:
    driver = DummyDriver(tmp_path)
    for vm_id in (1, 2, 3):
        driver.boot(_spec(vm_id))
    driver.suspend(2)
    driver.shutdown(3)

    again = DummyDriver(tmp_path)  # the server restarted

    assert again.alive(1) and again.alive(2) and not again.alive(3)
    again.resume(2)  # still known, and known as suspended before
    assert DummyDriver(tmp_path).alive(2)


def test_a_change_appends_one_line_and_the_journal_stays_bounded(tmp_path: Path) -> None:
    driver = DummyDriver(tmp_path)
    driver.boot(_spec(1))
    journal = tmp_path / "dummy-vms.journal"
    size_one = journal.stat().st_size
    for vm_id in range(2, 200):
        driver.boot(_spec(vm_id))
    # a line per change, not the whole state rewritten: the 199th boot wrote as much as the 1st
    assert journal.stat().st_size < 200 * size_one * 1.1
    for vm_id in range(2, 2000):
        driver.shutdown(vm_id)
        driver.boot(_spec(vm_id))
    lines = len(journal.read_text().splitlines()) if journal.exists() else 0
    assert lines <= max(256, 2 * 1999) + 1  # folded into the state file as it grows
    assert all(DummyDriver(tmp_path).alive(v) for v in (1, 2, 1999))


def test_a_line_torn_by_a_crash_is_ignored(tmp_path: Path) -> None:
    driver = DummyDriver(tmp_path)
    driver.boot(_spec(1))
    driver.boot(_spec(2))
    with (tmp_path / "dummy-vms.journal").open("a") as out:
        out.write('[3, {"state": "runn')  # the server died mid-write

    again = DummyDriver(tmp_path)

    assert again.alive(1) and again.alive(2) and not again.alive(3)
