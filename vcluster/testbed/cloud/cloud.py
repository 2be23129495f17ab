"""The cloud's core: VMs and what the API does to them, under one lock, written through to SQLite.

Why this exists: every XML-RPC call, timer, scheduler pass and monitoring probe changes the
same objects; this class owns them (with :mod:`resources` for hosts, networks and templates)
and applies oned's rules: allocate (known attributes to TEMPLATE, the rest to USER_TEMPLATE,
NIC leases, CONTEXT), actions through :mod:`lifecycle`, deploy/migrate with history records
and host capacity. Driver calls never happen here, only in :mod:`engine`, outside the lock.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable

from vcluster.testbed.cloud import lifecycle, pci
from vcluster.testbed.cloud.accounts import Accounts
from vcluster.testbed.cloud.context import build_context
from vcluster.testbed.cloud.drivers.base import Fault, Nic, VMDriver, VMSpec
from vcluster.testbed.cloud.host_capacity import (
    PCI_UNAVAILABLE,
    _check_capacity_attrs,
    capacity_error,
    fits,
)
from vcluster.testbed.cloud.images import Images
from vcluster.testbed.cloud.lifecycle import HOLDS_HOST, ActionRefused
from vcluster.testbed.cloud.model import (
    ACTION_NUMBERS,
    ACTIVE,
    DONE,
    HOLD,
    LCM,
    PENDING,
    STOPPED,
    UNDEPLOYED,
    VM,
    History,
    Host,
    now_s,
)
from vcluster.testbed.cloud.resources import Resources, check_name
from vcluster.testbed.cloud.settings import (
    ACTION,
    INTERNAL,
    CloudSettings,
    OneRequestError,
    not_found,
)
from vcluster.testbed.cloud.store import Store
from vcluster.testbed.cloud.template_parse import Template

__all__ = [  # host capacity (host_capacity.py) with the cloud's own names, as the scheduler
    # imports them from here
    "AUTOMATIC_REQUIREMENTS", "BOOT_STATES", "EPILOG_STATES", "KNOWN_ATTRIBUTES",
    "PCI_UNAVAILABLE", "PROLOG_STATES", "Cloud", "capacity_error", "fits", "log_time",
]

log = logging.getLogger(__name__)

# Attributes oned keeps in a VM's TEMPLATE (vm.xsd); everything else is USER_TEMPLATE.
KNOWN_ATTRIBUTES = frozenset("""
AUTOMATIC_DS_REQUIREMENTS AUTOMATIC_NIC_REQUIREMENTS AUTOMATIC_REQUIREMENTS CLONING_TEMPLATE_ID
CONTEXT CPU CPU_COST DISK DISK_COST EMULATOR FEATURES HYPERV_OPTIONS GRAPHICS VIDEO IMPORTED INPUT
MEMORY MEMORY_COST MEMORY_MAX MEMORY_SLOTS MEMORY_RESIZE_MODE NIC NIC_ALIAS NIC_DEFAULT NUMA_NODE
OS PCI QEMU_GA_EXEC RAW SECURITY_GROUP_RULE SNAPSHOT SPICE_OPTIONS SUBMIT_ON_HOLD TEMPLATE_ID
TM_MAD_SYSTEM TOPOLOGY TPM MEMORY_ENCRYPTION VCPU VCPU_MAX VMGROUP VMID VROUTER_ID
VROUTER_KEEPALIVED_ID VROUTER_KEEPALIVED_PASSWORD SCHED_ACTION""".split())

AUTOMATIC_REQUIREMENTS = "!(PUBLIC_CLOUD = YES) & !(PIN_POLICY = PINNED)"
PROLOG_STATES = frozenset(LCM[n] for n in ("PROLOG", "PROLOG_RESUME", "PROLOG_UNDEPLOY",
                                           "PROLOG_MIGRATE", "PROLOG_MIGRATE_POWEROFF",
                                           "PROLOG_MIGRATE_SUSPEND", "PROLOG_MIGRATE_UNKNOWN"))
BOOT_STATES = frozenset(LCM[n] for n in ("BOOT", "BOOT_STOPPED", "BOOT_UNDEPLOY",
                                         "BOOT_POWEROFF", "BOOT_UNKNOWN", "BOOT_SUSPENDED",
                                         "BOOT_MIGRATE", "MIGRATE"))
EPILOG_STATES = frozenset(LCM[n] for n in ("EPILOG", "EPILOG_STOP", "EPILOG_UNDEPLOY"))


def log_time() -> str:
    """oned's one_util::log_time(): ``Sat Nov 21 06:20:29 2026``."""
    return time.strftime("%a %b %d %H:%M:%S %Y")


class Cloud(Images, Resources, Accounts):
    """All objects of the testbed cloud and the operations the API performs on them."""

    def __init__(self, settings: CloudSettings, store: Store, driver: VMDriver) -> None:
        self.settings = settings
        self.store = store
        self.driver = driver
        self.lock = threading.RLock()
        self.vms: dict[int, VM] = {}
        self.on_phase: Callable[[VM], None] = lambda vm: None
        """Set by the engine: called (under the lock) when a VM enters a timed phase."""
        self.on_pending: Callable[[], None] = lambda: None
        """Set by the scheduler: called when a VM becomes PENDING."""
        self.on_reboot: Callable[[VM], None] = lambda vm: None
        self.on_state_change: Callable[[VM], None] = lambda vm: None
        """Set by the server when events are on: called (under the lock) at each allocate
        and each change of STATE or LCM_STATE, as oned hands its hook manager an event."""
        super().__init__()

    # --- loading -----------------------------------------------------------------------

    def load(self) -> None:
        """Read every object back from the store, or create the first hosts and network."""
        with self.lock:
            self.load_accounts()
            self.load_images()
            self.vms = {vm.vm_id: vm for vm in self.store.load_vms()}
            self.load_resources()
            for host in self.hosts.values():
                host.vm_ids, host.cpu_usage, host.mem_usage_kb = [], 0, 0
            for vm in self.vms.values():
                if vm.state in HOLDS_HOST and vm.history:
                    self._add_capacity(vm)

    # --- lookups -----------------------------------------------------------------------

    def get_vm(self, vm_id: int) -> VM:
        vm = self.vms.get(vm_id)
        if vm is None:
            raise not_found("vm", vm_id)
        return vm

    def spec(self, vm: VM) -> VMSpec:
        """What the driver needs to run ``vm``."""
        nics = tuple(
            Nic(nic_id=int(n.get("NIC_ID", "0")), network=n.get("NETWORK", ""),
                bridge=n.get("BRIDGE", ""), ip=n.get("IP", ""), mac=n.get("MAC", ""),
                netmask=n.get("NETWORK_MASK", ""), gateway=n.get("GATEWAY", ""),
                dns=n.get("DNS", ""))
            for n in vm.template.vectors("NIC"))
        context = vm.template.get("CONTEXT")
        disks = vm.template.vectors("DISK")
        return VMSpec(vm_id=vm.vm_id, name=vm.name, cpu=vm.cpu, memory_mb=vm.memory_mb,
                      nics=nics, context=dict(context) if isinstance(context, dict) else {},
                      token=vm.token, fault=self.fault(vm),
                      image_source=disks[0].get("SOURCE", "") if disks else "")

    @staticmethod
    def hard_action(vm: VM) -> bool:
        """The VM's last action was a ``-hard`` one (a power cut, no signal to the guest)."""
        return _previous_action(vm).endswith("-hard")

    @staticmethod
    def fault(vm: VM) -> Fault:
        text = vm.template.get_str("TESTBED_FAULT") or vm.user_template.get_str("TESTBED_FAULT")
        try:
            return Fault.parse(text)
        except ValueError:
            return Fault()

    # --- allocate ----------------------------------------------------------------------

    def allocate_vm(self, tmpl: Template, *, hold: bool, name: str = "",
                    template_id: int | None = None) -> int:
        """oned's VirtualMachinePool::allocate. Errors are INTERNAL with oned's texts."""
        check_name(name or tmpl.get_str("NAME"), required=False)  # before MEMORY, as oned
        _check_capacity_attrs(tmpl)
        fault_text = tmpl.get_str("TESTBED_FAULT")
        try:
            Fault.parse(fault_text)
        except ValueError as exc:
            raise OneRequestError(INTERNAL, f"TESTBED_FAULT: {exc}") from None
        with self.lock:
            vm_id = self.store.peek_id("vm")
            vm_name = name or tmpl.get_str("NAME") or f"one-{vm_id}"
            known, user = Template(), Template()
            for attr, value in tmpl.attrs:
                if attr == "NAME":
                    continue
                (known if attr in KNOWN_ATTRIBUTES else user).add(attr, value)
            known.replace("VMID", str(vm_id))
            try:
                pci.check_requests(known)
            except pci.PciError as exc:
                raise OneRequestError(INTERNAL, str(exc)) from None
            if template_id is not None:
                known.replace("TEMPLATE_ID", str(template_id))
            vm = VM(vm_id=vm_id, name=vm_name, template=known, user_template=user,
                    **self.owner_fields())
            self.attach_disks(vm)
            leased = self.lease_nics(vm)
            # oned's automatic requirements: the clusters of the VM's networks (all cluster 0)
            if vm.template.vectors("NIC"):
                known.replace("AUTOMATIC_NIC_REQUIREMENTS", '("CLUSTERS/ID" @> 0)')
                known.replace("AUTOMATIC_REQUIREMENTS", "(CLUSTER_ID = 0) & " +
                              AUTOMATIC_REQUIREMENTS)
            else:
                known.replace("AUTOMATIC_REQUIREMENTS", AUTOMATIC_REQUIREMENTS)
            try:
                self._build_context(vm)
            except OneRequestError:
                self.release_leases(vm, leased)
                raise
            on_hold = hold or known.get_str("SUBMIT_ON_HOLD").upper() == "YES"
            vm.state = vm.prev_state = HOLD if on_hold else PENDING
            self.vms[vm_id] = vm
            self.store.take_id("vm", vm_id)
            self.store.put_vm(vm)
            self.on_state_change(vm)
            if not on_hold:
                self.on_pending()
            return vm_id

    def _build_context(self, vm: VM) -> None:
        context = vm.template.get("CONTEXT")
        if not isinstance(context, dict):
            return
        if context.get("TOKEN", "").upper() == "YES":
            vm.token = secrets.token_hex(16)
            vm.template.replace("CREATED_BY", str(vm.uid))
        specials = {"UNAME": vm.uname, "UID": str(vm.uid), "GNAME": vm.gname,
                    "GID": str(vm.gid), "NAME": vm.name, "VMID": str(vm.vm_id)}
        vm.template.replace("CONTEXT", build_context(
            context, templates=[vm.template, vm.user_template], specials=specials,
            nics=vm.template.vectors("NIC"), vm_id=vm.vm_id,
            onegate_endpoint=self.settings.gate_endpoint))

    # --- actions -----------------------------------------------------------------------

    def vm_action(self, action: str, vm_id: int) -> int:
        with self.lock:
            vm = self.get_vm(vm_id)
            try:
                outcome = lifecycle.apply_action(action, vm_id, vm.state, vm.lcm_state)
            except ActionRefused as exc:
                raise OneRequestError(ACTION, str(exc)) from None
            if outcome.resched is not None:
                vm.resched = outcome.resched
            # the LCM records its actions in the history; DM-only moves (resume of a STOPPED
            # or UNDEPLOYED VM to PENDING, hold, release) leave the last record as it was
            if vm.history and outcome.state not in (PENDING, HOLD) and (
                    outcome.state is not None or outcome.reboot):
                vm.history[-1].action = ACTION_NUMBERS.get(action, 0)
            if outcome.state is not None:
                self.transition(vm, outcome.state, outcome.lcm_state)
            else:
                self.store.put_vm(vm)
            if outcome.reboot:
                self.on_reboot(vm)
            return vm_id

    def deploy(self, vm_id: int, host_id: int, *, enforce: bool) -> int:
        with self.lock:
            host = self.get_host(host_id)
            vm = self.get_vm(vm_id)
            previous = _previous_action(vm)
            try:
                lifecycle.deploy_target(vm.state, vm.lcm_state, previous)
            except ActionRefused as exc:
                raise OneRequestError(ACTION, str(exc)) from None
            if enforce and not fits(vm, host):
                raise OneRequestError(ACTION, f"virtual machine [{vm_id}] does not fit in host "
                                      f"[{host_id}]. {capacity_error(vm, host)}")
            self.place(vm, host)
            return vm_id

    def place(self, vm: VM, host: Host) -> None:
        """Start ``vm`` on ``host``: a new history record and PROLOG (scheduler or deploy)."""
        state, lcm = lifecycle.deploy_target(vm.state, vm.lcm_state, _previous_action(vm))
        now = now_s()
        vm.history.append(History(seq=len(vm.history), hid=host.host_id, hostname=host.name,
                                  vm_mad=host.vm_mad, cid=host.cluster_id, stime=now))
        vm.template.replace("TM_MAD_SYSTEM", "ssh")
        vm.user_template.remove("SCHED_MESSAGE")
        self.transition(vm, state, lcm)

    def migrate(self, vm_id: int, host_id: int, *, live: bool, enforce: bool) -> int:
        with self.lock:
            host = self.get_host(host_id)
            vm = self.get_vm(vm_id)
            try:
                state, lcm = lifecycle.migrate_target(vm.state, vm.lcm_state, live)
            except ActionRefused as exc:
                raise OneRequestError(ACTION, str(exc)) from None
            if vm.hid == host_id:
                raise OneRequestError(ACTION, f"VM is already running on host [{host_id}] "
                                      f"and datastore [{vm.history[-1].ds_id}]")
            if enforce and not fits(vm, host):
                raise OneRequestError(ACTION, f"virtual machine [{vm_id}] does not fit in host "
                                      f"[{host_id}]. {capacity_error(vm, host)}")
            now = now_s()
            old = vm.history[-1]
            # oned's LifeCycleManager: a live migration marks the old record live-migrate; a
            # cold one of a RUNNING (or UNKNOWN) VM marks both records migrate; a POWEROFF or
            # SUSPENDED VM's old record keeps its action (poweroff, suspend), the new one is
            # migrate. ``live`` asked of a VM not RUNNING is a cold migration.
            live_run = live and lcm == LCM["MIGRATE"]
            if live_run:
                old.action = ACTION_NUMBERS["live-migrate"]
            elif vm.state == ACTIVE:
                old.action = ACTION_NUMBERS["migrate"]
            old.etime = old.retime = now
            self._del_capacity(vm)
            vm.history.append(History(seq=len(vm.history), hid=host.host_id,
                                      hostname=host.name, vm_mad=host.vm_mad,
                                      cid=host.cluster_id, stime=now,
                                      action=0 if live_run else ACTION_NUMBERS["migrate"]))
            self._add_capacity(vm)
            self.transition(vm, state, lcm)
            return vm_id

    def update_vm(self, vm_id: int, tmpl: Template, append: int) -> int:
        with self.lock:
            vm = self.get_vm(vm_id)
            if append == 1:
                vm.user_template.merge(tmpl)
            else:
                vm.user_template = tmpl.copy()
            self.store.put_vm(vm)
            return vm_id

    # --- state changes (callers hold the lock) -------------------------------------------

    def transition(self, vm: VM, state: int, lcm: int, *, error: str = "") -> None:
        held_before = vm.state in HOLDS_HOST and bool(vm.history)
        old_lcm = vm.lcm_state
        now = now_s()
        if error:
            vm.user_template.replace("ERROR", f"{log_time()} : {error}")
        vm.set_state(state, lcm)
        held_after = state in HOLDS_HOST and bool(vm.history)
        if held_before and not held_after:
            self._del_capacity(vm)
        elif held_after and not held_before:
            self._add_capacity(vm)
        if vm.history:
            h = vm.history[-1]
            if lcm in PROLOG_STATES and state == ACTIVE:
                h.pstime = now
            if old_lcm in PROLOG_STATES and lcm not in PROLOG_STATES:
                h.petime = now
            if lcm in BOOT_STATES and state == ACTIVE:
                h.rstime = h.rstime or now
            if old_lcm == LCM["RUNNING"] and lcm != LCM["RUNNING"]:
                h.retime = now
            if lcm in EPILOG_STATES and state == ACTIVE:
                h.estime = now
            if state in (DONE, STOPPED, UNDEPLOYED):
                h.eetime = h.etime = now
        if state == DONE:
            vm.etime = now
            self.release_leases(vm, None)
        self.store.put_vm(vm)
        if (vm.prev_state, vm.prev_lcm_state) != (state, lcm):
            self.on_state_change(vm)
        if state == ACTIVE and lcm in lifecycle.PHASES:
            self.on_phase(vm)
        if state == PENDING:
            self.on_pending()

    def _add_capacity(self, vm: VM) -> None:
        host = self.hosts.get(vm.hid)
        if host is None or vm.vm_id in host.vm_ids:
            return
        host.vm_ids.append(vm.vm_id)
        host.cpu_usage += int(round(vm.cpu * 100))
        host.mem_usage_kb += vm.memory_mb * 1024
        requests = vm.template.vectors("PCI")
        if requests:
            pci.assign(requests, host.pci, vm.vm_id)
            self._pci_context(vm)
            self.store.put_host(host)

    def _del_capacity(self, vm: VM) -> None:
        host = self.hosts.get(vm.hid)
        if host is None or vm.vm_id not in host.vm_ids:
            return
        host.vm_ids.remove(vm.vm_id)
        host.cpu_usage -= int(round(vm.cpu * 100))
        host.mem_usage_kb -= vm.memory_mb * 1024
        if vm.template.vectors("PCI"):
            pci.release(vm.template.vectors("PCI"), host.pci, vm.vm_id)
            self.store.put_host(host)

    @staticmethod
    def _pci_context(vm: VM) -> None:
        """oned's context generation: ``PCI<PCI_ID>_ADDRESS`` = the device's guest address."""
        context = vm.template.get("CONTEXT")
        if not isinstance(context, dict):
            return
        for request in vm.template.vectors("PCI"):
            if request.get("VM_ADDRESS"):
                context[f"PCI{request.get('PCI_ID', '0')}_ADDRESS"] = request["VM_ADDRESS"]


def _previous_action(vm: VM) -> str:
    if not vm.history:
        return ""
    number = vm.history[-1].action
    return next((name for name, n in ACTION_NUMBERS.items() if n == number), "")
