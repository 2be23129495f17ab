"""The configuration's objects: settings of each section and the node classes, as frozen
dataclasses that the rest of vcluster reads.

Why a module of its own: :mod:`vcluster.config` reads and validates the TOML file into these;
keeping the shapes apart keeps both readable. Import them from :mod:`vcluster.config`, which
re-exports every public name here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from vcluster import devices
from vcluster.errors import ConfigError
from vcluster.paths import (
    DEFAULT_LOG_DIR,
    DEFAULT_STATE_DIR,
    DEFAULT_STATUS_FILE,
)

DEFAULT_ONE_XMLRPC = "http://localhost:2633/RPC2"
NODE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]*$")

Policy = Literal["per-job", "pool"]


@dataclass(frozen=True)
class OpenNebulaSettings:
    """How to reach oned."""

    xmlrpc: str = DEFAULT_ONE_XMLRPC
    """XML-RPC endpoint URL (``ONE_XMLRPC``)."""
    auth_file: str = "~/.one/one_auth"
    """File holding ``user:password`` (``ONE_AUTH``); must not be readable by others."""
    timeout_s: float = 30.0
    """Timeout of one XML-RPC call, seconds."""
    retry_delays_s: tuple[float, ...] = (1.0, 2.0, 5.0)
    """Backoff before each retry of a temporary error, seconds; empty means no retry."""
    events: str = ""
    """oned's state-change publisher (HM_MAD's ZeroMQ PUB, ``tcp://host:2101``): the controller
    subscribes and runs a pass at once on a change of its VMs; "" (the default): polling only."""
    # No OneGate setting: oned itself puts ONEGATE_ENDPOINT (from oned.conf) into the CONTEXT
    # of every VM with TOKEN=YES, replacing any value vcluster would set, and refuses such a
    # VM when oned.conf has none (VirtualMachine::generate_token_context, oned 6.10 and 7.x).


@dataclass(frozen=True)
class SlurmSettings:
    """How to reach Slurm."""

    conf: str = "/etc/slurm/slurm.conf"
    """slurm.conf path (``SLURM_CONF``)."""
    partitions: tuple[str, ...] = ("vcluster",)
    """Partitions whose nodes vcluster serves; the first is where ``fsub`` submits."""
    bin_dir: str = "/usr/bin"
    """Directory of sbatch, squeue, scontrol...: hooks run with no PATH."""
    command_timeout_s: float = 30.0
    """Timeout of one Slurm command, seconds."""
    controller_host: str = ""
    """slurmctld address VMs use (``host`` or ``host:port``); default: from slurm.conf."""
    configless: bool = True
    """VMs fetch slurm.conf from slurmctld (``enable_configless``)."""
    handover_at_allocation: bool = False
    """Hand a ready standby VM to its node as soon as Slurm allocates the node to a job (the
    PrologSlurmctld request), before Slurm's power-save pass marks it powering up: slurmd may
    then register while the node is still powered down, which Slurm accepts only with
    ``ReturnToService=2`` in slurm.conf (else: "Node unexpectedly rebooted", node DOWN)."""
    munge_key_file: str = "/etc/munge/munge.key"
    """The cluster's munge key, given to VMs through their context."""
    preempt_partition: str = ""
    """A high-priority partition on the node classes' nodes whose jobs preempt the other
    partitions' jobs by suspending them (their VMs stopped, freeing the hosts) when their own
    VMs cannot be placed; "" for none. ``vcluster slurm-conf`` declares it."""


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = "sqlite:////var/lib/vcluster/vcluster.db"
    """SQLAlchemy URL: a SQLite file (default) or ``postgresql+psycopg://...``."""


@dataclass(frozen=True)
class ControllerSettings:
    cluster_name: str = "vcluster"
    """Tags every VM (``VCLUSTER_CLUSTER``): several clusters can share one cloud."""
    interval_s: float = 5.0
    """Period of the drift-catching pass, seconds."""
    heartbeat_stale_s: float = 60.0
    """Hooks refuse when the controller's heartbeat is older than this, seconds."""
    resume_timeout_s: int = 600
    """Slurm's ResumeTimeout: a VM not a working node by then is given up, seconds."""
    suspend_timeout_s: int = 30
    """Slurm's SuspendTimeout, seconds."""
    prolog_wait_s: float = 300.0
    """How long PrologSlurmctld waits for the job's nodes to come up, seconds."""
    state_dir: str = DEFAULT_STATE_DIR
    """Where the controller keeps its wake-up socket and files."""
    log_dir: str = DEFAULT_LOG_DIR
    """Where hooks and the controller write their logs."""
    status_file: str = DEFAULT_STATUS_FILE
    """World-readable JSON with the controller's heartbeat (no secrets), so that ``fsub``,
    run by any user, can say when the controller is down; "" writes none."""
    history_days: int = 90
    """Events, ended launches and ended jobs older than this are pruned, days."""
    metrics_port: int | None = None
    """TCP port of the controller's Prometheus metrics (``/metrics``); None: not served."""
    metrics_address: str = "127.0.0.1"
    """Address the metrics endpoint listens on (``0.0.0.0`` for every interface)."""
    boot_rate_per_s: float = 10.0
    """VM allocations sent to OpenNebula per second, all classes together."""
    boot_burst: int = 20
    """Allocations that may go out at once before ``boot_rate_per_s`` applies."""
    boot_concurrency: int = 4
    """How many of a pass's VM allocations may be in flight to OpenNebula at once (each on
    its own worker thread and client; 1: one after the other), 1 to 32."""
    capacity_backoff_s: tuple[float, ...] = (60.0, 120.0, 300.0, 600.0, 1800.0)
    """How long a class whose template OpenNebula cannot place gets no new VM, seconds: the
    first back-off, then each one after a failed probe (the last one repeats)."""
    placement_wait_s: float = 60.0
    """How long a VM may stay PENDING with oned's SCHED_MESSAGE before its class backs off,
    seconds (at most half of ``resume_timeout_s``)."""
    leader_poll_s: float = 2.0
    """With PostgreSQL several controllers may run (on different hosts): a standby tries to
    take the lead this often, and the leader checks it still leads before each step;
    a leader's process that dies is replaced within about this plus one pass, seconds."""
    leader_lease_s: float = 15.0
    """A leader whose host or network is lost without a word holds the lead at most this
    long (TCP keepalives on its lock's database session), seconds."""
    log_to: str = "auto"
    """Where logs go: ``auto`` (journald, else syslog, else files in ``log_dir``),
    ``journal``, ``syslog`` or ``file`` (see :mod:`vcluster.journal`)."""
    join_address: str = ""
    """``HOST:PORT`` of the join endpoint worker VMs fetch their join script and munge key
    from (it listens there; VMs must reach it). "": slurmctld's host, port 6830."""


VM_EVENTS = ("POWEROFF", "SUSPENDED", "STOPPED", "UNDEPLOYED", "UNKNOWN", "FAILURE", "DONE",
             "HOST_OFFLINE", "HOST_ERROR")
"""States a VM can reach without vcluster asking (FAILURE: any ``*_FAILURE``; DONE: terminated
or deleted; HOST_*: its host set OFFLINE or in ERROR, the VM itself still RUNNING), the keys
of a node class's ``on_vm_event``. A DISABLED host only takes no new VMs: not an event."""
RESUMABLE_VM_EVENTS = ("POWEROFF", "SUSPENDED")
"""Events a class may answer with ``resume`` (OpenNebula's ``resume`` brings the VM back)."""
HOST_VM_EVENTS = ("HOST_OFFLINE", "HOST_ERROR")
"""Events a class may answer with ``keep`` (leave the VM and its job running)."""


@dataclass(frozen=True)
class NodeClass:
    """A named range of Slurm CLOUD nodes booted from one OpenNebula template."""

    name: str
    prefix: str
    count: int
    cpus: int
    memory_mb: int
    template: str
    """OpenNebula VM template: its name, or its numeric id."""
    policy: Policy = "per-job"
    features: tuple[str, ...] = ()
    partition: str = "vcluster"
    suspend_time_s: int = 300
    """Idle seconds before a ``pool`` node is powered down (Slurm's SuspendTime)."""
    first_index: int = 1
    vm_options: Mapping[str, str] = field(default_factory=dict)
    """Extra attributes merged into each VM's template (e.g. ``SCHED_REQUIREMENTS``)."""
    templates: tuple[str, ...] = ()
    """Other templates (names or ids) a job may pick with ``fsub --vm-template``."""
    cost_per_hour: float = 0.0
    """What one VM of this class costs per hour, in the site's currency, for ``vcluster
    usage``; 0 (the default) shows no cost."""
    boot_rate_per_s: float | None = None
    """VM allocations of this class per second; None: only the controller's total limit."""
    boot_burst: int | None = None
    """Allocations of this class that may go out at once (default: ``boot_rate_per_s``,
    at least 1)."""
    fallback_templates: tuple[str, ...] = ()
    """Templates tried in this order when the chosen one is backed off (OpenNebula cannot
    place it)."""
    gres: tuple[devices.Gres, ...] = ()
    """Slurm generic resources of each node (``gres = ["gpu:a100:1"]``): its ``Gres=``."""
    gres_conf: str = ""
    """Words added to each of the class's gres.conf lines (``File=/dev/nvidia0``,
    ``AutoDetect=nvml``), required for a gpu GRES; "" writes count-only lines (other GRES)."""
    pci: tuple[Mapping[str, str], ...] = ()
    """OpenNebula PCI passthrough requests (``VENDOR``/``DEVICE``/``CLASS`` or
    ``SHORT_ADDRESS``), each one ``PCI = [...]`` of the VM's template."""
    on_vm_event: Mapping[str, str] = field(default_factory=dict)
    """What to do when a VM reaches a state vcluster did not ask for (key: one of
    ``VM_EVENTS``; value: ``fail``, for ``RESUMABLE_VM_EVENTS`` ``resume``, for
    ``HOST_VM_EVENTS`` ``keep``). Unlisted
    events fail the node: DOWN with a ``vcluster:`` reason (Slurm requeues its job), VM
    terminated."""
    standby: int = 0
    """Booted, never-used VMs kept in reserve: a resumed node of the class is handed one
    instead of waiting for a boot (:mod:`vcluster.controller.standby`); 0: none."""
    standby_max_age_s: int = 3600
    """A standby VM older than this (seconds since oned started it) is replaced."""

    def vm_event_rule(self, event: str) -> str:
        """The rule for ``event`` (a key of ``VM_EVENTS``): ``fail`` unless set."""
        return self.on_vm_event.get(event, "fail")

    @property
    def allowed_templates(self) -> tuple[str, ...]:
        """``template`` first, then ``templates``, without repeats."""
        return tuple(dict.fromkeys((self.template, *self.templates)))

    @property
    def index_width(self) -> int:
        return max(3, len(str(self.first_index + self.count - 1)))

    def node_names(self) -> list[str]:
        return [
            f"{self.prefix}{i:0{self.index_width}d}"
            for i in range(self.first_index, self.first_index + self.count)
        ]

    @property
    def hostlist(self) -> str:
        """The class's nodes as a Slurm hostlist, e.g. ``vc-small-[001-016]``."""
        last = self.first_index + self.count - 1
        w = self.index_width
        if self.count == 1:
            return f"{self.prefix}{self.first_index:0{w}d}"
        return f"{self.prefix}[{self.first_index:0{w}d}-{last:0{w}d}]"

    def owns(self, node_name: str) -> bool:
        if not node_name.startswith(self.prefix):
            return False
        rest = node_name[len(self.prefix):]
        return rest.isdigit() and self.first_index <= int(rest) < self.first_index + self.count


_CLASS_CACHE_MAX = 1 << 17
"""Node names whose class :meth:`Config.class_of_node` remembers (names Slurm shows)."""


@dataclass(frozen=True)
class Config:
    opennebula: OpenNebulaSettings
    slurm: SlurmSettings
    database: DatabaseSettings
    controller: ControllerSettings
    node_classes: tuple[NodeClass, ...]
    path: str = ""

    def node_class(self, name: str) -> NodeClass:
        for nc in self.node_classes:
            if nc.name == name:
                return nc
        known = ", ".join(nc.name for nc in self.node_classes) or "none"
        raise ConfigError(f"unknown node class {name!r} (known: {known})", key="node_class")

    def class_of_node(self, node_name: str) -> NodeClass | None:
        # asked about every node several times a pass (50,000 calls at 10,000 nodes)
        cache: dict[str, NodeClass | None] = self.__dict__.setdefault("_class_of", {})
        if node_name in cache:
            return cache[node_name]
        if len(cache) > _CLASS_CACHE_MAX:
            cache.clear()
        found = cache[node_name] = self._find_class_of_node(node_name)
        return found

    def _find_class_of_node(self, node_name: str) -> NodeClass | None:
        for nc in self.node_classes:
            if nc.owns(node_name):
                return nc
        return None
