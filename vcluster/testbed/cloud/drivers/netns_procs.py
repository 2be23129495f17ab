"""A netns testbed VM's kernel objects by name, and every process of it: find, freeze, kill.

Why it exists apart from :mod:`vcluster.testbed.cloud.drivers.netns`: the driver boots, wires
and stops VMs; this names each VM's objects and reaches all of its processes (freezer cgroup,
network namespace, mount namespace) to freeze, thaw or kill them, which is what makes sure
nothing of a stopped VM survives.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

from vcluster.testbed import netns
from vcluster.testbed.cloud.drivers.base import DriverError

FREEZER_ROOT = Path("/sys/fs/cgroup/freezer")


class VmObjects:
    """The names of a VM's kernel objects and its processes (what
    :class:`~vcluster.testbed.cloud.drivers.netns.NetnsDriver` is built on; it sets these
    attributes)."""

    state_dir: Path
    prefix: str
    stop_timeout_s: float
    freeze_timeout_s: float

    # --- names -----------------------------------------------------------------------------

    def netns_name(self, vm_id: int) -> str:
        return f"{self.prefix}-vm{vm_id}"

    def veth_name(self, vm_id: int) -> str:
        return f"{self.prefix}-v{vm_id}"

    def cgroup_dir(self, vm_id: int) -> Path:
        return FREEZER_ROOT / f"{self.prefix}-vm{vm_id}"

    def vm_dir(self, vm_id: int) -> Path:
        return self.state_dir / f"vm{vm_id}"

    def console_log(self, vm_id: int) -> Path:
        return self.vm_dir(vm_id) / "console.log"

    # --- stopping --------------------------------------------------------------------------

    def _remove_cgroup(self, vm_id: int) -> None:
        cgroup = self.cgroup_dir(vm_id)
        deadline = time.monotonic() + 3.0
        while cgroup.exists():
            try:
                cgroup.rmdir()
            except FileNotFoundError:
                return
            except OSError as err:
                if err.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise DriverError(
                        f"VM {vm_id}: cannot remove cgroup {cgroup}: {err.strerror}; "
                        f"processes left: {self._pids(vm_id)}"
                    ) from err
                time.sleep(0.1)

    def _cut_power(self, vm_id: int) -> None:
        """SIGKILL every process of the VM at once, while still frozen if it is (none runs
        another instruction), then thaw so the kills land; again for any forked meanwhile."""
        deadline = time.monotonic() + self.stop_timeout_s
        while pids := self._pids(vm_id):
            for pid in pids:
                _signal(pid, signal.SIGKILL)
            self._write_freezer(vm_id, "THAWED")
            if time.monotonic() > deadline:
                raise DriverError(f"VM {vm_id}: processes {pids} survive SIGKILL")
            time.sleep(0.05)

    # --- processes and the freezer ---------------------------------------------------------

    def _pids(self, vm_id: int) -> list[int]:
        """Live processes of the VM: its freezer cgroup's tasks, ``ip netns pids``, and every
        process in its mount namespace (one that left both still holds the VM's mounts)."""
        pids = set(netns.pids_in(self.netns_name(vm_id))) | set(self._cgroup_pids(vm_id))
        pids |= set(self._mount_ns_pids(vm_id))
        return sorted(pid for pid in pids if _running(pid) and pid != os.getpid())

    def _mount_ns_pids(self, vm_id: int) -> list[int]:
        try:
            ns = (self.vm_dir(vm_id) / "mntns").read_text().strip()
        except OSError:
            return []
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.readlink(f"/proc/{entry}/ns/mnt") == ns:
                        found.append(int(entry))
                except OSError:
                    continue
        return found

    def _cgroup_pids(self, vm_id: int) -> list[int]:
        try:
            text = (self.cgroup_dir(vm_id) / "cgroup.procs").read_text()
        except FileNotFoundError:
            return []
        return [int(word) for word in text.split()]

    def _set_freezer(self, vm_id: int, state: str) -> None:
        if not self.cgroup_dir(vm_id).is_dir():
            raise DriverError(f"VM {vm_id} is not running (no cgroup {self.cgroup_dir(vm_id)})")
        self._write_freezer(vm_id, state)
        deadline = time.monotonic() + self.freeze_timeout_s
        state_file = self.cgroup_dir(vm_id) / "freezer.state"
        while state_file.read_text().strip() != state:
            if time.monotonic() > deadline:
                raise DriverError(
                    f"VM {vm_id} did not reach {state} within {self.freeze_timeout_s:g} s "
                    f"(freezer.state is {state_file.read_text().strip()})"
                )
            time.sleep(0.05)

    def _write_freezer(self, vm_id: int, state: str) -> None:
        try:
            (self.cgroup_dir(vm_id) / "freezer.state").write_text(state)
        except FileNotFoundError:
            pass


def _running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
