"""Whether a VM fits on a host, in oned's words, and oned's allocate-time checks of its size.

Why it exists apart from :mod:`vcluster.testbed.cloud.cloud`: the scheduler and the deploy
and migrate calls all ask the same question of a host's free CPU, memory and PCI devices, and
must answer it with the text oned's HostShare gives; it needs no lock and no state.
"""

from __future__ import annotations

from vcluster.testbed.cloud import pci
from vcluster.testbed.cloud.model import VM, Host
from vcluster.testbed.cloud.settings import INTERNAL, OneRequestError
from vcluster.testbed.cloud.template_parse import Template

PCI_UNAVAILABLE = "Unavailable PCI device."
"""oned's HostShare::test_pci text."""


def fits(vm: VM, host: Host) -> bool:
    return not capacity_error(vm, host)


def capacity_error(vm: VM, host: Host) -> str:
    """oned's HostShare::test_compute text, or "" if ``vm`` fits on ``host``."""
    cpu, mem_kb = int(round(vm.cpu * 100)), vm.memory_mb * 1024
    if host.free_cpu < cpu:
        return f"Not enough CPU: {cpu}/{host.free_cpu}"
    if host.free_mem_kb < mem_kb:
        return f"Not enough memory: {mem_kb}/{host.free_mem_kb}"
    if not pci.fits(vm.template.vectors("PCI"), host.pci):
        return PCI_UNAVAILABLE
    return ""


def _check_capacity_attrs(tmpl: Template) -> None:
    """oned's checks of MEMORY, CPU and VCPU at allocate time."""
    memory = tmpl.get("MEMORY")
    if not isinstance(memory, str) or not _positive(memory, integer=True):
        raise OneRequestError(INTERNAL, "MEMORY attribute must be a positive integer value.")
    cpu = tmpl.get("CPU")
    if not isinstance(cpu, str) or not _positive(cpu, integer=False):
        raise OneRequestError(INTERNAL,
                              "CPU attribute must be a positive float or integer value.")
    vcpu = tmpl.get("VCPU")
    if vcpu is not None and (not isinstance(vcpu, str) or not _positive(vcpu, integer=True)):
        raise OneRequestError(INTERNAL, "VCPU attribute must be a positive integer value.")


def _positive(text: str, *, integer: bool) -> bool:
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        return False
    return value > 0
