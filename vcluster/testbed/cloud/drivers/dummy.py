"""The ``dummy`` VM driver: no processes at all, only the bookkeeping a real driver would have.

Why this exists: scale tests and benchmarks need thousands of VMs that boot and die on
command without namespaces or root. The server simulates the time each step takes; this
driver remembers which VMs "run" (in a small JSON file under the state dir, so that they
survive a server restart like real processes would: each change is one line appended to a
journal beside it, folded into the file at start and whenever the journal outgrows the VMs,
so a change costs the same with 10 VMs or 10,000; rewriting the whole file at each change
made a 1,000-VM burst quadratic) and applies the fault injection of
:mod:`vcluster.testbed.cloud.drivers.base`: ``boot-fail`` makes ``boot`` raise,
``crash-after:N`` makes ``alive`` turn false N seconds after boot (slow-boot is timed by the
server).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from vcluster.testbed.cloud.drivers.base import DriverError, VMSpec


class DummyDriver:
    """Timings-only driver; state file ``<state_dir>/dummy-vms.json`` and its journal
    ``dummy-vms.journal`` (one ``[vm_id, entry or null]`` JSON line per change)."""

    name = "dummy"

    def __init__(self, state_dir: Path) -> None:
        self._path = state_dir / "dummy-vms.json"
        self._journal = state_dir / "dummy-vms.journal"
        self._lock = threading.Lock()
        self._vms: dict[int, dict[str, object]] = {}
        self._journal_lines = 0
        if self._path.exists():
            raw = json.loads(self._path.read_text())
            self._vms = {int(k): v for k, v in raw.items()}
        if self._journal.exists():
            for line in self._journal.read_text().splitlines():
                try:
                    vm_id, entry = json.loads(line)
                except ValueError:  # a line torn by a crash mid-write: the last one
                    break
                if entry is None:
                    self._vms.pop(int(vm_id), None)
                else:
                    self._vms[int(vm_id)] = entry
            self._compact()

    def _compact(self) -> None:
        """The VMs in the state file, the journal emptied (the file first: a crash between
        the two replays changes already in the file, which is harmless)."""
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps({str(k): v for k, v in self._vms.items()}))
        os.replace(tmp, self._path)
        self._journal.unlink(missing_ok=True)
        self._journal_lines = 0

    def _save(self, vm_id: int) -> None:
        """Record VM ``vm_id``'s change (called with the lock held)."""
        with self._journal.open("a") as out:
            out.write(json.dumps([vm_id, self._vms.get(vm_id)]) + "\n")
        self._journal_lines += 1
        if self._journal_lines > max(256, 2 * len(self._vms)):
            self._compact()

    def boot(self, spec: VMSpec) -> None:
        if spec.fault.boot_fail:
            raise DriverError(f"VM {spec.vm_id} failed to boot (TESTBED_FAULT boot-fail)")
        crash_at = None
        if spec.fault.crash_after_s is not None:
            crash_at = time.time() + spec.fault.crash_after_s
        with self._lock:
            self._vms[spec.vm_id] = {"state": "running", "crash_at": crash_at}
            self._save(spec.vm_id)

    def shutdown(self, vm_id: int, *, hard: bool = False) -> None:
        with self._lock:
            if self._vms.pop(vm_id, None) is not None:
                self._save(vm_id)

    def poweroff(self, vm_id: int, *, hard: bool = False) -> None:
        self.shutdown(vm_id, hard=hard)

    def suspend(self, vm_id: int) -> None:
        self._set_state(vm_id, "suspended")

    def resume(self, vm_id: int) -> None:
        self._set_state(vm_id, "running")

    def _set_state(self, vm_id: int, state: str) -> None:
        with self._lock:
            entry = self._vms.get(vm_id)
            if entry is None:
                raise DriverError(f"VM {vm_id} is not running on this host")
            entry["state"] = state
            self._save(vm_id)

    def alive(self, vm_id: int) -> bool:
        with self._lock:
            entry = self._vms.get(vm_id)
        if entry is None:
            return False
        crash_at = entry.get("crash_at")
        return not (isinstance(crash_at, (int, float)) and time.time() >= crash_at)

    def cleanup_stale(self, known_vm_ids: set[int]) -> None:
        with self._lock:
            stale = [vm_id for vm_id in self._vms if vm_id not in known_vm_ids]
            for vm_id in stale:
                del self._vms[vm_id]
            if stale:
                self._compact()
