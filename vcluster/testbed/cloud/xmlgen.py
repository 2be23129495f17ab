"""XML bodies exactly as oned writes them: element order, CDATA values, short and full VMs.

Why this exists: pyone parses these bodies into generated classes, and vcluster reads fields by
name; oned's element order is the official schemas' order (``share/doc/xsd``), templates are
written as sorted CDATA elements, and ``one.vmpool.info`` returns *short* VMs that keep only a
few USER_TEMPLATE attributes. No namespace: oned's XML has none.
"""

from __future__ import annotations

from collections.abc import Iterable
from xml.sax.saxutils import escape

from vcluster.testbed.cloud.model import VM, Host, VMTemplate, VNet, now_s
from vcluster.testbed.cloud.template_parse import Template, _attr_xml, cdata, template_xml

VM_PERMISSIONS = (1, 1, 0, 0, 0, 0, 0, 0, 0)
SHORT_USER_TEMPLATE_KEEP = ("LABELS", "ERROR", "USER_PRIORITY")
SHORT_NIC_KEEP = ("IP", "IP6", "IP6_GLOBAL", "IP6_LINK", "IP6_ULA", "MAC", "NETWORK",
                  "NETWORK_ID", "NIC_ID", "SECURITY_GROUPS")


def _e(tag: str, value: object) -> str:
    return f"<{tag}>{escape(str(value))}</{tag}>"


def permissions_xml(bits: tuple[int, ...] = VM_PERMISSIONS) -> str:
    names = ("OWNER_U", "OWNER_M", "OWNER_A", "GROUP_U", "GROUP_M", "GROUP_A",
             "OTHER_U", "OTHER_M", "OTHER_A")
    return "<PERMISSIONS>" + "".join(_e(n, b) for n, b in zip(names, bits, strict=True)) + \
        "</PERMISSIONS>"


def _ids(tag: str, ids: Iterable[int]) -> str:
    inner = "".join(_e("ID", i) for i in ids)
    return f"<{tag}>{inner}</{tag}>" if inner else f"<{tag}/>"


def _monitoring(vm: VM) -> str:
    if not vm.last_poll:
        return "<MONITORING/>"
    memory_kb = vm.memory_mb * 1024
    return ("<MONITORING>" + _e("CPU", "0.0") + _e("ID", vm.vm_id) + _e("MEMORY", memory_kb)
            + _e("TIMESTAMP", vm.last_poll) + "</MONITORING>")


def vm_xml(vm: VM, *, all_history: bool = True) -> str:
    """The full VM: one.vm.info (every history record), one.vmpool.infoextended (the last)."""
    parts = [
        _e("ID", vm.vm_id), _e("UID", vm.uid), _e("GID", vm.gid), _e("UNAME", vm.uname),
        _e("GNAME", vm.gname), _e("NAME", vm.name), permissions_xml(),
        _e("LAST_POLL", vm.last_poll), _e("STATE", vm.state), _e("LCM_STATE", vm.lcm_state),
        _e("PREV_STATE", vm.prev_state), _e("PREV_LCM_STATE", vm.prev_lcm_state),
        _e("RESCHED", vm.resched), _e("STIME", vm.stime), _e("ETIME", vm.etime),
        _e("DEPLOY_ID", vm.deploy_id), _monitoring(vm), "<SCHED_ACTIONS/>",
        template_xml(vm.template, "TEMPLATE"),
        template_xml(vm.user_template, "USER_TEMPLATE"),
    ]
    records = []
    for h in vm.history if all_history else vm.history[-1:]:
        records.append(
            "<HISTORY>" + _e("OID", vm.vm_id) + _e("SEQ", h.seq) + _e("HOSTNAME", h.hostname)
            + _e("HID", h.hid) + _e("CID", h.cid) + _e("STIME", h.stime) + _e("ETIME", h.etime)
            + _e("VM_MAD", h.vm_mad) + _e("TM_MAD", h.tm_mad) + _e("DS_ID", h.ds_id)
            + _e("PLAN_ID", -1) + _e("ACTION_ID", -1)
            + _e("PSTIME", h.pstime) + _e("PETIME", h.petime) + _e("RSTIME", h.rstime)
            + _e("RETIME", h.retime) + _e("ESTIME", h.estime) + _e("EETIME", h.eetime)
            + _e("ACTION", h.action) + _e("UID", h.uid) + _e("GID", h.gid)
            + _e("REQUEST_ID", h.request_id) + "</HISTORY>")
    parts.append("<HISTORY_RECORDS>" + "".join(records) + "</HISTORY_RECORDS>"
                 if records else "<HISTORY_RECORDS/>")
    parts.append("<BACKUPS><BACKUP_CONFIG/><BACKUP_IDS/></BACKUPS>")
    return "<VM>" + "".join(parts) + "</VM>"


def vm_short_xml(vm: VM) -> str:
    """The short VM of one.vmpool.info: no CONTEXT, no custom USER_TEMPLATE attributes."""
    # oned writes CPU and MEMORY of the short TEMPLATE as plain text, not CDATA
    tmpl_parts = [_e("CPU", vm.template.get_str("CPU")),
                  _e("MEMORY", vm.template.get_str("MEMORY"))]
    if vm.template.has("VCPU"):
        tmpl_parts.append(_e("VCPU", vm.template.get_str("VCPU")))
    for name in ("DISK", "NIC"):
        for vec in vm.template.vectors(name):
            kept = {k: v for k, v in vec.items() if name == "DISK" or k in SHORT_NIC_KEEP}
            inner = "".join(f"<{k}>{cdata(v)}</{k}>" for k, v in sorted(kept.items()))
            tmpl_parts.append(f"<{name}>{inner}</{name}>")
    graphics = vm.template.get("GRAPHICS")
    if isinstance(graphics, dict):
        inner = "".join(f"<{k}>{cdata(v)}</{k}>" for k, v in sorted(graphics.items()))
        tmpl_parts.append(f"<GRAPHICS>{inner}</GRAPHICS>")
    user = Template([(n, v) for n, v in vm.user_template.attrs
                     if n in SHORT_USER_TEMPLATE_KEEP or n.startswith("SCHED_")])
    parts = [
        _e("ID", vm.vm_id), _e("UID", vm.uid), _e("GID", vm.gid), _e("UNAME", vm.uname),
        _e("GNAME", vm.gname), _e("NAME", vm.name), _e("LAST_POLL", vm.last_poll),
        _e("STATE", vm.state), _e("LCM_STATE", vm.lcm_state), _e("RESCHED", vm.resched),
        _e("STIME", vm.stime), _e("ETIME", vm.etime), _e("DEPLOY_ID", vm.deploy_id),
        "<TEMPLATE>" + "".join(tmpl_parts) + "</TEMPLATE>", _monitoring(vm),
        template_xml(user, "USER_TEMPLATE"),
    ]
    if vm.history:
        h = vm.history[-1]
        parts.append(
            "<HISTORY_RECORDS><HISTORY>" + _e("OID", vm.vm_id) + _e("SEQ", h.seq)
            + _e("HOSTNAME", h.hostname) + _e("HID", h.hid) + _e("CID", h.cid)
            + _e("DS_ID", h.ds_id) + _e("VM_MAD", h.vm_mad) + _e("TM_MAD", h.tm_mad)
            + _e("ACTION", h.action) + "</HISTORY></HISTORY_RECORDS>")
    else:
        parts.append("<HISTORY_RECORDS/>")
    return "<VM>" + "".join(parts) + "</VM>"


def vm_pool_xml(vms: Iterable[VM], *, extended: bool) -> str:
    if extended:
        return "<VM_POOL>" + "".join(vm_xml(vm, all_history=False) for vm in vms) + \
            "</VM_POOL>"
    return "<VM_POOL>" + "".join(vm_short_xml(vm) for vm in vms) + "</VM_POOL>"


def host_xml(host: Host) -> str:
    share = (
        "<HOST_SHARE>" + _e("MEM_USAGE", host.mem_usage_kb) + _e("CPU_USAGE", host.cpu_usage)
        + _e("TOTAL_MEM", host.max_mem_kb) + _e("TOTAL_CPU", host.max_cpu)
        + _e("MAX_MEM", host.max_mem_kb) + _e("MAX_CPU", host.max_cpu)
        + _e("RUNNING_VMS", len(host.vm_ids)) + _e("VMS_THREAD", 1)
        + "<DATASTORES>" + _e("DISK_USAGE", 0) + _e("FREE_DISK", 0) + _e("MAX_DISK", 0)
        + _e("USED_DISK", 0) + "</DATASTORES>"
        + ("<PCI_DEVICES>" + "".join(_attr_xml("PCI", d) for d in host.pci) + "</PCI_DEVICES>"
           if host.pci else "<PCI_DEVICES/>")
        + "<NUMA_NODES/></HOST_SHARE>")
    monitoring = (
        "<MONITORING>" + _e("TIMESTAMP", now_s()) + _e("ID", host.host_id) + "<CAPACITY>"
        + _e("FREE_CPU", host.free_cpu) + _e("FREE_MEMORY", host.free_mem_kb)
        + _e("USED_CPU", host.cpu_usage) + _e("USED_MEMORY", host.mem_usage_kb)
        + "</CAPACITY><SYSTEM>" + _e("NETRX", 0) + _e("NETTX", 0) + "</SYSTEM></MONITORING>")
    return (
        "<HOST>" + _e("ID", host.host_id) + _e("NAME", host.name) + _e("STATE", host.state)
        + _e("PREV_STATE", host.prev_state) + _e("IM_MAD", host.im_mad)
        + _e("VM_MAD", host.vm_mad) + _e("CLUSTER_ID", host.cluster_id)
        + _e("CLUSTER", host.cluster) + share + _ids("VMS", host.vm_ids)
        + template_xml(host.template, "TEMPLATE") + monitoring + "</HOST>")


def host_pool_xml(hosts: Iterable[Host]) -> str:
    return "<HOST_POOL>" + "".join(host_xml(h) for h in hosts) + "</HOST_POOL>"


def mac_for_ip(ip: str) -> str:
    """OpenNebula's default MAC for an IPv4 lease: 02:00 followed by the IP's four bytes."""
    return "02:00:" + ":".join(f"{int(part):02x}" for part in ip.split("."))


def _ar_xml(vnet: VNet, *, full: bool) -> str:
    ars = []
    for ar in vnet.ars:
        used = {ip: vm for ip, vm in vnet.leases.items() if _in_ar(ip, ar.ip_start, ar.size)}
        parts = [f"<AR_ID>{cdata(str(ar.ar_id))}</AR_ID>", f"<IP>{cdata(ar.ip_start)}</IP>",
                 f"<MAC>{cdata(mac_for_ip(ar.ip_start))}</MAC>",
                 f"<NEXT_INDEX>{cdata(str(ar.next_index))}</NEXT_INDEX>",
                 f"<SIZE>{cdata(str(ar.size))}</SIZE>", f"<TYPE>{cdata('IP4')}</TYPE>"]
        if full:
            last_ip = _ip_add(ar.ip_start, ar.size - 1)
            parts += [f"<MAC_END>{cdata(mac_for_ip(last_ip))}</MAC_END>",
                      f"<IP_END>{cdata(last_ip)}</IP_END>",
                      f"<USED_LEASES>{cdata(str(len(used)))}</USED_LEASES>"]
            leases = "".join(
                "<LEASE>" + _e("IP", ip) + _e("MAC", mac_for_ip(ip)) + _e("VM", vm) + "</LEASE>"
                for ip, vm in sorted(used.items(), key=lambda kv: _ip_int(kv[0])))
            parts.append(f"<LEASES>{leases}</LEASES>" if leases else "<LEASES/>")
        ars.append("<AR>" + "".join(parts) + "</AR>")
    return "<AR_POOL>" + "".join(ars) + "</AR_POOL>"


def _ip_int(ip: str) -> int:
    a, b, c, d = (int(x) for x in ip.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


def _ip_add(ip: str, offset: int) -> str:
    value = _ip_int(ip) + offset
    return ".".join(str((value >> s) & 255) for s in (24, 16, 8, 0))


def _in_ar(ip: str, start: str, size: int) -> bool:
    return 0 <= _ip_int(ip) - _ip_int(start) < size


def vnet_xml(vnet: VNet, *, full: bool = True) -> str:
    return (
        "<VNET>" + _e("ID", vnet.vnet_id) + _e("UID", vnet.uid) + _e("GID", vnet.gid)
        + _e("UNAME", vnet.uname) + _e("GNAME", vnet.gname) + _e("NAME", vnet.name)
        + permissions_xml(vnet.perms) + _ids("CLUSTERS", [0])
        + _e("BRIDGE", vnet.bridge) + _e("BRIDGE_TYPE", "linux") + _e("STATE", 1)
        + _e("PREV_STATE", 1) + _e("PARENT_NETWORK_ID", "") + _e("TEMPLATE_ID", -1)
        + _e("VN_MAD", vnet.vn_mad) + _e("PHYDEV", "") + _e("VLAN_ID", "")
        + _e("OUTER_VLAN_ID", "") + _e("VLAN_ID_AUTOMATIC", 0)
        + _e("OUTER_VLAN_ID_AUTOMATIC", 0) + _e("USED_LEASES", len(vnet.leases))
        + "<VROUTERS/><UPDATED_VMS/><OUTDATED_VMS/><UPDATING_VMS/><ERROR_VMS/>"
        + template_xml(vnet.template, "TEMPLATE") + _ar_xml(vnet, full=full) + "</VNET>")


def vnet_pool_xml(vnets: Iterable[VNet]) -> str:
    return "<VNET_POOL>" + "".join(vnet_xml(v, full=False) for v in vnets) + "</VNET_POOL>"


def vmtemplate_xml(tmpl: VMTemplate) -> str:
    return (
        "<VMTEMPLATE>" + _e("ID", tmpl.tmpl_id) + _e("UID", tmpl.uid) + _e("GID", tmpl.gid)
        + _e("UNAME", tmpl.uname) + _e("GNAME", tmpl.gname) + _e("NAME", tmpl.name)
        + permissions_xml(tmpl.perms) + _e("REGTIME", tmpl.regtime)
        + template_xml(tmpl.template, "TEMPLATE") + "</VMTEMPLATE>")


def vmtemplate_pool_xml(tmpls: Iterable[VMTemplate]) -> str:
    return "<VMTEMPLATE_POOL>" + "".join(vmtemplate_xml(t) for t in tmpls) + \
        "</VMTEMPLATE_POOL>"


def config_xml(values: dict[str, str]) -> str:
    tmpl = Template([(k, v) for k, v in values.items()])
    return template_xml(tmpl, "OPENNEBULA_CONFIGURATION")
