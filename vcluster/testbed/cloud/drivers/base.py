"""The contract between the testbed's VM life cycle and the drivers that run VMs.

The server owns the state machine (STATE / LCM_STATE, simulated transition times); a driver
only does the real work at the moments the state machine asks for it, and reports whether a
VM's processes are still alive (monitoring). Driver calls are made outside any database
transaction, from the server's worker thread, one at a time per VM.

Fault injection: a VM whose template (TEMPLATE or USER_TEMPLATE) has ``TESTBED_FAULT`` gets
that fault. Values (comma-separated, several allowed):

- ``boot-fail``      -- ``boot`` raises :class:`DriverError`; the VM goes to BOOT_FAILURE.
- ``crash-after:N``  -- the VM's processes die N seconds after it reached RUNNING;
                        monitoring then moves it to UNKNOWN.
- ``slow-boot:N``    -- BOOT lasts N extra seconds.
- ``join-refused``   -- (netns) the guest is given a join token no controller issued, so the
                        controller's join endpoint refuses it and the guest's join fails the
                        way a real one does (a testbed-only knob: oned has no such thing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class DriverError(Exception):
    """The driver could not do what was asked; the message becomes the VM's error text."""


@dataclass(frozen=True)
class Nic:
    """One leased address of a VM on a virtual network."""

    nic_id: int
    network: str
    bridge: str
    ip: str
    mac: str
    netmask: str
    gateway: str = ""
    dns: str = ""


@dataclass(frozen=True)
class Fault:
    boot_fail: bool = False
    crash_after_s: float | None = None
    slow_boot_s: float = 0.0
    join_refused: bool = False

    @classmethod
    def parse(cls, text: str | None) -> Fault:
        """Parse a ``TESTBED_FAULT`` value; raise ValueError on a value it cannot read."""
        boot_fail, crash, slow, join_refused = False, None, 0.0, False
        for item in (text or "").split(","):
            item = item.strip().lower()
            if not item:
                continue
            if item == "boot-fail":
                boot_fail = True
            elif item.startswith("crash-after:"):
                crash = float(item.split(":", 1)[1])
            elif item.startswith("slow-boot:"):
                slow = float(item.split(":", 1)[1])
            elif item == "join-refused":
                join_refused = True
            else:
                raise ValueError(f"unknown TESTBED_FAULT {item!r}")
        return cls(boot_fail, crash, slow, join_refused)


@dataclass(frozen=True)
class VMSpec:
    """What a driver needs to run one VM."""

    vm_id: int
    name: str
    cpu: float
    memory_mb: int
    nics: tuple[Nic, ...]
    context: dict[str, str]
    """The VM's CONTEXT after ``$VAR`` expansion and oned's additions (ETHn_*, VMID, ...)."""
    token: str = ""
    """OneGate token (token.txt), when CONTEXT has TOKEN=YES."""
    fault: Fault = field(default_factory=Fault)
    image_source: str = ""
    """SOURCE of the VM's first DISK (an image of the datastore), "" without one."""


class VMDriver(Protocol):
    name: str

    def boot(self, spec: VMSpec) -> None:
        """Start the VM (BOOT, BOOT_POWEROFF, BOOT_UNKNOWN...). Raise DriverError on failure."""

    def shutdown(self, vm_id: int, *, hard: bool = False) -> None:
        """Stop the VM for good and free everything it holds, frozen or not: nothing of it
        may survive (its next VM for the same node must not meet it). ``hard``: a power cut
        (no signal the guest could act on); else an ACPI shutdown. Idempotent."""

    def suspend(self, vm_id: int) -> None:
        """Freeze the VM's processes (SAVE_SUSPEND; SAVE_STOP: its memory saved)."""

    def resume(self, vm_id: int) -> None:
        """Thaw a suspended VM (BOOT_SUSPENDED; BOOT_STOPPED: its saved memory restored)."""

    def poweroff(self, vm_id: int, *, hard: bool = False) -> None:
        """Stop the VM's processes (frozen ones too) but keep its identity (disk, IP lease);
        ``hard`` as for :meth:`shutdown`. Idempotent."""

    def alive(self, vm_id: int) -> bool:
        """Monitoring: are the VM's processes running?"""

    def cleanup_stale(self, known_vm_ids: set[int]) -> None:
        """At server start: remove leftovers of VMs not in ``known_vm_ids`` (by own naming)."""
