"""PCI passthrough as oned 7.4 does it: host devices, the VM's requests, assignment.

Why this exists: a GPU node class asks oned for ``PCI = [ VENDOR=..., CLASS=... ]`` (or
``SHORT_ADDRESS``). oned checks the request at allocate (``check_pci_attributes``: hex ids,
SHORT_ADDRESS alone or at least one id), numbers it (``PCI_ID``) and gives it the default
passthrough bus (``VM_BUS``); its scheduler keeps only hosts whose monitored
``HOST_SHARE/PCI_DEVICES`` hold a free matching device (``VMID`` -1), else the VM stays
PENDING with ``[HOST] Unavailable PCI devices on hosts: ...``; at deploy the host share
assigns one (``HostSharePCI::add``: by address first, then by vendor/device/class), copies
its address into the VM's PCI attribute with the guest address (VM_BUS, VM_SLOT,
VM_ADDRESS), and frees it again (``HostSharePCI::del``) when the VM leaves the host.

The testbed's hosts declare devices from settings (``--pci host0=10de:20b5:0302``) in the
form oned's ``pci.rb`` probe reports them; no device exists for real.
"""

from __future__ import annotations

from vcluster.testbed.cloud.template_parse import Template

PCI_PASSTHROUGH_BUS = "0x01"
"""oned.conf's ``PCI_PASSTHROUGH_BUS`` (its documented value), the default VM_BUS."""

_NAMES = {"10de": "NVIDIA Corporation", "1002": "Advanced Micro Devices, Inc. [AMD/ATI]",
          "8086": "Intel Corporation"}
_CLASS_NAMES = {"0300": "VGA compatible controller", "0302": "3D controller",
                "0200": "Ethernet controller", "1200": "Processing accelerators"}
_COPIED = ("DOMAIN", "BUS", "SLOT", "FUNCTION", "ADDRESS", "SHORT_ADDRESS", "VENDOR", "DEVICE",
           "CLASS")
"""What HostSharePCI::pci_attribute copies from the host device into the VM's request."""


class PciError(ValueError):
    """A PCI request oned refuses at allocate, with oned's text."""


def parse_device_spec(text: str) -> tuple[str, str, str]:
    """``VENDOR:DEVICE:CLASS`` (4 hex digits each) as a host declares it."""
    parts = text.strip().lower().split(":")
    if len(parts) != 3 or not all(len(p) == 4 and _hex(p) is not None for p in parts):
        raise ValueError(f"{text!r} is not VENDOR:DEVICE:CLASS such as 10de:20b5:0302")
    return parts[0], parts[1], parts[2]


def host_device(index: int, vendor: str, device: str, pci_class: str) -> dict[str, str]:
    """The ``index``-th device of a host, as ``pci.rb`` reports it (free: VMID -1)."""
    bus, slot, function = f"{0x41 + index:02x}", "00", "0"
    vendor_name = _NAMES.get(vendor, "")
    return {
        "TYPE": f"{vendor}:{device}:{pci_class}", "VENDOR": vendor, "VENDOR_NAME": vendor_name,
        "DEVICE": device, "DEVICE_NAME": f"{vendor_name} Device {device}".strip(),
        "CLASS": pci_class, "CLASS_NAME": _CLASS_NAMES.get(pci_class, "Device"),
        "ADDRESS": f"0000:{bus}:{slot}:{function}", "SHORT_ADDRESS": f"{bus}:{slot}.{function}",
        "DOMAIN": "0000", "BUS": bus, "SLOT": slot, "FUNCTION": function,
        "NUMA_NODE": "-", "IFNAME": "-", "SRIOV": "no", "VMID": "-1",
    }


def _hex(text: str) -> int | None:
    try:
        return int(text, 16)
    except ValueError:
        return None


def _ids(request: dict[str, str]) -> dict[str, int]:
    """The request's VENDOR/DEVICE/CLASS as numbers (get_pci_value: empty = not given)."""
    return {k: v for k in ("VENDOR", "DEVICE", "CLASS")
            if request.get(k) and (v := _hex(request[k])) is not None}


def check_requests(tmpl: Template) -> None:
    """oned's parse_pci + check_pci_attributes at allocate: PCI_ID, VM_BUS, or refusal."""
    for pci_id, request in enumerate(tmpl.vectors("PCI")):
        request["PCI_ID"] = str(pci_id)
    for request in tmpl.vectors("PCI"):
        found = False
        for key in ("VENDOR", "DEVICE", "CLASS"):
            value = request.get(key, "")
            if value and _hex(value) is None:
                raise PciError(f"Wrong Hex value for PCI attribute {key}")
            found = found or bool(value)
        short = request.get("SHORT_ADDRESS", "")
        if not short and not found:
            raise PciError("SHORT_ADDRESS, DEVICE, VENDOR or CLASS must be defined for PCI.")
        if short and found:
            raise PciError("SHORT_ADDRESS cannot be set with DEVICE, VENDOR or CLASS")
        if not request.get("VM_BUS"):
            request["VM_BUS"] = PCI_PASSTHROUGH_BUS
        for key in ("DOMAIN", "BUS", "SLOT", "FUNCTION", "ADDRESS", "PREV_ADDRESS",
                    "NUMA_NODE", "UUID", "MDEV_MODE"):
            request.pop(key, None)


def _by_address(request: dict[str, str]) -> bool:
    return bool(request.get("SHORT_ADDRESS")) and not _ids(request)


def _matches(request: dict[str, str], device: dict[str, str]) -> bool:
    ids = _ids(request)
    return bool(ids) and all(_hex(device.get(k, "")) == v for k, v in ids.items())


def _pick(requests: list[dict[str, str]], devices: list[dict[str, str]]
          ) -> list[tuple[dict[str, str], dict[str, str]]] | None:
    """HostSharePCI::test/add: each request a free device, address requests first."""
    taken: set[str] = set()
    pairs: list[tuple[dict[str, str], dict[str, str]]] = []
    ordered = ([r for r in requests if _by_address(r)]
               + [r for r in requests if not _by_address(r)])
    for request in ordered:
        if _by_address(request):
            device = next((d for d in devices
                           if d["SHORT_ADDRESS"] == request["SHORT_ADDRESS"]), None)
            if device is None or device["VMID"] != "-1" or device["SHORT_ADDRESS"] in taken:
                return None
        else:
            device = next((d for d in devices if d["VMID"] == "-1"
                           and d["SHORT_ADDRESS"] not in taken and _matches(request, d)), None)
            if device is None:
                return None
        taken.add(device["SHORT_ADDRESS"])
        pairs.append((request, device))
    return pairs


def fits(requests: list[dict[str, str]], devices: list[dict[str, str]]) -> bool:
    """True when the host's free devices can serve every request."""
    return not requests or _pick(requests, devices) is not None


def assign(requests: list[dict[str, str]], devices: list[dict[str, str]], vm_id: int) -> None:
    """Take a device for each request (the caller checked :func:`fits`)."""
    for request, device in _pick(requests, devices) or []:
        device["VMID"] = str(vm_id)
        if request.get("ADDRESS"):
            request["PREV_ADDRESS"] = request["ADDRESS"]
        for key in _COPIED:
            request[key] = device[key]
        _set_guest_address(request)


def release(requests: list[dict[str, str]], devices: list[dict[str, str]], vm_id: int) -> None:
    """HostSharePCI::del: the VM's devices on this host are free again."""
    by_address = {d["ADDRESS"]: d for d in devices}
    for request in requests:
        for key in ("PREV_ADDRESS", "ADDRESS"):
            device = by_address.get(request.get(key, ""))
            if device is not None and device["VMID"] == str(vm_id):
                device["VMID"] = "-1"
                request.pop(key, None)
                break


def _set_guest_address(request: dict[str, str]) -> None:
    """set_pci_address, flat topology, not q35: slot PCI_ID + 1 on VM_BUS."""
    bus = _hex(request.get("VM_BUS", PCI_PASSTHROUGH_BUS)) or 1
    slot = int(request.get("PCI_ID", "0") or 0) + 1
    request["VM_DOMAIN"] = "0x0000"
    request["VM_FUNCTION"] = "0"
    request["VM_SLOT"] = f"{slot:#04x}"
    request["VM_BUS"] = f"{bus:#04x}"
    request["VM_ADDRESS"] = f"{bus:02x}:{slot:02x}.0"


def monitor(devices: list[dict[str, str]], reported: list[dict[str, str]]
            ) -> list[dict[str, str]]:
    """HostSharePCI::set_monitorization: reported devices, keeping the VMID of those known;
    a device no longer reported stays while a VM holds it."""
    known = {d["ADDRESS"]: d for d in devices}
    out = [known.pop(r["ADDRESS"]) if r["ADDRESS"] in known else dict(r) for r in reported]
    return out + [d for d in known.values() if d["VMID"] != "-1"]
