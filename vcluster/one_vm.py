"""OpenNebula VMs as vcluster sees them: states with their names, and the VM record.

oned reports a VM's STATE and, when ACTIVE, its LCM_STATE as numbers. pyone's own enums
keep values oned removed and lack newer ones (69-71), so vcluster keeps its own, from
oned's ``VirtualMachine.h``, and names a number it does not know instead of failing: a
newer oned must not crash the controller.

:func:`vm_from_binding` turns pyone's parsed ``<VM>`` into a frozen :class:`VM`, smoothing
what pyone leaves rough (an empty element is ``None``; one NIC is a dict, two a list).

:func:`vms_from_pool_xml` reads a whole ``one.vmpool.infoextended`` answer without pyone's
generated bindings, which cost about 150 Python calls per XML element (1.3 s of CPU for
4,000 VMs): lxml streams the text, keeps only what vcluster reads of each VM, and drops each
``<VM>`` element as soon as it is read, so a pass over a big pool neither burns the CPU nor
holds the pool's tree in memory.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from lxml import etree


class VmState(IntEnum):
    INIT = 0
    PENDING = 1
    HOLD = 2
    ACTIVE = 3
    STOPPED = 4
    SUSPENDED = 5
    DONE = 6
    # 7 (FAILED) was removed from oned
    POWEROFF = 8
    UNDEPLOYED = 9
    CLONING = 10
    CLONING_FAILURE = 11


_LCM_NAMES = """LCM_INIT PROLOG BOOT RUNNING MIGRATE SAVE_STOP SAVE_SUSPEND SAVE_MIGRATE
PROLOG_MIGRATE PROLOG_RESUME EPILOG_STOP EPILOG SHUTDOWN - - CLEANUP_RESUBMIT UNKNOWN HOTPLUG
SHUTDOWN_POWEROFF BOOT_UNKNOWN BOOT_POWEROFF BOOT_SUSPENDED BOOT_STOPPED CLEANUP_DELETE
HOTPLUG_SNAPSHOT HOTPLUG_NIC HOTPLUG_SAVEAS HOTPLUG_SAVEAS_POWEROFF HOTPLUG_SAVEAS_SUSPENDED
SHUTDOWN_UNDEPLOY EPILOG_UNDEPLOY PROLOG_UNDEPLOY BOOT_UNDEPLOY HOTPLUG_PROLOG_POWEROFF
HOTPLUG_EPILOG_POWEROFF BOOT_MIGRATE BOOT_FAILURE BOOT_MIGRATE_FAILURE PROLOG_MIGRATE_FAILURE
PROLOG_FAILURE EPILOG_FAILURE EPILOG_STOP_FAILURE EPILOG_UNDEPLOY_FAILURE PROLOG_MIGRATE_POWEROFF
PROLOG_MIGRATE_POWEROFF_FAILURE PROLOG_MIGRATE_SUSPEND PROLOG_MIGRATE_SUSPEND_FAILURE
BOOT_UNDEPLOY_FAILURE BOOT_STOPPED_FAILURE PROLOG_RESUME_FAILURE PROLOG_UNDEPLOY_FAILURE
DISK_SNAPSHOT_POWEROFF DISK_SNAPSHOT_REVERT_POWEROFF DISK_SNAPSHOT_DELETE_POWEROFF
DISK_SNAPSHOT_SUSPENDED DISK_SNAPSHOT_REVERT_SUSPENDED DISK_SNAPSHOT_DELETE_SUSPENDED
DISK_SNAPSHOT DISK_SNAPSHOT_REVERT DISK_SNAPSHOT_DELETE PROLOG_MIGRATE_UNKNOWN
PROLOG_MIGRATE_UNKNOWN_FAILURE DISK_RESIZE DISK_RESIZE_POWEROFF DISK_RESIZE_UNDEPLOYED
HOTPLUG_NIC_POWEROFF HOTPLUG_RESIZE HOTPLUG_SAVEAS_UNDEPLOYED HOTPLUG_SAVEAS_STOPPED BACKUP
BACKUP_POWEROFF RESTORE""".split()

# LCM_STATE numbers 0..71; "-" marks 13 (CANCEL) and 14 (FAILURE), removed from oned.
LcmState = IntEnum(  # type: ignore[misc]
    "LcmState", [(name, i) for i, name in enumerate(_LCM_NAMES) if name != "-"]
)

_FAILED_LCM = frozenset(
    v.value for v in LcmState if v.name.endswith("_FAILURE") or v.name == "UNKNOWN"
)
CONTEXT_KEPT = ("REPORT_READY", "ONEGATE_ENDPOINT", "TOKEN", "NETWORK")
"""The CONTEXT attributes :attr:`VM.context` keeps from a pool listing: the ones vcluster
reads. A worker VM's CONTEXT may hold kilobytes per VM that nothing reads in a pass."""

JOIN_ERROR_TAG = "VCLUSTER_JOIN_ERROR"
"""USER_TEMPLATE attribute where the guest's join script reports, through OneGate, the one
line saying why the VM cannot become its node (contextualization/vcluster-join.sh)."""
JOIN_STAGE_TAG = "VCLUSTER_JOIN_STAGE"
"""USER_TEMPLATE attribute where the guest reports how far its join got (key, munged,
slurmd, joined; standby while a standby VM waits for its node name)."""
GUEST_TEXT_MAX = 300
"""Longest guest-reported text vcluster keeps: the guest is not trusted to be brief."""

_TERMINATING_LCM = frozenset(
    LcmState[n].value for n in ("SHUTDOWN", "EPILOG", "CLEANUP_DELETE")
)


def guest_text(value: str) -> str:
    """What a guest wrote into its own user template, made one printable line of at most
    GUEST_TEXT_MAX characters (any guest may write anything there)."""
    line = " ".join("".join(c if c.isprintable() else " " for c in value).split())
    return line[:GUEST_TEXT_MAX]


def state_name(state: int, lcm_state: int) -> str:
    """The name oned shows (``onevm list``): the LCM state's when ACTIVE, else the state's.

    Numbers vcluster does not know are named ``STATE_<n>`` or ``LCM_STATE_<n>``.
    """
    if state == VmState.ACTIVE:
        try:
            return LcmState(lcm_state).name
        except ValueError:
            return f"LCM_STATE_{lcm_state}"
    try:
        return VmState(state).name
    except ValueError:
        return f"STATE_{state}"


@dataclass(frozen=True)
class VM:
    """One OpenNebula VM. Times are Unix seconds (0: not yet / not ended)."""

    vm_id: int
    name: str
    state: int
    lcm_state: int
    state_name: str
    ips: tuple[str, ...] = ()
    user_template: dict[str, str] = field(default_factory=dict)
    context: dict[str, str] = field(default_factory=dict)
    start_time: int = 0
    end_time: int = 0
    sched_message: str = ""
    host: str = ""
    """The host of its last placement (last HISTORY record's HOSTNAME); "" if never placed."""
    cpu: float = 0.0
    """TEMPLATE/CPU: what it takes of its host (oned counts 100 per CPU)."""
    memory_mb: int = 0
    """TEMPLATE/MEMORY, MB."""
    previous_host: str = ""
    """The host of the placement before the last one ("" if none): a VM resumed or migrated
    elsewhere has its old host here."""

    @property
    def is_running(self) -> bool:
        return self.state == VmState.ACTIVE and self.lcm_state == LcmState["RUNNING"].value

    @property
    def is_ready(self) -> bool:
        """The guest reported READY=YES through OneGate (OneGate merges it into
        USER_TEMPLATE)."""
        return self.user_template.get("READY", "").upper() == "YES"

    @property
    def wants_ready(self) -> bool:
        """Its CONTEXT asks the guest to report READY through OneGate (REPORT_READY=YES, as
        vcluster's worker VMs do): then READY tells a finished contextualization apart."""
        return self.context.get("REPORT_READY", "").upper() == "YES"

    @property
    def awaiting_ready(self) -> bool:
        """RUNNING, asked to report READY, and has not yet: still contextualizing, or its
        contextualization failed or cannot reach OneGate."""
        return self.is_running and self.wants_ready and not self.is_ready

    @property
    def join_error(self) -> str:
        """The one line the guest reported when its join failed ("" while it has not)."""
        return guest_text(self.user_template.get(JOIN_ERROR_TAG, ""))

    @property
    def join_stage(self) -> str:
        """How far the guest's join got, as it reported ("" if it reported nothing)."""
        return guest_text(self.user_template.get(JOIN_STAGE_TAG, ""))[:32]

    @property
    def is_failed(self) -> bool:
        """Stuck in a *_FAILURE state, UNKNOWN (lost by monitoring), or CLONING_FAILURE."""
        if self.state == VmState.CLONING_FAILURE:
            return True
        return self.state == VmState.ACTIVE and self.lcm_state in _FAILED_LCM

    @property
    def is_gone(self) -> bool:
        return self.state == VmState.DONE

    @property
    def is_terminating(self) -> bool:
        """Already on its way to DONE (SHUTDOWN, EPILOG or CLEANUP_DELETE)."""
        return self.state == VmState.ACTIVE and self.lcm_state in _TERMINATING_LCM


def _flat_strings(node: Any) -> dict[str, str]:
    """The single-valued attributes of a pyone template dict (vectors are skipped)."""
    if not isinstance(node, Mapping):
        return {}
    out: dict[str, str] = {}
    for key, value in node.items():
        if value is None:
            out[str(key)] = ""
        elif isinstance(value, str | int | float):
            out[str(key)] = str(value)
    return out


def _vectors(node: Any, name: str) -> list[Mapping[str, Any]]:
    if not isinstance(node, Mapping):
        return []
    value = node.get(name)
    if isinstance(value, Mapping):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, Mapping)]
    return []


def _last_host(obj: Any, back: int = 1) -> str:
    """HOSTNAME of the VM's last history record (``back`` = 2: the one before; ``vm.info``
    and ``infoextended`` list them oldest first); "" if there is none."""
    records = getattr(getattr(obj, "HISTORY_RECORDS", None), "HISTORY", None) or []
    if not isinstance(records, list):
        records = [records]
    return str(getattr(records[-back], "HOSTNAME", "") or "") if len(records) >= back else ""


def vm_from_binding(obj: Any) -> VM:
    """A :class:`VM` from pyone's parsed ``<VM>`` (from vm.info or vmpool.infoextended)."""
    template = obj.TEMPLATE if isinstance(obj.TEMPLATE, Mapping) else {}
    user_template = _flat_strings(obj.USER_TEMPLATE)
    ips = tuple(
        str(nic["IP"])
        for nic in _vectors(template, "NIC") + _vectors(template, "NIC_ALIAS")
        if nic.get("IP")
    )
    context_list = _vectors(template, "CONTEXT")
    state, lcm_state = int(obj.STATE), int(obj.LCM_STATE)
    return VM(
        vm_id=int(obj.ID),
        name=str(obj.NAME or ""),
        state=state,
        lcm_state=lcm_state,
        state_name=state_name(state, lcm_state),
        ips=ips,
        user_template=user_template,
        context=_flat_strings(context_list[0]) if context_list else {},
        start_time=int(obj.STIME or 0),
        end_time=int(obj.ETIME or 0),
        sched_message=user_template.get("SCHED_MESSAGE", ""),
        host=_last_host(obj),
        previous_host=_last_host(obj, 2),
        cpu=_number(template.get("CPU")),
        memory_mb=int(_number(template.get("MEMORY"))),
    )


def _number(text: Any) -> float:
    try:
        return float(str(text or 0))
    except ValueError:
        return 0.0


_CHUNK_CHARS = 1 << 20


def _text(elem: Any) -> str:
    return "" if elem is None or elem.text is None else elem.text


def _flat_children(elem: Any, keep: tuple[str, ...] | None = None) -> dict[str, str]:
    """Single-valued attributes (children without children) of a template element."""
    if elem is None:
        return {}
    return {sys.intern(child.tag): child.text or "" for child in elem
            if len(child) == 0 and isinstance(child.tag, str)
            and (keep is None or child.tag in keep)}


_VM_FIELDS = frozenset({"ID", "NAME", "STATE", "LCM_STATE", "STIME", "ETIME"})


def _vm_from_element(elem: Any) -> VM:
    """A :class:`VM` from a ``<VM>`` element: its children walked once (no XPath), only
    what vcluster reads kept."""
    fields: dict[str, str] = {}
    template = user = records = None
    for child in elem:
        tag = child.tag
        if tag == "TEMPLATE":
            template = child
        elif tag == "USER_TEMPLATE":
            user = child
        elif tag == "HISTORY_RECORDS":
            records = child
        elif tag in _VM_FIELDS:
            fields[tag] = child.text or ""
    user_template = _flat_children(user)
    ips: list[str] = []
    context: dict[str, str] = {}
    cpu = memory = ""
    if template is not None:
        for child in template:
            if child.tag == "CPU":
                cpu = child.text or ""
            elif child.tag == "MEMORY":
                memory = child.text or ""
            elif child.tag in ("NIC", "NIC_ALIAS"):
                ip = _text(child.find("IP"))
                if ip:
                    ips.append(ip)
            elif child.tag == "CONTEXT" and not context:
                for key in CONTEXT_KEPT:  # a few finds: the CONTEXT has dozens of others
                    value = child.find(key)
                    if value is not None and len(value) == 0:
                        context[key] = value.text or ""
    last = records[-1] if records is not None and len(records) else None
    state, lcm_state = int(fields.get("STATE") or 0), int(fields.get("LCM_STATE") or 0)
    return VM(
        vm_id=int(fields.get("ID", "")),
        name=fields.get("NAME", ""),
        state=state,
        lcm_state=lcm_state,
        state_name=state_name(state, lcm_state),
        ips=tuple(ips),
        user_template=user_template,
        context=context,
        start_time=int(fields.get("STIME") or 0),
        end_time=int(fields.get("ETIME") or 0),
        sched_message=user_template.get("SCHED_MESSAGE", ""),
        host=_text(last.find("HOSTNAME")) if last is not None else "",
        previous_host=(_text(records[-2].find("HOSTNAME"))
                       if records is not None and len(records) > 1 else ""),
        cpu=_number(cpu),
        memory_mb=int(_number(memory)),
    )


class PoolReader:
    """A ``<VM_POOL>`` text read piece by piece (:meth:`feed`), each ``<VM>`` turned into a
    :class:`VM` and dropped as soon as it ends; only those tagged
    ``VCLUSTER_CLUSTER=cluster`` are kept if ``cluster`` is given. :meth:`close` gives them in
    the pool's order; ValueError on a text that is not a VM pool or not XML."""

    def __init__(self, cluster: str | None = None) -> None:
        self.cluster = cluster
        # lxml picks the <VM> ends out in C: Python sees one event per VM, not per element
        self._parser = etree.XMLPullParser(events=("end",), tag="VM")
        self._found: list[VM] = []

    def feed(self, text: str) -> None:
        try:
            self._parser.feed(text)
        except etree.XMLSyntaxError as exc:
            raise ValueError(f"not XML: {exc}") from exc
        self._read_events()

    def _read_events(self) -> None:
        cluster = self.cluster
        for _event, elem in self._parser.read_events():
            pool = elem.getparent()
            if pool is None or pool.getparent() is not None:
                continue  # a template attribute that happens to be called VM
            if pool.tag != "VM_POOL":
                raise ValueError(f"expected <VM_POOL>, got <{pool.tag}>")
            if cluster is None or elem.findtext("USER_TEMPLATE/VCLUSTER_CLUSTER") == cluster:
                self._found.append(_vm_from_element(elem))
            pool.remove(elem)  # read: let it go

    def close(self) -> list[VM]:
        try:
            root = self._parser.close()
        except etree.XMLSyntaxError as exc:
            raise ValueError(f"not XML: {exc}") from exc
        self._read_events()
        if root.tag != "VM_POOL":
            raise ValueError(f"expected <VM_POOL>, got <{root.tag}>")
        return self._found


def vms_from_pool_xml(text: str, *, cluster: str | None = None) -> list[VM]:
    """The VMs of a ``<VM_POOL>`` text (``one.vmpool.info``/``infoextended``), in its order;
    only those tagged ``VCLUSTER_CLUSTER=cluster`` if given. Raises ValueError on a text
    that is not a VM pool or not XML."""
    reader = PoolReader(cluster)
    for at in range(0, len(text), _CHUNK_CHARS):
        reader.feed(text[at:at + _CHUNK_CHARS])
    return reader.close()
