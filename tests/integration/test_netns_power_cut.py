"""The netns driver stops VMs as a hypervisor does, against the real kernel.

A hard poweroff or shutdown is a power cut: no process of the VM gets a signal it can act on
(a job's slurmstepd would otherwise report "killed by SIGTERM"), frozen or not. A soft one is
an ACPI shutdown (SIGTERM first). Either way nothing of the VM survives, not even a process
that left its cgroup and network namespace but still holds its mount namespace.

Instance ``vcpc<slot>`` (VCLUSTER_TEST_SLOT), subnet 10.(119+10*slot).0.0/24, so two runs on
one machine do not meet.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vcluster.testbed import netns
from vcluster.testbed.cloud.drivers.base import Fault, Nic, VMSpec
from vcluster.testbed.cloud.drivers.netns import FREEZER_ROOT, NetnsDriver

pytestmark = pytest.mark.integration

_SLOT = int(os.environ.get("VCLUSTER_TEST_SLOT", "0") or "0")
PREFIX = f"vcpc{_SLOT}"
BRIDGE = f"{PREFIX}br0"
NET = f"10.{119 + 10 * _SLOT}.0"
GATEWAY = f"{NET}.1"
ESCAPED: list[subprocess.Popen[bytes]] = []

# a "job" that says whether it was asked to stop
GUEST = """#!/bin/sh
cat > /run/job.sh <<'END'
trap 'echo TERM >> "$OUT/signals"; exit 143' TERM
echo $$ > "$OUT/job.pid"
echo started >> "$OUT/signals"
while :; do sleep 0.1; done
END
sh /run/job.sh </dev/null >/dev/null 2>&1 &
"""


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def leftovers() -> list[str]:
    found = [f"namespace {n}" for n in netns.list_hosts(f"{PREFIX}-")]
    found += [f"link {n}" for n in netns.list_links(f"{PREFIX}-")]
    found += [f"cgroup {p.name}" for p in FREEZER_ROOT.glob(f"{PREFIX}-*")]
    return found


def wipe() -> None:
    for cgroup in FREEZER_ROOT.glob(f"{PREFIX}-*"):
        (cgroup / "freezer.state").write_text("THAWED")
        netns.terminate_pids([int(p) for p in (cgroup / "cgroup.procs").read_text().split()], 2)
    netns.cleanup_prefix(f"{PREFIX}-", bridge=BRIDGE, kill_timeout_s=2.0)
    for cgroup in FREEZER_ROOT.glob(f"{PREFIX}-*"):
        cgroup.rmdir()


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[NetnsDriver]:
    if os.geteuid() != 0:
        pytest.skip("namespaces need root")
    wipe()
    netns.ensure_bridge(BRIDGE, f"{GATEWAY}/24")
    drv = NetnsDriver(tmp_path / "state", PREFIX, stop_timeout_s=3.0)
    try:
        yield drv
    finally:
        while ESCAPED:
            proc = ESCAPED.pop()
            proc.kill()
            proc.wait()
        wipe()


def boot(driver: NetnsDriver, vm_id: int, out: Path) -> None:
    out.mkdir()
    os.chmod(out, 0o777)
    ip = f"{NET}.{vm_id}"
    context = {"SET_HOSTNAME": f"{PREFIX}-node{vm_id}", "NETWORK": "YES", "ETH0_IP": ip,
               "VMID": str(vm_id), "OUT": str(out),
               "START_SCRIPT_BASE64": base64.b64encode(GUEST.encode()).decode()}
    nic = Nic(0, "net", BRIDGE, ip, "", "255.255.255.0", GATEWAY)
    driver.boot(VMSpec(vm_id, f"one-{vm_id}", 1.0, 256, (nic,), context, "", Fault()))
    wait_for(lambda: (out / "signals").exists(), 10, "the guest's job")


def escape(out: Path) -> subprocess.Popen[bytes]:
    """A process only in the VM's mount namespace: the host's network namespace and cgroup."""
    job = int((out / "job.pid").read_text())
    proc = subprocess.Popen(["nsenter", "-t", str(job), "-m", "--", "sleep", "600"],
                            start_new_session=True)
    ESCAPED.append(proc)
    wait_for(lambda: os.readlink(f"/proc/{proc.pid}/ns/mnt")
             == os.readlink(f"/proc/{job}/ns/mnt"), 5, "the escaped process")
    return proc


@pytest.mark.parametrize("op", ["poweroff", "shutdown"])
@pytest.mark.parametrize("frozen", [False, True])
def test_a_hard_stop_is_a_power_cut_and_leaves_nothing(
        driver: NetnsDriver, tmp_path: Path, op: str, frozen: bool) -> None:
    out = tmp_path / "out"
    boot(driver, 11, out)
    escaped = escape(out).pid
    if frozen:
        driver.suspend(11)
    started = time.monotonic()
    getattr(driver, op)(11, hard=True)
    assert time.monotonic() - started < 3.0
    assert (out / "signals").read_text() == "started\n", "the job was told, not cut"
    assert not running(escaped), "a process in the VM's mount namespace survived"
    assert not driver.alive(11)
    assert leftovers() == []
    assert driver.vm_dir(11).is_dir() == (op == "poweroff")


def test_a_soft_shutdown_sends_term_first(driver: NetnsDriver, tmp_path: Path) -> None:
    out = tmp_path / "out"
    boot(driver, 12, out)
    escaped = escape(out).pid
    driver.shutdown(12)
    assert (out / "signals").read_text() == "started\nTERM\n"
    assert not running(escaped)
    assert leftovers() == []


def test_leftovers_of_a_vm_never_block_the_next_boot_of_its_id(
        driver: NetnsDriver, tmp_path: Path) -> None:
    boot(driver, 13, tmp_path / "out1")
    driver.suspend(13)
    first = escape(tmp_path / "out1").pid
    # booting the same VM again (a crash recovered by `resume`) cuts whatever is left first
    boot(driver, 13, tmp_path / "out2")
    assert not running(first)
    assert (tmp_path / "out1" / "signals").read_text() == "started\n"
    driver.shutdown(13, hard=True)
    assert leftovers() == []
