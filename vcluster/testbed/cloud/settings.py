"""Settings of the testbed cloud server, and the error type its operations raise.

Why this exists: the CLI, the tests and the benchmark build the same server with different
knobs (ports, driver, simulated step times, scheduler window); one frozen dataclass tree keeps
them in one place with their units.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# oned's error codes (Request.h)
AUTHENTICATION = 0x100
AUTHORIZATION = 0x200
NO_EXISTS = 0x400
ACTION = 0x800
XML_RPC_API = 0x1000
INTERNAL = 0x2000
ALLOCATE = 0x4000

OBJECT_NAMES = {"vm": "virtual machine", "host": "host", "vnet": "virtual network",
                "template": "virtual machine template"}


class OneRequestError(Exception):
    """A failure answer: ``[False, "[method] message", code, resp_id, 0]``."""

    def __init__(self, code: int, message: str, resp_id: int = -1) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.resp_id = resp_id


def not_found(kind: str, obj_id: int) -> OneRequestError:
    return OneRequestError(NO_EXISTS, f"Error getting {OBJECT_NAMES[kind]} [{obj_id}].", obj_id)


@dataclass(frozen=True)
class Timings:
    """Simulated duration of each life-cycle step, in seconds."""

    prolog_s: float = 0.2
    boot_s: float = 0.5
    shutdown_s: float = 0.3
    epilog_s: float = 0.2
    save_s: float = 0.3
    migrate_s: float = 0.3
    monitor_interval_s: float = 2.0
    """How often RUNNING/UNKNOWN VMs are checked with the driver's ``alive``."""

    def duration_s(self, phase: str) -> float:
        return float(getattr(self, f"{phase}_s"))


@dataclass(frozen=True)
class SchedulerSettings:
    """oned's placement window: place when it holds ``max_wnd_length`` VMs or is
    ``max_wnd_time_s`` old, else every ``timer_s`` (hard-coded 5 s in oned 7.4)."""

    max_wnd_time_s: float = 1.0
    max_wnd_length: int = 7
    timer_s: float = 5.0


@dataclass(frozen=True)
class NetworkSettings:
    """The virtual network created at first start (id 0)."""

    name: str = "vcluster"
    bridge: str = "vcbr0"
    subnet: str = "10.111.0.0/24"
    lease_start: int = 100
    """Host part of the first leased address (10.111.0.100)."""
    gateway: str = ""
    """Default: the subnet's first address (10.111.0.1), the bridge's own IP."""
    dns: str = ""


@dataclass(frozen=True)
class CloudSettings:
    state_dir: Path
    driver: str = "dummy"
    prefix: str = "vc"
    """Name prefix for the driver's kernel objects."""
    auth: str = "oneadmin:opennebula"
    """The one accepted session string, ``user:password``."""
    host: str = "127.0.0.1"
    port: int = 2633
    onegate_host: str = "127.0.0.1"
    onegate_port: int = 5030
    events_port: int | None = None
    """Where state-change events are published (ZeroMQ PUB on ``host``, as oned's HM_MAD
    ``-p``; 0: a free port); None: no events."""
    onegate_endpoint: str = ""
    """What VMs are told (ONEGATE_ENDPOINT); default ``http://<onegate_host>:<port>``."""
    hosts: int = 1
    host_cpu_pct: int = 800
    host_mem_kb: int = 16 * 1024 * 1024
    host_pci: tuple[tuple[str, str], ...] = ()
    """PCI devices hosts report: (host name, ``VENDOR:DEVICE:CLASS``) pairs, in order."""
    network: NetworkSettings = field(default_factory=NetworkSettings)
    timings: Timings = field(default_factory=Timings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    version: str = "7.4.0"
    images: tuple[tuple[str, str], ...] = ()
    """The image datastore: (name, source) pairs, image ids in this order. For the netns
    driver a source that is a directory is the VM's root filesystem (a Debian root with its
    own Slurm, :mod:`vcluster.testbed.slurm_root`); VMs without an image share the host's."""
    guest_shares: tuple[str, ...] = ()
    """Host paths image VMs see at the same place (netns driver); () for its default."""

    @property
    def user(self) -> str:
        return self.auth.split(":", 1)[0]

    @property
    def gate_endpoint(self) -> str:
        return self.onegate_endpoint or f"http://{self.onegate_host}:{self.onegate_port}"
