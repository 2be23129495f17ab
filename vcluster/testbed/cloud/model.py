"""The testbed cloud's objects: VMs, hosts, virtual networks, VM templates, and their states.

Why this exists: the XML-RPC layer, the life cycle, the scheduler and the store all talk about
the same few objects; keeping them as plain dataclasses with a JSON form (for the SQLite store)
keeps those layers apart. State numbers and names are oned's (include/VirtualMachine.h).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from vcluster.testbed.cloud.template_parse import Template

# --- VM states (VirtualMachine.h) ------------------------------------------------------

INIT, PENDING, HOLD, ACTIVE, STOPPED, SUSPENDED, DONE = 0, 1, 2, 3, 4, 5, 6
POWEROFF, UNDEPLOYED, CLONING, CLONING_FAILURE = 8, 9, 10, 11

STATE_NAMES = {0: "INIT", 1: "PENDING", 2: "HOLD", 3: "ACTIVE", 4: "STOPPED", 5: "SUSPENDED",
               6: "DONE", 7: "FAILED", 8: "POWEROFF", 9: "UNDEPLOYED", 10: "CLONING",
               11: "CLONING_FAILURE"}

LCM_NAMES = (
    "LCM_INIT PROLOG BOOT RUNNING MIGRATE SAVE_STOP SAVE_SUSPEND SAVE_MIGRATE PROLOG_MIGRATE "
    "PROLOG_RESUME EPILOG_STOP EPILOG SHUTDOWN CANCEL FAILURE CLEANUP_RESUBMIT UNKNOWN HOTPLUG "
    "SHUTDOWN_POWEROFF BOOT_UNKNOWN BOOT_POWEROFF BOOT_SUSPENDED BOOT_STOPPED CLEANUP_DELETE "
    "HOTPLUG_SNAPSHOT HOTPLUG_NIC HOTPLUG_SAVEAS HOTPLUG_SAVEAS_POWEROFF HOTPLUG_SAVEAS_SUSPENDED "
    "SHUTDOWN_UNDEPLOY EPILOG_UNDEPLOY PROLOG_UNDEPLOY BOOT_UNDEPLOY HOTPLUG_PROLOG_POWEROFF "
    "HOTPLUG_EPILOG_POWEROFF BOOT_MIGRATE BOOT_FAILURE BOOT_MIGRATE_FAILURE PROLOG_MIGRATE_FAILURE "
    "PROLOG_FAILURE EPILOG_FAILURE EPILOG_STOP_FAILURE EPILOG_UNDEPLOY_FAILURE "
    "PROLOG_MIGRATE_POWEROFF PROLOG_MIGRATE_POWEROFF_FAILURE PROLOG_MIGRATE_SUSPEND "
    "PROLOG_MIGRATE_SUSPEND_FAILURE BOOT_UNDEPLOY_FAILURE BOOT_STOPPED_FAILURE "
    "PROLOG_RESUME_FAILURE PROLOG_UNDEPLOY_FAILURE DISK_SNAPSHOT_POWEROFF "
    "DISK_SNAPSHOT_REVERT_POWEROFF DISK_SNAPSHOT_DELETE_POWEROFF DISK_SNAPSHOT_SUSPENDED "
    "DISK_SNAPSHOT_REVERT_SUSPENDED DISK_SNAPSHOT_DELETE_SUSPENDED DISK_SNAPSHOT "
    "DISK_SNAPSHOT_REVERT DISK_SNAPSHOT_DELETE PROLOG_MIGRATE_UNKNOWN "
    "PROLOG_MIGRATE_UNKNOWN_FAILURE DISK_RESIZE DISK_RESIZE_POWEROFF DISK_RESIZE_UNDEPLOYED "
    "HOTPLUG_NIC_POWEROFF HOTPLUG_RESIZE HOTPLUG_SAVEAS_UNDEPLOYED HOTPLUG_SAVEAS_STOPPED "
    "BACKUP BACKUP_POWEROFF RESTORE").split()
LCM = {name: number for number, name in enumerate(LCM_NAMES)}

FAILURE_LCM_STATES = frozenset(LCM[n] for n in (
    "BOOT_FAILURE", "BOOT_MIGRATE_FAILURE", "PROLOG_MIGRATE_FAILURE", "PROLOG_FAILURE",
    "EPILOG_FAILURE", "EPILOG_STOP_FAILURE", "EPILOG_UNDEPLOY_FAILURE",
    "PROLOG_MIGRATE_POWEROFF_FAILURE", "PROLOG_MIGRATE_SUSPEND_FAILURE",
    "BOOT_UNDEPLOY_FAILURE", "BOOT_STOPPED_FAILURE", "PROLOG_RESUME_FAILURE",
    "PROLOG_UNDEPLOY_FAILURE", "PROLOG_MIGRATE_UNKNOWN_FAILURE"))

# History ACTION values (VMActions.h, listed in vm.xsd)
ACTION_NUMBERS = {
    "none": 0, "migrate": 1, "live-migrate": 2, "shutdown": 3, "shutdown-hard": 4,
    "undeploy": 5, "undeploy-hard": 6, "hold": 7, "release": 8, "stop": 9, "suspend": 10,
    "resume": 11, "boot": 12, "delete": 13, "delete-recreate": 14, "reboot": 15,
    "reboot-hard": 16, "resched": 17, "unresched": 18, "poweroff": 19, "poweroff-hard": 20,
    "terminate": 27, "terminate-hard": 28, "deploy": 30, "update": 36, "monitor": 44,
}

# Host states (Host.h); one.host.status codes (HostAPI.h: ENABLED, DISABLED, OFFLINE)
HOST_INIT = 0
HOST_MONITORED = 2
HOST_ERROR = 3
HOST_DISABLED = 4
HOST_OFFLINE = 8
HOST_STATUS_ENABLED, HOST_STATUS_DISABLED, HOST_STATUS_OFFLINE = 0, 1, 2


def _plain(obj: Any, *skip: str) -> dict[str, Any]:
    """The dataclass's own fields as a dict (no deep copy of the skipped, large ones)."""
    return {f.name: getattr(obj, f.name) for f in fields(obj) if f.name not in skip}


def state_str(state: int, lcm_state: int) -> str:
    """oned's VirtualMachine::state_str(): the LCM name while ACTIVE, else the state name."""
    if state == ACTIVE:
        return LCM_NAMES[lcm_state] if lcm_state < len(LCM_NAMES) else str(lcm_state)
    return STATE_NAMES.get(state, str(state))


def now_s() -> int:
    return int(time.time())


@dataclass
class History:
    seq: int
    hid: int
    hostname: str
    vm_mad: str
    tm_mad: str = "ssh"
    ds_id: int = 0
    cid: int = 0
    stime: int = 0
    etime: int = 0
    pstime: int = 0
    petime: int = 0
    rstime: int = 0
    retime: int = 0
    estime: int = 0
    eetime: int = 0
    action: int = 0
    uid: int = -1
    gid: int = -1
    request_id: str = "-1"


@dataclass
class VM:
    vm_id: int
    name: str
    uid: int
    gid: int
    uname: str
    gname: str
    template: Template
    user_template: Template
    state: int = PENDING
    lcm_state: int = 0
    prev_state: int = PENDING
    prev_lcm_state: int = 0
    resched: int = 0
    stime: int = field(default_factory=now_s)
    etime: int = 0
    deploy_id: str = ""
    last_poll: int = 0
    history: list[History] = field(default_factory=list)
    token: str = ""
    epoch: int = 0
    """Incremented on every state change; timers carry it so stale ones are ignored."""

    @property
    def perms(self) -> tuple[int, ...]:
        """A VM's permissions: oned's default 600 (the testbed has no one.vm.chmod)."""
        return (1, 1, 0, 0, 0, 0, 0, 0, 0)

    @property
    def hid(self) -> int:
        return self.history[-1].hid if self.history else -1

    def set_state(self, state: int, lcm_state: int = 0) -> None:
        self.prev_state, self.prev_lcm_state = self.state, self.lcm_state
        self.state, self.lcm_state = state, lcm_state
        self.epoch += 1

    @property
    def state_name(self) -> str:
        return state_str(self.state, self.lcm_state)

    @property
    def cpu(self) -> float:
        try:
            return float(self.template.get_str("CPU", "0") or 0)
        except ValueError:
            return 0.0

    @property
    def memory_mb(self) -> int:
        try:
            return int(self.template.get_str("MEMORY", "0") or 0)
        except ValueError:
            return 0

    def to_json(self) -> dict[str, Any]:
        data = _plain(self, "template", "user_template", "history")
        data["history"] = [asdict(h) for h in self.history]
        data["template"] = self.template.to_dict()
        data["user_template"] = self.user_template.to_dict()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VM:
        data = dict(data)
        data["template"] = Template.from_dict(data["template"])
        data["user_template"] = Template.from_dict(data["user_template"])
        data["history"] = [History(**h) for h in data["history"]]
        return cls(**data)


@dataclass
class Host:
    host_id: int
    name: str
    im_mad: str
    vm_mad: str
    max_cpu: int
    """Percent: 100 per core."""
    max_mem_kb: int
    cluster_id: int = 0
    cluster: str = "default"
    state: int = HOST_MONITORED
    prev_state: int = HOST_MONITORED
    template: Template = field(default_factory=Template)
    vm_ids: list[int] = field(default_factory=list)
    cpu_usage: int = 0
    mem_usage_kb: int = 0
    pci: list[dict[str, str]] = field(default_factory=list)
    """HOST_SHARE/PCI_DEVICES: monitored devices, each with the VMID holding it (-1 free)."""

    @property
    def free_cpu(self) -> int:
        return self.max_cpu - self.cpu_usage

    @property
    def free_mem_kb(self) -> int:
        return self.max_mem_kb - self.mem_usage_kb

    def attribute(self, name: str) -> str | None:
        """A host attribute as SCHED_REQUIREMENTS / SCHED_RANK see it."""
        builtin = {
            "ID": self.host_id, "NAME": self.name, "FREE_CPU": self.free_cpu,
            "FREE_MEM": self.free_mem_kb, "FREE_MEMORY": self.free_mem_kb,
            "MAX_CPU": self.max_cpu, "MAX_MEM": self.max_mem_kb, "CPU_USAGE": self.cpu_usage,
            "MEM_USAGE": self.mem_usage_kb, "RUNNING_VMS": len(self.vm_ids),
            "CLUSTER_ID": self.cluster_id, "CLUSTER": self.cluster, "STATE": self.state,
            "IM_MAD": self.im_mad, "VM_MAD": self.vm_mad,
        }
        if name in builtin:
            return str(builtin[name])
        value = self.template.get(name)
        return value if isinstance(value, str) else None

    def to_json(self) -> dict[str, Any]:
        data = _plain(self, "template")
        data["vm_ids"] = list(self.vm_ids)
        data["pci"] = [dict(d) for d in self.pci]
        data["template"] = self.template.to_dict()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Host:
        data = dict(data)
        data["template"] = Template.from_dict(data["template"])
        return cls(**data)


@dataclass
class AddressRange:
    ar_id: int
    ip_start: str
    size: int
    next_index: int = 0


@dataclass
class VNet:
    vnet_id: int
    name: str
    bridge: str
    network_address: str
    netmask: str
    gateway: str
    dns: str
    template: Template
    ars: list[AddressRange] = field(default_factory=list)
    uid: int = 0
    gid: int = 0
    uname: str = "oneadmin"
    gname: str = "oneadmin"
    vn_mad: str = "bridge"
    perms: tuple[int, ...] = (1, 1, 0, 0, 0, 0, 0, 0, 0)
    """OWNER_U/M/A, GROUP_U/M/A, OTHER_U/M/A (oned's default UMASK 177: 600)."""
    leases: dict[str, int] = field(default_factory=dict)
    """Leased IP -> VM id (persisted in the store's lease table, not in the JSON body)."""

    def to_json(self) -> dict[str, Any]:
        data = _plain(self, "template", "leases", "ars")
        data["ars"] = [asdict(ar) for ar in self.ars]
        data["template"] = self.template.to_dict()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VNet:
        data = dict(data)
        data["template"] = Template.from_dict(data["template"])
        data["ars"] = [AddressRange(**ar) for ar in data["ars"]]
        data["perms"] = tuple(data.get("perms", (1, 1, 0, 0, 0, 0, 0, 0, 0)))
        return cls(**data)


@dataclass
class VMTemplate:
    tmpl_id: int
    name: str
    template: Template
    uid: int = 0
    gid: int = 0
    uname: str = "oneadmin"
    gname: str = "oneadmin"
    regtime: int = field(default_factory=now_s)
    perms: tuple[int, ...] = (1, 1, 0, 0, 0, 0, 0, 0, 0)

    def to_json(self) -> dict[str, Any]:
        data = _plain(self, "template")
        data["template"] = self.template.to_dict()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VMTemplate:
        data = dict(data)
        data["template"] = Template.from_dict(data["template"])
        data["perms"] = tuple(data.get("perms", (1, 1, 0, 0, 0, 0, 0, 0, 0)))
        return cls(**data)
