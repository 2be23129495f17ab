"""Hosts, virtual networks (with their IP leases) and VM templates of the testbed cloud.

Why this exists: these are the pools a VM draws on: a host gives it CPU and memory, a network
gives each NIC an address (MAC = 02:00 + the IP's four bytes, as OpenNebula does), and a
template is what ``one.template.instantiate`` starts from (the extra template replaces stored
attributes of the same name). Split from :mod:`cloud` to keep each module readable; the
:class:`~vcluster.testbed.cloud.cloud.Cloud` inherits it and provides the lock and store.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from vcluster.testbed.cloud import pci
from vcluster.testbed.cloud.model import (
    HOST_DISABLED,
    HOST_MONITORED,
    HOST_OFFLINE,
    HOST_STATUS_DISABLED,
    HOST_STATUS_ENABLED,
    HOST_STATUS_OFFLINE,
    VM,
    AddressRange,
    Host,
    VMTemplate,
    VNet,
)
from vcluster.testbed.cloud.settings import (
    ALLOCATE,
    AUTHORIZATION,
    INTERNAL,
    CloudSettings,
    OneRequestError,
    not_found,
)
from vcluster.testbed.cloud.template_parse import Template
from vcluster.testbed.cloud.xmlgen import mac_for_ip

if TYPE_CHECKING:
    from vcluster.testbed.cloud.store import Store


class Resources:
    """Mixin: the pools other than VMs. Callers hold ``self.lock``."""

    settings: CloudSettings
    store: Store
    lock: threading.RLock
    vms: dict[int, VM]

    def __init__(self) -> None:
        self.on_host_state_change: Callable[[Host], None] = lambda host: None
        """Set by the server when events are on: called (under the lock) when a host's
        state changes, as oned hands its hook manager an event."""
        self.hosts: dict[int, Host] = {}
        self.vnets: dict[int, VNet] = {}
        self.templates: dict[int, VMTemplate] = {}

    def allocate_vm(self, tmpl: Template, *, hold: bool, name: str = "",
                    template_id: int | None = None) -> int:
        raise NotImplementedError  # provided by Cloud

    # provided by accounts.Accounts (mixed into Cloud)
    users: dict[int, Any]
    caller: Any
    owner_fields: Callable[[], dict[str, Any]]
    check: Callable[[str, Any, int, int], None]

    def load_resources(self) -> None:
        self.hosts = {h.host_id: h for h in self.store.load_hosts()}
        self.vnets = {v.vnet_id: v for v in self.store.load_vnets()}
        self.templates = {t.tmpl_id: t for t in self.store.load_templates()}
        if not self.hosts:
            for i in range(self.settings.hosts):
                self.allocate_host(f"host{i}", "dummy", self.settings.driver)
        self._monitor_pci()
        if not self.vnets:
            self._create_default_vnet()

    # --- hosts -------------------------------------------------------------------------

    def get_host(self, host_id: int) -> Host:
        host = self.hosts.get(host_id)
        if host is None:
            raise not_found("host", host_id)
        return host

    def allocate_host(self, name: str, im_mad: str, vm_mad: str, cluster_id: int = 0) -> int:
        with self.lock:
            for host in self.hosts.values():
                if host.name == name:
                    raise OneRequestError(
                        INTERNAL, f"NAME is already taken by HOST {host.host_id}.")
            host_id = self.store.next_id("host")
            tmpl = Template([("ARCH", "x86_64"), ("CPUSPEED", "2000"), ("HOSTNAME", name),
                             ("HYPERVISOR", vm_mad), ("IM_MAD", im_mad),
                             ("RESERVED_CPU", ""), ("RESERVED_MEM", ""), ("VM_MAD", vm_mad)])
            host = Host(host_id=host_id, name=name, im_mad=im_mad, vm_mad=vm_mad,
                        max_cpu=self.settings.host_cpu_pct,
                        max_mem_kb=self.settings.host_mem_kb,
                        cluster_id=max(cluster_id, 0), template=tmpl)
            self.hosts[host_id] = host
            self.store.put_host(host)
            return host_id

    def _monitor_pci(self) -> None:
        """Each host's PCI_DEVICES as its monitoring reports them (``settings.host_pci``)."""
        for host in self.hosts.values():
            specs = [spec for name, spec in self.settings.host_pci if name == host.name]
            reported = [pci.host_device(i, *pci.parse_device_spec(spec))
                        for i, spec in enumerate(specs)]
            host.pci = pci.monitor(host.pci, reported)
            self.store.put_host(host)

    def host_status(self, host_id: int, status: int) -> int:
        """``one.host.status`` as oned 7.4 (HostAPI::status): enable, disable or set the host
        offline; its VMs are left as they are. Only a MONITORED host takes new VMs; an
        enabled host is monitored at once (the testbed's monitor is instant)."""
        with self.lock:
            host = self.get_host(host_id)
            if status == HOST_STATUS_ENABLED:
                state = HOST_MONITORED
            elif status == HOST_STATUS_DISABLED:
                state = HOST_DISABLED
            elif status == HOST_STATUS_OFFLINE:
                state = HOST_OFFLINE
            else:
                raise OneRequestError(INTERNAL, "Wrong status code")
            host.prev_state, host.state = host.state, state
            self.store.put_host(host)
            if host.prev_state != state:
                self.on_host_state_change(host)
            return host_id

    # --- virtual networks --------------------------------------------------------------

    def _create_default_vnet(self) -> None:
        net = self.settings.network
        subnet = ipaddress.ip_network(net.subnet, strict=False)
        gateway = net.gateway or str(subnet.network_address + 1)
        first = subnet.network_address + net.lease_start
        size = int(subnet.broadcast_address) - int(first)
        text = Template([("NAME", net.name), ("BRIDGE", net.bridge), ("VN_MAD", "bridge"),
                         ("NETWORK_ADDRESS", str(subnet.network_address)),
                         ("NETWORK_MASK", str(subnet.netmask)), ("GATEWAY", gateway),
                         ("DNS", net.dns or gateway),
                         ("AR", {"TYPE": "IP4", "IP": str(first), "SIZE": str(size)})])
        self.allocate_vnet(text)

    def get_vnet(self, vnet_id: int) -> VNet:
        vnet = self.vnets.get(vnet_id)
        if vnet is None:
            raise not_found("vnet", vnet_id)
        return vnet

    def allocate_vnet(self, tmpl: Template) -> int:
        name = tmpl.get_str("NAME")
        if not name:
            raise OneRequestError(INTERNAL, "No NAME in template for Virtual Network.")
        with self.lock:
            for vnet in self.vnets.values():
                if vnet.name == name and vnet.uid == self.caller.uid:
                    raise OneRequestError(
                        INTERNAL, f"NAME is already taken by NET {vnet.vnet_id}.")
            if not tmpl.get_str("VN_MAD"):
                raise OneRequestError(INTERNAL, "No VN_MAD in template for Virtual Network.")
            bridge = tmpl.get_str("BRIDGE")
            ars = []
            for i, ar in enumerate(tmpl.vectors("AR")):
                try:
                    ipaddress.IPv4Address(ar.get("IP", ""))
                    size = int(ar.get("SIZE", "0"))
                except ValueError:
                    raise OneRequestError(INTERNAL, "Wrong IP or SIZE in address range.") \
                        from None
                ars.append(AddressRange(ar_id=i, ip_start=ar["IP"], size=size))
            vnet_id = self.store.next_id("vnet")
            stored = Template([(n, v) for n, v in tmpl.attrs if n not in ("NAME", "AR")])
            vnet = VNet(**self.owner_fields(), vnet_id=vnet_id, name=name,
                        bridge=bridge or f"onebr{vnet_id}",
                        network_address=tmpl.get_str("NETWORK_ADDRESS"),
                        netmask=tmpl.get_str("NETWORK_MASK"), gateway=tmpl.get_str("GATEWAY"),
                        dns=tmpl.get_str("DNS"), template=stored, ars=ars,
                        vn_mad=tmpl.get_str("VN_MAD"))
            self.vnets[vnet_id] = vnet
            self.store.put_vnet(vnet)
            return vnet_id

    def _find_vnet(self, nic: dict[str, str]) -> VNet:
        """The NIC's network, by NETWORK_ID or NETWORK name (oned's VirtualNetworkPool texts)."""
        if "NETWORK_ID" in nic:
            vnet_id = nic["NETWORK_ID"]
            found = self.vnets.get(int(vnet_id)) if vnet_id.lstrip("-").isdigit() else None
            if found is None:
                raise OneRequestError(INTERNAL, f"Virtual network {vnet_id} does not exist")
            return found
        name = nic.get("NETWORK", "")
        uid = self._nic_uid(nic)
        for vnet in self.vnets.values():
            if vnet.name == name and vnet.uid == uid:
                return vnet
        raise OneRequestError(
            INTERNAL, f"User {uid} does not own a network with name: {name} . Set "
            "NETWORK_UNAME or NETWORK_UID of owner in NIC.")

    def _nic_uid(self, nic: dict[str, str]) -> int:
        """oned's VirtualMachineNic::get_uid: NETWORK_UID, NETWORK_UNAME, else the VM's
        owner (the requesting user)."""
        if nic.get("NETWORK_UID"):
            text = nic["NETWORK_UID"].strip()
            if not text.lstrip("-").isdigit():
                raise OneRequestError(INTERNAL, "Cannot get user in NETWORK_UID")
            return int(text)
        if nic.get("NETWORK_UNAME"):
            user = next((u for u in self.users.values() if u.name == nic["NETWORK_UNAME"]),
                        None)
            if user is None:
                raise OneRequestError(INTERNAL, "User set in NETWORK_UNAME does not exist")
            return user.uid
        return self.caller.uid

    def lease_nics(self, vm: VM) -> list[tuple[int, str]]:
        """Give every NIC of ``vm`` an address; returns the (vnet_id, ip) pairs leased."""
        leased: list[tuple[int, str]] = []
        nics = []
        try:
            for nic_id, value in enumerate(v for n, v in vm.template.attrs if n == "NIC"):
                nic = dict(value) if isinstance(value, dict) else {}
                vnet = self._find_vnet(nic)
                self.check("vnet", vnet, vnet.vnet_id, 0)  # USE NET, as VM allocate asks
                ip = self._lease(vnet, vm.vm_id, nic.get("IP", ""))
                leased.append((vnet.vnet_id, ip))
                nic.update({
                    "AR_ID": "0", "BRIDGE": vnet.bridge, "BRIDGE_TYPE": "linux",
                    "CLUSTER_ID": "0", "IP": ip, "MAC": mac_for_ip(ip), "NAME": f"NIC{nic_id}",
                    "NETWORK": vnet.name, "NETWORK_ID": str(vnet.vnet_id),
                    "NETWORK_UNAME": vnet.uname,
                    "NIC_ID": str(nic_id), "SECURITY_GROUPS": "0",
                    "TARGET": f"one-{vm.vm_id}-{nic_id}", "VN_MAD": vnet.vn_mad})
                for key in ("GATEWAY", "DNS", "NETWORK_ADDRESS", "NETWORK_MASK"):
                    if getattr(vnet, _VNET_FIELDS[key]):
                        nic[key] = getattr(vnet, _VNET_FIELDS[key])
                nics.append(nic)
        except OneRequestError:
            self.release_leases(vm, leased)
            raise
        vm.template.remove("NIC")
        for nic in nics:
            vm.template.add("NIC", nic)
        return leased

    def _lease(self, vnet: VNet, vm_id: int, wanted: str) -> str:
        for ar in vnet.ars:
            start = int(ipaddress.IPv4Address(ar.ip_start))
            # like oned, look from the last leased index on (wrapping), not from the start
            candidates: Iterable[int] = (
                start + (ar.next_index + i) % ar.size for i in range(ar.size))
            if wanted:
                value = int(ipaddress.IPv4Address(wanted))
                candidates = [value] if start <= value < start + ar.size else []
            for value in candidates:
                ip = str(ipaddress.IPv4Address(value))
                if ip not in vnet.leases:
                    vnet.leases[ip] = vm_id
                    ar.next_index = value - start + 1
                    self.store.add_lease(vnet.vnet_id, ip, vm_id)
                    self.store.put_vnet(vnet)
                    return ip
        if wanted:
            raise OneRequestError(INTERNAL, f"IP {wanted} is already in use or not in any "
                                  f"address range of virtual network [{vnet.vnet_id}].")
        raise OneRequestError(INTERNAL, f"Cannot get IP/MAC lease from virtual network "
                              f"[{vnet.vnet_id}].")

    def release_leases(self, vm: VM, leased: list[tuple[int, str]] | None) -> None:
        for vnet in self.vnets.values():
            for ip in [ip for ip, owner in vnet.leases.items() if owner == vm.vm_id]:
                if leased is None or (vnet.vnet_id, ip) in leased:
                    del vnet.leases[ip]
        self.store.release_leases(vm.vm_id)

    # --- VM templates ------------------------------------------------------------------

    def get_template(self, tmpl_id: int) -> VMTemplate:
        tmpl = self.templates.get(tmpl_id)
        if tmpl is None:
            raise not_found("template", tmpl_id)
        return tmpl

    def delete_template(self, tmpl_id: int) -> int:
        """oned's TemplateDelete (not recursive: the template only)."""
        self.get_template(tmpl_id)
        del self.templates[tmpl_id]
        self.store.delete_template(tmpl_id)
        return tmpl_id

    def update_template(self, tmpl_id: int, tmpl: Template, append: int) -> int:
        """oned's TemplateUpdateTemplate: replace (0) or merge into (1) the template's body;
        its NAME changes only through rename, so one given here is dropped."""
        with self.lock:
            vmt = self.get_template(tmpl_id)
            update = tmpl.copy()
            update.remove("NAME")
            if append == 1:
                vmt.template.merge(update)
            else:
                vmt.template = update
            self.store.put_template(vmt)
            return tmpl_id

    def allocate_template(self, tmpl: Template) -> int:
        with self.lock:
            name = tmpl.get_str("NAME")
            check_name(name, required=True)  # VMTemplatePool::allocate: before duplicates
            for existing in self.templates.values():
                if existing.name == name and existing.uid == self.caller.uid:
                    raise OneRequestError(
                        INTERNAL, f"NAME is already taken by TEMPLATE {existing.tmpl_id}.")
            tmpl_id = self.store.next_id("template")
            stored = tmpl.copy()
            stored.remove("NAME")
            vmt = VMTemplate(tmpl_id=tmpl_id, name=name, template=stored,
                             **self.owner_fields())
            self.templates[tmpl_id] = vmt
            self.store.put_template(vmt)
            return tmpl_id

    def instantiate(self, tmpl_id: int, name: str, *, hold: bool, extra: Template) -> int:
        with self.lock:
            stored = self.get_template(tmpl_id)
            self.check("template", stored, tmpl_id, 0)  # USE TEMPLATE
            merged = stored.template.copy()
            merged.merge(extra)
            vm_name = name or ""
            try:
                vm_id = self.allocate_vm(merged, hold=hold, name=vm_name,
                                         template_id=tmpl_id)
            except OneRequestError as exc:
                if exc.code == AUTHORIZATION:  # USE NET: VM allocate's authorization step
                    raise
                # oned names the method's own object (the template) in ALLOCATE messages
                raise OneRequestError(
                    ALLOCATE, f"Error allocating a new virtual machine template. {exc.message}"
                ) from None
            if not vm_name and not extra.get_str("NAME"):
                vm = self.vms[vm_id]
                vm.name = f"{stored.name}-{vm_id}"
                self.store.put_vm(vm)
            return vm_id


INVALID_NAME_CHARS = "&|:\\\";/'#{}$<>\t\n\v\f\r"
"""oned's PoolObjectSQL::INVALID_NAME_CHARS."""


def check_name(name: str, *, required: bool) -> None:
    """oned's PoolObjectSQL::name_is_valid (INTERNAL errors); an empty name passes when
    not ``required`` (oned then names the object itself, e.g. a VM ``one-<id>``)."""
    if not name:
        if required:
            raise OneRequestError(INTERNAL, "Invalid NAME, it cannot be empty")
        return
    bad = next((c for c in name if c in INVALID_NAME_CHARS), None)
    if bad is not None:
        raise OneRequestError(INTERNAL, f"Invalid NAME, char '{bad}' is not allowed")
    if len(name) > 128:
        raise OneRequestError(INTERNAL, "Invalid NAME, max length is 128 chars")


_VNET_FIELDS = {"GATEWAY": "gateway", "DNS": "dns", "NETWORK_ADDRESS": "network_address",
                "NETWORK_MASK": "netmask"}
