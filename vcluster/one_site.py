"""OpenNebula's VM templates, virtual networks and hosts as vcluster reads them.

Why it exists: a template whose NIC names a network its user cannot use, or a network with
no free lease, fails every job's first VM with oned's message; reading them ahead lets
``vcluster doctor`` say so before a job does. A host set OFFLINE or in ERROR is an event for
the VMs on it (the controller reads the host pool once a pass). Pure readers of pyone's
parsed objects, as :mod:`vcluster.one_vm` is for VMs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vcluster.one_vm import _flat_strings, _vectors


@dataclass(frozen=True)
class VNetInfo:
    """One virtual network: who owns it and how many of its leases are taken."""

    vnet_id: int
    name: str
    owner: str
    size: int
    """Addresses in all its address ranges."""
    used_leases: int

    @property
    def free_leases(self) -> int:
        return max(self.size - self.used_leases, 0)


def vnet_from_binding(obj: Any) -> VNetInfo:
    ars = getattr(getattr(obj, "AR_POOL", None), "AR", None) or []
    if not isinstance(ars, list):
        ars = [ars]
    return VNetInfo(int(obj.ID), str(obj.NAME or ""), str(obj.UNAME or ""),
                    sum(int(getattr(ar, "SIZE", 0) or 0) for ar in ars),
                    int(obj.USED_LEASES or 0))


def template_nics(obj: Any) -> list[dict[str, str]]:
    """The NIC vectors of a parsed ``<VMTEMPLATE>`` (``NETWORK``, ``NETWORK_UNAME``...)."""
    return [_flat_strings(nic) for nic in _vectors(obj.TEMPLATE, "NIC")]


HOST_STATES = {0: "INIT", 1: "MONITORING_MONITORED", 2: "MONITORED", 3: "ERROR", 4: "DISABLED",
               5: "MONITORING_ERROR", 6: "MONITORING_INIT", 7: "MONITORING_DISABLED",
               8: "OFFLINE"}
"""oned's host STATE (Host.h; 7.4 uses 0, 2, 3, 4 and 8)."""


def host_states_from_binding(pool: Any) -> dict[str, str]:
    """{host NAME: STATE name} of a ``one.hostpool.info`` answer (a VM names its host)."""
    return {str(h.NAME): HOST_STATES.get(int(h.STATE), f"STATE {h.STATE}")
            for h in (pool.HOST or [])}


@dataclass(frozen=True)
class HostCapacity:
    """What a host holds, as ``one.hostpool.info``'s HOST_SHARE says (CPU in percent of a
    core, memory in KB), for admission control (:mod:`vcluster.reserve`)."""

    name: str
    state: str
    max_cpu: int
    max_mem_kb: int
    cpu_usage: int
    mem_usage_kb: int
    host_id: int = -1
    """oned's host ID (what one.vm.migrate and one.host.status take)."""

    @property
    def schedulable(self) -> bool:
        """oned's scheduler places VMs on monitored hosts only (not DISABLED/OFFLINE/ERROR)."""
        return self.state in ("MONITORED", "MONITORING_MONITORED", "INIT")


def host_capacities_from_binding(pool: Any) -> list[HostCapacity]:
    hosts = []
    for h in pool.HOST or []:
        share = h.HOST_SHARE
        hosts.append(HostCapacity(str(h.NAME), HOST_STATES.get(int(h.STATE), f"STATE {h.STATE}"),
                                  int(share.MAX_CPU or 0), int(share.MAX_MEM or 0),
                                  int(share.CPU_USAGE or 0), int(share.MEM_USAGE or 0),
                                  int(h.ID)))
    return hosts
