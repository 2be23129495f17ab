"""OpenNebula's VM templates and virtual networks as vcluster checks them (``vcluster doctor``).

Why it exists: a template whose NIC names a network its user cannot use, or a network with
no free lease, fails every job's first VM with oned's message; reading them ahead lets
``vcluster doctor`` say so before a job does. Pure readers of pyone's parsed objects, as
:mod:`vcluster.one_vm` is for VMs.
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
