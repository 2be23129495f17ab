"""PCI passthrough: hosts report devices, placement needs a free one, deploy assigns it,
the VM leaving its host frees it (oned 7.4's HostSharePCI and rank scheduler)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pyone
import pytest

from tests.cloud.conftest import VM_TEXT, Running

RUNNING = (3, 3)
DONE = (6, 0)
GPU = 'PCI = [ VENDOR = "10de", CLASS = "0302" ]\nCONTEXT = [ NETWORK = "YES" ]\n'
HOST_PCI = (("host1", "10de:20b5:0302"), ("host1", "8086:1572:0200"))



def _vmid_by_address(cloud: Running, host_id: int) -> dict[str, int]:
    raw = cloud.raw.one.host.info("oneadmin:opennebula", host_id)[1]
    found = re.findall(r"<PCI>.*?<SHORT_ADDRESS><!\[CDATA\[(.*?)\]\]></SHORT_ADDRESS>.*?"
                       r"<VMID><!\[CDATA\[(-?\d+)\]\]></VMID></PCI>", raw)
    return {address: int(vmid) for address, vmid in found}


def test_a_gpu_vm_lands_on_the_host_with_the_device_and_frees_it(
        start_cloud: Callable[..., Running]) -> None:
    cloud = start_cloud(hosts=2, host_pci=HOST_PCI)
    assert _vmid_by_address(cloud, 0) == {}
    assert _vmid_by_address(cloud, 1) == {"41:00.0": -1, "42:00.0": -1}
    vm_id = cloud.one.vm.allocate(VM_TEXT + GPU)
    cloud.wait_state(vm_id, *RUNNING)
    vm = cloud.one.vm.info(vm_id)
    assert vm.HISTORY_RECORDS.HISTORY[-1].HOSTNAME == "host1"
    pci = vm.TEMPLATE["PCI"]
    assert {k: pci[k] for k in ("ADDRESS", "SHORT_ADDRESS", "BUS", "SLOT", "FUNCTION",
                                "DOMAIN", "VENDOR", "DEVICE", "CLASS", "PCI_ID", "VM_ADDRESS",
                                "VM_BUS", "VM_SLOT")} == {
        "ADDRESS": "0000:41:00:0", "SHORT_ADDRESS": "41:00.0", "BUS": "41", "SLOT": "00",
        "FUNCTION": "0", "DOMAIN": "0000", "VENDOR": "10de", "DEVICE": "20b5",
        "CLASS": "0302", "PCI_ID": "0", "VM_ADDRESS": "01:01.0", "VM_BUS": "0x01",
        "VM_SLOT": "0x01"}
    assert vm.TEMPLATE["CONTEXT"]["PCI0_ADDRESS"] == "01:01.0"
    assert _vmid_by_address(cloud, 1) == {"41:00.0": vm_id, "42:00.0": -1}

    # the only GPU is taken: a second GPU VM waits with oned 7.4's message
    second = cloud.one.vm.allocate(VM_TEXT + GPU)
    time.sleep(0.8)
    waiting = cloud.one.vm.info(second)
    assert (waiting.STATE, waiting.LCM_STATE) == (1, 0)
    assert waiting.USER_TEMPLATE["SCHED_MESSAGE"].endswith(
        " : [HOST] Unavailable PCI devices on hosts: 0,1")

    cloud.one.vm.action("terminate", vm_id)
    cloud.wait_state(vm_id, *DONE)
    assert "ADDRESS" not in cloud.one.vm.info(vm_id).TEMPLATE["PCI"]
    cloud.wait_state(second, *RUNNING)  # the freed device goes to the waiting VM
    assert _vmid_by_address(cloud, 1) == {"41:00.0": second, "42:00.0": -1}


def test_a_request_by_address_takes_that_device(start_cloud: Callable[..., Running]) -> None:
    cloud = start_cloud(hosts=2, host_pci=HOST_PCI)
    vm_id = cloud.one.vm.allocate(VM_TEXT + 'PCI = [ SHORT_ADDRESS = "42:00.0" ]\n')
    cloud.wait_state(vm_id, *RUNNING)
    assert cloud.one.vm.info(vm_id).TEMPLATE["PCI"]["VENDOR"] == "8086"
    assert _vmid_by_address(cloud, 1) == {"41:00.0": -1, "42:00.0": vm_id}


@pytest.mark.parametrize(("pci", "message"), [
    ('PCI = [ VENDOR = "nv" ]', "Wrong Hex value for PCI attribute VENDOR"),
    ('PCI = [ VM_BUS = "0x01" ]', "SHORT_ADDRESS, DEVICE, VENDOR or CLASS must be defined "
                                  "for PCI."),
    ('PCI = [ SHORT_ADDRESS = "41:00.0", VENDOR = "10de" ]',
     "SHORT_ADDRESS cannot be set with DEVICE, VENDOR or CLASS"),
])
def test_bad_pci_requests_are_refused_at_allocate(
        cloud: Running, pci: str, message: str) -> None:
    with pytest.raises(pyone.OneInternalException, match=re.escape(message)):
        cloud.one.vm.allocate(VM_TEXT + pci)
